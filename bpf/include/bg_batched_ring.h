/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The ring buffer "events" with batched wakeups, for high-rate tracers: a wakeup per record costs a
 * context switch per event, so the consumer is woken only when pending data crosses cfg_wakeup_bytes
 * (set before load; 0: on every record) and otherwise polls with a timeout.
 */
#ifndef BG_BATCHED_RING_H
#define BG_BATCHED_RING_H

const volatile __u32 cfg_wakeup_bytes = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* wake the consumer when this record (of `size` bytes) makes the pending data cross the threshold, not on
 * every record after it (a forced wakeup per record while the consumer catches up costs ~2 us each) */
static __always_inline __u64 wakeup_flag(__u64 size)
{
	__u64 avail;

	if (!cfg_wakeup_bytes)
		return 0;
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA); /* includes this record (+8 byte header) */
	return avail >= cfg_wakeup_bytes && avail < cfg_wakeup_bytes + size + 8 ? BPF_RB_FORCE_WAKEUP
										: BPF_RB_NO_WAKEUP;
}

#endif /* BG_BATCHED_RING_H */
