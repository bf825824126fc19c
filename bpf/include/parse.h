/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The policy engine's packet parser: fills a struct bg_cls_key with the `have` bits of
 * docs/policy-engine.md section 4. A field is set only when its header is wholly in the packet, so a
 * truncated or malformed packet never matches a rule that needs the missing field.
 *
 * Ethernet, up to two VLAN tags (802.1Q / 802.1ad), IPv4 (+ options, fragments), IPv6 (+ a bounded walk
 * of hop-by-hop, routing, fragment and destination options headers), TCP/UDP/SCTP ports, TCP flags,
 * ICMP/ICMPv6 type and code. bpfgate.engine.frames.parse() is the same parser in Python.
 */
#ifndef BG_PARSE_H
#define BG_PARSE_H

#include "engine.h"

#define BG_ETH_P_IP 0x0800
#define BG_ETH_P_IPV6 0x86DD
#define BG_ETH_P_ARP 0x0806
#define BG_ETH_P_8021Q 0x8100
#define BG_ETH_P_8021AD 0x88A8
#define BG_IPV6_EXT_MAX 6 /* extension headers walked before giving up on the protocol */

/* what the parser found besides the key: where L4 starts (for the conntrack ICMP echo id) */
struct bg_parsed {
	void *l4;         /* start of the L4 header (NULL if not reached): conntrack reads ICMP error payloads */
	void *end;        /* end of the packet data */
	__u16 icmp_id;    /* ICMP/ICMPv6 echo identifier, host order (0 if none) */
	__u8 later_frag;  /* non-first fragment */
	__u8 arp;         /* an ARP frame: passed untouched, never classified (an IP filter must not cut ARP) */
};

static __always_inline int bg_is_v6_ext(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 44 || nh == 60;
}

static __always_inline void bg_parse_l4(void *l4, void *end, struct bg_cls_key *k, struct bg_parsed *p)
{
	__u8 proto = k->proto;
	__u8 *b = l4;

	if (p->later_frag)
		return;
	p->l4 = l4;
	if (proto == 6 || proto == 17 || proto == 132) {
		if ((void *)(b + 4) > end)
			return;
		k->sport = ((__u16)b[0] << 8) | b[1];
		k->dport = ((__u16)b[2] << 8) | b[3];
		k->have |= BG_HAVE_PORTS;
		if (proto == 6 && (void *)(b + 14) <= end) {
			k->tcp_flags = b[13];
			k->have |= BG_HAVE_TCPFLAGS;
		}
	} else if (proto == 1 || proto == 58) {
		if ((void *)(b + 2) > end)
			return;
		k->icmp_type = b[0];
		k->icmp_code = b[1];
		k->have |= BG_HAVE_ICMP;
		if ((void *)(b + 6) <= end)
			p->icmp_id = ((__u16)b[4] << 8) | b[5];
	}
}

static __always_inline void bg_parse_v4(void *l3, void *end, struct bg_cls_key *k, struct bg_parsed *p)
{
	struct iphdr *ip = l3;
	__u32 hlen;

	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return;
	hlen = ip->ihl * 4;
	if (l3 + hlen > end)
		return;
	k->family = 4;
	k->proto = ip->protocol;
	__builtin_memcpy(k->src, &ip->saddr, 4);
	__builtin_memcpy(k->dst, &ip->daddr, 4);
	k->have |= BG_HAVE_L3 | BG_HAVE_PROTO;
	p->later_frag = (ip->frag_off & bpf_htons(0x1fff)) != 0;
	bg_parse_l4(l3 + hlen, end, k, p);
}

static __always_inline void bg_parse_v6(void *l3, void *end, struct bg_cls_key *k, struct bg_parsed *p)
{
	struct ipv6hdr *ip6 = l3;
	void *cur;
	__u8 nh;

	if ((void *)(ip6 + 1) > end || ip6->version != 6)
		return;
	k->family = 6;
	__builtin_memcpy(k->src, &ip6->saddr, 16);
	__builtin_memcpy(k->dst, &ip6->daddr, 16);
	k->have |= BG_HAVE_L3;
	nh = ip6->nexthdr;
	cur = ip6 + 1;
	for (int i = 0; i < BG_IPV6_EXT_MAX; i++) {
		__u8 *e = cur;

		if (!bg_is_v6_ext(nh))
			break;
		if ((void *)(e + 8) > end)
			return; /* truncated extension header: protocol unknown */
		if (nh == 44) {
			/* fragment header: offset in the top 13 bits of bytes 2..3 */
			if ((((__u16)e[2] << 8 | e[3]) & 0xfff8) != 0)
				p->later_frag = 1;
			cur = e + 8;
		} else {
			cur = e + ((__u32)e[1] + 1) * 8;
		}
		nh = e[0];
	}
	if (bg_is_v6_ext(nh))
		return; /* the walk did not end within its bound */
	k->proto = nh;
	k->have |= BG_HAVE_PROTO;
	bg_parse_l4(cur, end, k, p);
}

/* Parse [data, end) into k (zeroed by the caller). */
static __always_inline void bg_parse(void *data, void *end, struct bg_cls_key *k, struct bg_parsed *p)
{
	struct ethhdr *eth = data;
	void *cur = eth + 1;
	__u16 type;

	p->end = end;
	if (cur > end)
		return;
	type = bpf_ntohs(eth->h_proto);
	for (int i = 0; i < 2; i++) {
		__u8 *tag = cur;

		if (type != BG_ETH_P_8021Q && type != BG_ETH_P_8021AD)
			break;
		if ((void *)(tag + 4) > end)
			return;
		if (!(k->have & BG_HAVE_VLAN)) {
			k->vlan = (((__u16)tag[0] << 8) | tag[1]) & 0x0fff;
			k->have |= BG_HAVE_VLAN;
		}
		type = ((__u16)tag[2] << 8) | tag[3];
		cur = tag + 4;
	}
	if (type == BG_ETH_P_ARP)
		p->arp = 1;
	else if (type == BG_ETH_P_IP)
		bg_parse_v4(cur, end, k, p);
	else if (type == BG_ETH_P_IPV6)
		bg_parse_v6(cur, end, k, p);
}

#endif /* BG_PARSE_H */
