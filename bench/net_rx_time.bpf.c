// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* For bench_datapath.py, not product code: nanoseconds each CPU spends in the NET_RX softirq, where a
 * veth's receive side runs (the backlog, or its NAPI poll) unless a NAPI thread takes it. Exact where
 * /proc/stat's softirq time is sampled at the tick, which misses a softirq run that wakes an idle CPU. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define NET_RX_SOFTIRQ 3

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} started SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} spent SEC(".maps");

SEC("raw_tp/softirq_entry")
int net_rx_entry(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 k = 0;
	__u64 *t;

	if (ctx->args[0] != NET_RX_SOFTIRQ)
		return 0;
	t = bpf_map_lookup_elem(&started, &k);
	if (t)
		*t = bpf_ktime_get_ns();
	return 0;
}

SEC("raw_tp/softirq_exit")
int net_rx_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 k = 0;
	__u64 *t, *s;

	if (ctx->args[0] != NET_RX_SOFTIRQ)
		return 0;
	t = bpf_map_lookup_elem(&started, &k);
	s = bpf_map_lookup_elem(&spent, &k);
	if (t && s && *t) {   /* 0: attached in the middle of a run */
		*s += bpf_ktime_get_ns() - *t;
		*t = 0;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
