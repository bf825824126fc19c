/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The packet parser of every bpfgate program that reads packets (engine, syn, attempts, flows, capture),
 * at XDP and TC alike. bpfgate.engine.frames.parse() is the same parser in Python (its twin: the kernel
 * differential tests compare them on random and adversarial frames, for every family that uses it).
 *
 * Cursor-based: each layer checks that its header is wholly in [data, data_end), reads it and moves the
 * cursor past it. bg_parse() walks the layers once and fills a struct bg_pkt: which fields it got (`have`),
 * where the L3 and L4 headers start, and the fields the programs read. A field is set only when its
 * header is in the packet, so a truncated or malformed packet never yields a field it does not carry.
 *
 * What it walks, and its limits (named here once; frames.py mirrors them, a unit test reads these enums
 * from the objects' BTF):
 *   - Ethernet, then up to BG_PARSE_VLAN_MAX 802.1ad/802.1Q tags (the outer tag's id is kept); a frame
 *     with more tags is not IP to us. ARP (after the tags) is flagged: the engine passes it unclassified.
 *   - IPv4: version 4, IHL >= 5, the whole header with its options in the packet (options are skipped
 *     through IHL, never read). A non-first fragment (offset != 0) has its protocol but no L4 header.
 *   - IPv6: version 6; up to BG_PARSE_V6_EXT_MAX extension headers of enum bg_v6_ext are walked (any other
 *     next header, ESP included, is the protocol). A truncated extension header, or a chain still going
 *     after the bound: protocol unknown. A fragment header with offset != 0 ends the walk: its next header
 *     is the protocol and there is no L4 header (what follows is payload, as in the kernel's
 *     ipv6_skip_exthdr).
 *   - L4 (not a non-first fragment): TCP/UDP/SCTP ports (4 bytes), TCP flags (byte 13), ICMP/ICMPv6 type
 *     and code (2 bytes) and the echo identifier (bytes 4..5, when there).
 */
#ifndef BG_PARSE_H
#define BG_PARSE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

enum bg_parse_limit {
	BG_PARSE_VLAN_MAX = 2,   /* VLAN tags walked */
	BG_PARSE_V6_EXT_MAX = 6, /* IPv6 extension headers walked before the protocol counts as unknown */
};

/* The IPv6 extension headers the walk steps over, and their lengths. */
enum bg_v6_ext {
	BG_V6_EXT_HOPOPTS = 0,   /* (hdrlen + 1) * 8 bytes */
	BG_V6_EXT_ROUTING = 43,  /* (hdrlen + 1) * 8 */
	BG_V6_EXT_FRAGMENT = 44, /* 8; offset != 0 ends the walk (see above) */
	BG_V6_EXT_AH = 51,       /* (hdrlen + 2) * 4 */
	BG_V6_EXT_DSTOPTS = 60,  /* (hdrlen + 1) * 8 */
};

/* Kept in the BTF of every object that parses packets: Python checks its twin against them. */
const enum bg_parse_limit *__bg_btf_parse_limit __attribute__((unused));
const enum bg_v6_ext *__bg_btf_v6_ext __attribute__((unused));

/* bg_pkt.have: what the parser got. The engine's enum bg_have uses the same bits (it copies them). */
enum bg_pkt_have {
	BG_PKT_L3 = 0x01,       /* family, l3, addresses */
	BG_PKT_PROTO = 0x02,    /* proto */
	BG_PKT_PORTS = 0x04,    /* sport, dport */
	BG_PKT_TCPFLAGS = 0x08, /* tcp_flags */
	BG_PKT_ICMP = 0x10,     /* icmp_type, icmp_code */
	BG_PKT_VLAN = 0x20,     /* vlan */
};

#define BG_ETH_P_IP 0x0800
#define BG_ETH_P_IPV6 0x86DD
#define BG_ETH_P_ARP 0x0806
#define BG_ETH_P_8021Q 0x8100
#define BG_ETH_P_8021AD 0x88A8

#define BG_IPPROTO_ICMP 1
#define BG_IPPROTO_TCP 6
#define BG_IPPROTO_UDP 17
#define BG_IPPROTO_ICMPV6 58
#define BG_IPPROTO_SCTP 132

/* TCP flag bits (byte 13 of the TCP header) */
#define BG_TCP_FIN 0x01
#define BG_TCP_SYN 0x02
#define BG_TCP_RST 0x04
#define BG_TCP_ACK 0x10

struct bg_pkt {
	void *data;      /* the frame's first byte (Ethernet header) */
	void *end;       /* data_end */
	void *l3;        /* IPv4/IPv6 header (BG_PKT_L3), else NULL */
	void *l4;        /* L4 header when the walk reached it (not a non-first fragment), else NULL; only the
	                  * fields `have` names are known to be in the packet */
	__u8 have;       /* enum bg_pkt_have */
	__u8 family;     /* 4 or 6 with BG_PKT_L3, else 0 */
	__u8 proto;      /* IPv4 protocol / IPv6 last next header (BG_PKT_PROTO) */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 later_frag; /* a non-first fragment: no L4 header */
	__u8 arp;        /* an ARP frame */
	__u16 vlan;      /* outer VLAN id, host order */
	__u16 sport;     /* host order */
	__u16 dport;
	__u16 icmp_id;   /* ICMP/ICMPv6 bytes 4..5 (the echo identifier), host order; 0 if not in the packet */
};

struct bg_cursor {
	void *pos;
	void *end;
};

/*
 * The verifier keeps one state per distinct cursor (each VLAN tag count, each extension-header chain):
 * everything after the parser would be verified once per combination (the engine then passes the 1M
 * instruction budget). Re-deriving the cursor from an offset it cannot follow (a pointer difference is an
 * unknown scalar to it) bounded by a limit the packet never reaches makes the cursor state one. Costs a
 * subtraction and a compare.
 */
static __always_inline void *bg_cursor_forget(void *base, void *pos, __u32 max)
{
	__u64 off = pos - base;

	asm volatile("" : "+r"(off)); /* keep clang from folding base + (pos - base) back to pos */
	if (off > max)
		return 0;
	return base + off;
}

static __always_inline int bg_is_v6_ext(__u8 nh)
{
	return nh == BG_V6_EXT_HOPOPTS || nh == BG_V6_EXT_ROUTING || nh == BG_V6_EXT_FRAGMENT ||
	       nh == BG_V6_EXT_AH || nh == BG_V6_EXT_DSTOPTS;
}

/* Ethernet + VLAN tags: returns the ethertype after the tags (host order), or -1 if truncated. */
static __always_inline int bg_parse_eth(struct bg_cursor *c, struct bg_pkt *p)
{
	struct ethhdr *eth = c->pos;
	__u16 type;

	if ((void *)(eth + 1) > c->end)
		return -1;
	type = bpf_ntohs(eth->h_proto);
	c->pos = eth + 1;
	for (int i = 0; i < BG_PARSE_VLAN_MAX; i++) {
		__u8 *tag = c->pos;

		if (type != BG_ETH_P_8021Q && type != BG_ETH_P_8021AD)
			break;
		if ((void *)(tag + 4) > c->end)
			return -1;
		if (!(p->have & BG_PKT_VLAN)) {
			p->vlan = (((__u16)tag[0] << 8) | tag[1]) & 0x0fff;
			p->have |= BG_PKT_VLAN;
		}
		type = ((__u16)tag[2] << 8) | tag[3];
		c->pos = tag + 4;
	}
	return type;
}

/* IPv4: 0 and the cursor at L4, or -1 (not a whole IPv4 header: no L3). */
static __always_inline int bg_parse_ipv4(struct bg_cursor *c, struct bg_pkt *p)
{
	struct iphdr *ip = c->pos;
	__u32 hlen;

	if ((void *)(ip + 1) > c->end || ip->version != 4 || ip->ihl < 5)
		return -1;
	hlen = ip->ihl * 4;
	if (c->pos + hlen > c->end)
		return -1;
	p->l3 = ip;
	p->family = 4;
	p->proto = ip->protocol;
	p->have |= BG_PKT_L3 | BG_PKT_PROTO;
	p->later_frag = (ip->frag_off & bpf_htons(0x1fff)) != 0;
	c->pos += hlen;
	return 0;
}

/* IPv6 and its extension headers: 0 and the cursor at L4 (proto known), 1 (L3 only: protocol unknown),
 * or -1 (no whole IPv6 header). */
static __always_inline int bg_parse_ipv6(struct bg_cursor *c, struct bg_pkt *p)
{
	struct ipv6hdr *ip6 = c->pos;
	__u8 nh;

	if ((void *)(ip6 + 1) > c->end || ip6->version != 6)
		return -1;
	p->l3 = ip6;
	p->family = 6;
	p->have |= BG_PKT_L3;
	nh = ip6->nexthdr;
	c->pos = ip6 + 1;
	for (int i = 0; i < BG_PARSE_V6_EXT_MAX; i++) {
		__u8 *e = c->pos;

		if (!bg_is_v6_ext(nh))
			break;
		if ((void *)(e + 8) > c->end)
			return 1; /* truncated extension header: protocol unknown */
		if (nh == BG_V6_EXT_FRAGMENT) {
			c->pos = e + 8;
			nh = e[0];
			if ((((__u16)e[2] << 8) | e[3]) & 0xfff8) {
				p->later_frag = 1; /* what follows is payload, not headers */
				break;
			}
			continue;
		}
		c->pos = e + (nh == BG_V6_EXT_AH ? ((__u32)e[1] + 2) * 4 : ((__u32)e[1] + 1) * 8);
		nh = e[0];
	}
	if (!p->later_frag && bg_is_v6_ext(nh))
		return 1; /* the walk did not end within its bound */
	c->pos = bg_cursor_forget(ip6, c->pos, 40 + BG_PARSE_V6_EXT_MAX * 2048);
	if (!c->pos)
		return 1;
	p->proto = nh;
	p->have |= BG_PKT_PROTO;
	return 0;
}

/* L4 fields at the cursor (not for a non-first fragment). */
static __always_inline void bg_parse_l4(struct bg_cursor *c, struct bg_pkt *p)
{
	__u8 proto = p->proto, *b = c->pos;

	p->l4 = b;
	if (proto == BG_IPPROTO_TCP || proto == BG_IPPROTO_UDP || proto == BG_IPPROTO_SCTP) {
		if ((void *)(b + 4) > c->end)
			return;
		p->sport = ((__u16)b[0] << 8) | b[1];
		p->dport = ((__u16)b[2] << 8) | b[3];
		p->have |= BG_PKT_PORTS;
		if (proto == BG_IPPROTO_TCP && (void *)(b + 14) <= c->end) {
			p->tcp_flags = b[13];
			p->have |= BG_PKT_TCPFLAGS;
		}
	} else if (proto == BG_IPPROTO_ICMP || proto == BG_IPPROTO_ICMPV6) {
		if ((void *)(b + 2) > c->end)
			return;
		p->icmp_type = b[0];
		p->icmp_code = b[1];
		p->have |= BG_PKT_ICMP;
		if ((void *)(b + 6) <= c->end)
			p->icmp_id = ((__u16)b[4] << 8) | b[5];
	}
}

/* Parse the frame [data, end) into p (zeroed by the caller; have may already hold BG_PKT_VLAN, see
 * bg_parse_skb). */
static __always_inline void bg_parse(void *data, void *end, struct bg_pkt *p)
{
	struct bg_cursor c = {.pos = data, .end = end};
	int type, r;

	p->data = data;
	p->end = end;
	type = bg_parse_eth(&c, p);
	c.pos = bg_cursor_forget(data, c.pos, 14 + 4 * BG_PARSE_VLAN_MAX);
	if (!c.pos)
		return;
	if (type == BG_ETH_P_IP)
		r = bg_parse_ipv4(&c, p);
	else if (type == BG_ETH_P_IPV6)
		r = bg_parse_ipv6(&c, p);
	else {
		p->arp = type == BG_ETH_P_ARP;
		return;
	}
	if (r == 0 && !p->later_frag)
		bg_parse_l4(&c, p);
}

/* From the IP header on (cgroup_skb: the packet starts at its network header, no link layer); type is
 * the ethertype (skb->protocol, host order). */
static __always_inline void bg_parse_ip(void *data, void *end, int type, struct bg_pkt *p)
{
	struct bg_cursor c = {.pos = data, .end = end};
	int r;

	p->data = data;
	p->end = end;
	if (type == BG_ETH_P_IP)
		r = bg_parse_ipv4(&c, p);
	else if (type == BG_ETH_P_IPV6)
		r = bg_parse_ipv6(&c, p);
	else
		return;
	if (r == 0 && !p->later_frag)
		bg_parse_l4(&c, p);
}

static __always_inline void bg_parse_xdp(struct xdp_md *ctx, struct bg_pkt *p)
{
	bg_parse((void *)(long)ctx->data, (void *)(long)ctx->data_end, p);
}

/* TC: the headers are made linear first when they sit in paged data (GRO), and an outer tag the device
 * took off into the skb (VLAN acceleration) counts as the outer tag. */
static __always_inline void bg_parse_skb(struct __sk_buff *skb, struct bg_pkt *p)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;

	if (data + 128 > end && (long)skb->len > end - data) {
		bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	if (skb->vlan_present) {
		p->vlan = skb->vlan_tci & 0x0fff;
		p->have |= BG_PKT_VLAN;
	}
	bg_parse(data, end, p);
}

/* ---- what programs read next to the fields ------------------------------------------------------ */

/* The addresses into src/dst (16 bytes each, IPv4 in bytes 0..3, the rest left as it is; dst may be NULL).
 * 0 if no L3. */
static __always_inline int bg_pkt_addrs(const struct bg_pkt *p, __u8 *src, __u8 *dst)
{
	if (p->family == 4) {
		struct iphdr *ip = p->l3;

		if (!ip || (void *)(ip + 1) > p->end)
			return 0;
		__builtin_memcpy(src, &ip->saddr, 4);
		if (dst)
			__builtin_memcpy(dst, &ip->daddr, 4);
		return 1;
	}
	if (p->family == 6) {
		struct ipv6hdr *ip6 = p->l3;

		if (!ip6 || (void *)(ip6 + 1) > p->end)
			return 0;
		__builtin_memcpy(src, &ip6->saddr, 16);
		if (dst)
			__builtin_memcpy(dst, &ip6->daddr, 16);
		return 1;
	}
	return 0;
}

/* Length of the L4 header when its fixed part is in the packet (TCP: the data offset, at least 20 bytes
 * present; UDP 8; ICMP/ICMPv6 8; other protocols 0), -1 when it is not. */
static __always_inline int bg_pkt_l4_hdr_len(const struct bg_pkt *p)
{
	__u8 *b = p->l4;

	if (!b || !(p->have & BG_PKT_PROTO))
		return -1;
	switch (p->proto) {
	case BG_IPPROTO_TCP:
		if ((void *)(b + 20) > p->end)
			return -1;
		return (b[12] >> 4) * 4;
	case BG_IPPROTO_UDP:
	case BG_IPPROTO_ICMP:
	case BG_IPPROTO_ICMPV6:
		return (void *)(b + 8) > p->end ? -1 : 8;
	default:
		return 0;
	}
}

/* A SYN opening a TCP connection: SYN set, ACK clear, the whole fixed TCP header in the packet. */
static __always_inline int bg_pkt_is_syn(const struct bg_pkt *p)
{
	return p->proto == BG_IPPROTO_TCP && (p->have & BG_PKT_TCPFLAGS) && bg_pkt_l4_hdr_len(p) >= 0 &&
	       (p->tcp_flags & (BG_TCP_SYN | BG_TCP_ACK)) == BG_TCP_SYN;
}

#endif /* BG_PARSE_H */
