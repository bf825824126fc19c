// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Test fixture, not a product data plane (that is bpf/engine.bpf.c): a TC program that drops TCP to the
 * destination ports in the drop_ports hash map. Tests of other layers (netlink/tc listing, capture of
 * dropped packets, drop tracing) use it as "some program that drops", independent of the engine.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "bg_common.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bg_port_key);
	__type(value, struct bg_counter);
} drop_ports SEC(".maps");

static __always_inline int tcp_dport(struct __sk_buff *skb, __u16 *dport)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct tcphdr *tcp;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl < 5)
			return -1;
		if (ip->frag_off & bpf_htons(0x1fff)) /* non-first fragment: no ports */
			return -1;
		tcp = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return -1;
		tcp = (void *)(ip6 + 1);
	} else {
		return -1;
	}
	if ((void *)(tcp + 1) > end)
		return -1;
	*dport = bpf_ntohs(tcp->dest);
	return 0;
}

SEC("tc")
int bg_dropper(struct __sk_buff *skb)
{
	struct bg_port_key key = {};
	struct bg_counter *hit;

	if (tcp_dport(skb, &key.port) < 0)
		return TC_ACT_OK;
	hit = bpf_map_lookup_elem(&drop_ports, &key);
	if (!hit)
		return TC_ACT_OK;
	hit->packets++;
	hit->bytes += skb->len;
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
