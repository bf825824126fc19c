/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Records to user space through the ring buffer "events", or through the perf buffer "perf_events" on
 * kernels without ring buffers (< 5.8: set cfg_perf_events before load; the verifier prunes the unused
 * branch). Every record is counted in bg_stats as submitted or lost, so loss is visible, never silent.
 * Define BG_EVENTS_SIZE before including to size the ring buffer.
 */
#ifndef BG_EMIT_H
#define BG_EMIT_H

#include "bg_stats.h"

#ifndef BG_EVENTS_SIZE
#define BG_EVENTS_SIZE (256 * 1024)
#endif

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, BG_EVENTS_SIZE);
} events SEC(".maps");

const volatile __u8 cfg_perf_events = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_events SEC(".maps");

static __always_inline void emit(void *ctx, void *ev, __u64 size)
{
	long err;

	if (cfg_perf_events)
		err = bpf_perf_event_output(ctx, &perf_events, BPF_F_CURRENT_CPU, ev, size);
	else
		err = bpf_ringbuf_output(&events, ev, size, 0);
	stat_inc(err ? BG_STAT_EVENTS_LOST : BG_STAT_EVENTS);
}

#endif /* BG_EMIT_H */
