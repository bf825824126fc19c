/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * A small bounded parser for inspection programs (flows, capture): Ethernet, up to two VLAN tags,
 * IPv4 (options skipped), IPv6 (up to BG_IPV6_EXT_MAX extension headers), TCP/UDP/ICMP/ICMPv6.
 * Fills a struct bg_flow_key (flow.h) straight from the packet by direct packet access; headers must
 * be in the linear part of the skb (they are for locally generated and received traffic).
 * The policy engine's full parser lives elsewhere; this one only has to find the 5-tuple.
 */
#ifndef BPFGATE_FLOW_PARSE_H
#define BPFGATE_FLOW_PARSE_H

#include "flow.h"

#define BG_ETH_P_IP 0x0800
#define BG_ETH_P_IPV6 0x86DD
#define BG_ETH_P_8021Q 0x8100
#define BG_ETH_P_8021AD 0x88A8
#define BG_IPV6_EXT_MAX 4

struct bg_pkt {
	__u32 l3_off;   /* offset of the IP header from skb->data */
	__u32 hdr_len;  /* IP + L4 header bytes (what each GSO segment repeats) */
	__u32 l3_len;   /* skb->len - l3_off */
	__u8 tcp_flags;
	__u8 fragment;  /* 1: a non-first fragment (no ports) */
	__u16 pad;
};

struct bg_vlan {
	__be16 tci;
	__be16 proto;
};

/* 0: key (addresses, ports, proto, family) and pkt filled; -1: not IP or truncated. */
static __always_inline int bg_parse(struct __sk_buff *skb, struct bg_flow_key *key, struct bg_pkt *pkt)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	void *l4;
	__u16 proto;
	__u8 l4proto;

	if ((void *)(eth + 1) > end)
		return -1;
	proto = eth->h_proto;
	l4 = eth + 1;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct bg_vlan *vh = l4;

		if (proto != bpf_htons(BG_ETH_P_8021Q) && proto != bpf_htons(BG_ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > end)
			return -1;
		proto = vh->proto;
		l4 = vh + 1;
	}
	pkt->l3_off = l4 - data;

	if (proto == bpf_htons(BG_ETH_P_IP)) {
		struct iphdr *ip = l4;
		__u32 ihl;

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		ihl = ip->ihl * 4;
		key->family = 4;
		key->saddr[10] = key->saddr[11] = 0xff;
		key->daddr[10] = key->daddr[11] = 0xff;
		__builtin_memcpy(&key->saddr[12], &ip->saddr, 4);
		__builtin_memcpy(&key->daddr[12], &ip->daddr, 4);
		l4proto = ip->protocol;
		pkt->fragment = (ip->frag_off & bpf_htons(0x1fff)) != 0;
		pkt->hdr_len = ihl;
		l4 = (void *)ip + ihl;
	} else if (proto == bpf_htons(BG_ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l4;

		if ((void *)(ip6 + 1) > end)
			return -1;
		key->family = 6;
		__builtin_memcpy(key->saddr, &ip6->saddr, 16);
		__builtin_memcpy(key->daddr, &ip6->daddr, 16);
		l4proto = ip6->nexthdr;
		l4 = ip6 + 1;
#pragma unroll
		for (int i = 0; i < BG_IPV6_EXT_MAX; i++) {
			struct ipv6_opt_hdr *oh = l4;

			if (l4proto != 0 && l4proto != 43 && l4proto != 60 && l4proto != 44 && l4proto != 51)
				break; /* hop-by-hop, routing, destination options, fragment, AH */
			if ((void *)(oh + 1) > end)
				return -1;
			if (l4proto == 44) {
				struct frag_hdr *fh = l4;

				if ((void *)(fh + 1) > end)
					return -1;
				pkt->fragment = (fh->frag_off & bpf_htons(0xfff8)) != 0;
				l4proto = fh->nexthdr;
				l4 = fh + 1;
			} else {
				l4proto = oh->nexthdr;
				l4 += l4proto == 51 ? (oh->hdrlen + 2) * 4 : (oh->hdrlen + 1) * 8;
			}
		}
		pkt->hdr_len = l4 - (void *)ip6;
	} else {
		return -1;
	}
	key->proto = l4proto;
	pkt->l3_len = skb->len - pkt->l3_off;
	if (pkt->fragment)
		return 0;

	if (l4proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return -1;
		key->sport = bpf_ntohs(th->source);
		key->dport = bpf_ntohs(th->dest);
		pkt->tcp_flags = ((__u8 *)th)[13];
		pkt->hdr_len += th->doff * 4;
	} else if (l4proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return -1;
		key->sport = bpf_ntohs(uh->source);
		key->dport = bpf_ntohs(uh->dest);
		pkt->hdr_len += sizeof(*uh);
	} else if (l4proto == IPPROTO_ICMP || l4proto == 58 /* ICMPv6 */) {
		__u8 *ic = l4;

		if ((void *)(ic + 8) > end)
			return -1;
		key->dport = (ic[0] << 8) | ic[1];
		/* echo request/reply (v4: 8/0, v6: 128/129): the identifier tells pings apart */
		if (ic[0] == 8 || ic[0] == 0 || ic[0] == 128 || ic[0] == 129)
			key->sport = (ic[4] << 8) | ic[5];
		pkt->hdr_len += 8;
	}
	return 0;
}

#endif /* BPFGATE_FLOW_PARSE_H */
