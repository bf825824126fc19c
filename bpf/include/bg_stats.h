/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The per-CPU counters every program that emits events keeps (enum bg_stat in bg_common.h), found by
 * Python under the map name "bg_stats", and stat_inc() on them.
 */
#ifndef BG_STATS_H
#define BG_STATS_H

#include "bg_percpu.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BG_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bg_stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	percpu_inc(&bg_stats, idx);
}

/* Python reads these from BTF (bpfgate.contract): every object that emits records carries them. */
BG_EXPORT_TYPE(enum bg_stat, stat);
BG_EXPORT_TYPE(enum bg_event_type, event_type);

#endif /* BG_STATS_H */
