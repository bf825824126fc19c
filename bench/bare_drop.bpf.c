// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* Baselines of bench_datapath.py, not product code: drop every packet and count it, at XDP and at TC.
 * What a filter at the same hook cannot beat. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

static __always_inline void count(void)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&drops, &k);

	if (v)
		(*v)++;
}

SEC("xdp")
int bench_xdp_drop(struct xdp_md *ctx)
{
	count();
	return XDP_DROP;
}

SEC("tc")
int bench_tc_drop(struct __sk_buff *skb)
{
	count();
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
