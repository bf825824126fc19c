/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/* The increment every program uses on its per-CPU counter arrays (include after bpf_helpers.h). */
#ifndef BG_PERCPU_H
#define BG_PERCPU_H

/* a per-CPU array slot += 1 (no atomics needed: the slot is this CPU's) */
static __always_inline void percpu_inc(void *map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);

	if (v)
		(*v)++;
}

#endif /* BG_PERCPU_H */
