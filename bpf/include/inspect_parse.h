/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Small, bounded packet parser for the inspection programs (syn, attempts): Ethernet with up to two
 * VLAN tags, IPv4 (options skipped through IHL), IPv6 with up to IP_MAX_EXT extension headers, and the
 * TCP/UDP ports and TCP flags. Works on XDP and TC direct packet access (data/data_end).
 * The policy engine's full parser (parse.h) will replace it; until then this one stays minimal.
 */
#ifndef INSPECT_PARSE_H
#define INSPECT_PARSE_H

#define IP_ETH_P_IP 0x0800
#define IP_ETH_P_IPV6 0x86DD
#define IP_ETH_P_8021Q 0x8100
#define IP_ETH_P_8021AD 0x88A8
#define IP_PROTO_TCP 6
#define IP_PROTO_UDP 17
#define IP_MAX_EXT 4

/* TCP flag bits (byte 13 of the TCP header) */
#define IP_TCP_FIN 0x01
#define IP_TCP_SYN 0x02
#define IP_TCP_RST 0x04
#define IP_TCP_ACK 0x10

struct ip_pkt {
	__u8 family;    /* 4 or 6 */
	__u8 l4proto;   /* IPPROTO_*, after IPv6 extension headers */
	__u8 tcp_flags; /* TCP only */
	__u8 has_l4;    /* ports/flags valid (0 for non-first fragments, truncated headers) */
	__u16 sport;    /* host byte order */
	__u16 dport;
	__u8 saddr[16]; /* IPv4: first 4 bytes, rest zero */
	__u8 daddr[16];
};

struct ip_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* IPv6 extension headers we walk (the others end the walk: no L4 ports then) */
static __always_inline int ip_is_ext(__u8 nh)
{
	return nh == 0 /* hop-by-hop */ || nh == 43 /* routing */ || nh == 60 /* dest opts */ ||
	       nh == 44 /* fragment */ || nh == 51 /* AH */;
}

static __always_inline void ip_l4(void *l4, void *data_end, struct ip_pkt *p)
{
	if (p->l4proto == IP_PROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return;
		p->sport = bpf_ntohs(th->source);
		p->dport = bpf_ntohs(th->dest);
		p->tcp_flags = ((__u8 *)th)[13];
		p->has_l4 = 1;
	} else if (p->l4proto == IP_PROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return;
		p->sport = bpf_ntohs(uh->source);
		p->dport = bpf_ntohs(uh->dest);
		p->has_l4 = 1;
	}
}

/* Fill *p (zeroed by the caller) from the frame; returns 0 for IPv4/IPv6, -1 otherwise. */
static __always_inline int ip_parse(void *data, void *data_end, struct ip_pkt *p)
{
	struct ethhdr *eth = data;
	void *cur = eth + 1;
	__u16 proto;

	if (cur > data_end)
		return -1;
	proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		struct ip_vlan_hdr *vh = cur;

		if (proto != bpf_htons(IP_ETH_P_8021Q) && proto != bpf_htons(IP_ETH_P_8021AD))
			break;
		if ((void *)(vh + 1) > data_end)
			return -1;
		proto = vh->proto;
		cur = vh + 1;
	}

	if (proto == bpf_htons(IP_ETH_P_IP)) {
		struct iphdr *iph = cur;
		__u32 ihl;

		if ((void *)(iph + 1) > data_end)
			return -1;
		ihl = iph->ihl * 4;
		if (ihl < sizeof(*iph))
			return -1;
		p->family = 4;
		p->l4proto = iph->protocol;
		__builtin_memcpy(p->saddr, &iph->saddr, 4);
		__builtin_memcpy(p->daddr, &iph->daddr, 4);
		if (iph->frag_off & bpf_htons(0x1FFF)) /* not the first fragment: no L4 header */
			return 0;
		ip_l4(cur + ihl, data_end, p);
		return 0;
	}
	if (proto == bpf_htons(IP_ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = cur;
		__u8 nh;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		p->family = 6;
		__builtin_memcpy(p->saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr, &ip6->daddr, 16);
		nh = ip6->nexthdr;
		cur = ip6 + 1;
#pragma unroll
		for (int i = 0; i < IP_MAX_EXT; i++) {
			__u8 *ext = cur;
			__u32 len;

			if (!ip_is_ext(nh))
				break;
			if ((void *)(ext + 8) > data_end)
				return 0;
			if (nh == 44) { /* fragment: fixed 8 bytes; a non-first fragment has no L4 header */
				if ((((__u16)ext[2] << 8) | ext[3]) & 0xFFF8)
					return 0;
				len = 8;
			} else if (nh == 51) {
				len = ((__u32)ext[1] + 2) * 4;
			} else {
				len = ((__u32)ext[1] + 1) * 8;
			}
			nh = ext[0];
			cur = (void *)ext + len;
		}
		p->l4proto = nh;
		if (ip_is_ext(nh)) /* more extension headers than we walk */
			return 0;
		ip_l4(cur, data_end, p);
		return 0;
	}
	return -1;
}

/* A SYN opening a connection: SYN set, ACK clear (SYN-ACKs are answers, not attempts). */
static __always_inline int ip_is_syn(const struct ip_pkt *p)
{
	return p->l4proto == IP_PROTO_TCP && p->has_l4 &&
	       (p->tcp_flags & (IP_TCP_SYN | IP_TCP_ACK)) == IP_TCP_SYN;
}

#endif /* INSPECT_PARSE_H */
