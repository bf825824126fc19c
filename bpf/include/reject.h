/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The policy engine's reject action at TC (engine.bpf.c), as nft's `reject` and iptables' REJECT: the packet
 * is turned into its answer in place and sent back where it came from, so the sender learns at once:
 *   - TCP: a RST (RFC 9293: seq = the segment's ack if it had one, else ack = its seq + length, RST|ACK);
 *   - anything else: ICMP destination unreachable (port unreachable, code 3, or administratively prohibited,
 *     code 13) / ICMPv6 destination unreachable (port unreachable, code 4, or administratively prohibited,
 *     code 1), quoting the packet's IP header (with its options / extension headers) and 8 bytes after it:
 *     what the sender's stack needs to find the socket (RFC 792, RFC 4443).
 * Never answered (RFC 1122 / 4443): a RST, an ICMP error, a packet to or from a multicast, broadcast or
 * unspecified address, a non-first fragment of TCP. Those are dropped, as are packets over the rule's reply
 * rate (bg_reject_rate): a reject never turns into a packet source faster than reject_rate.
 *
 * The reply is built in a per-CPU scratch buffer from bytes read with bpf_skb_load_bytes, its checksums
 * computed in full (pseudo headers included), then the skb is cut or grown to the reply's length and
 * overwritten. At tc-ingress it goes back out of the interface; at tc-egress into the interface's ingress,
 * to the local sender. MAC addresses are swapped; VLAN tags in the frame are kept.
 */
#ifndef BG_REJECT_H
#define BG_REJECT_H

#include "engine.h"
#include "parse.h"
#include "bg_bounds.h"

/* included by engine.bpf.c after its maps (bg_rules, bg_reject_rate) and token bucket code */

enum bg_reject_limits {
	BG_REJECT_L2_MAX = 14 + 4 * BG_PARSE_VLAN_MAX, /* Ethernet header and tags before L3 */
	BG_REJECT_QUOTE_MAX = 128,                       /* bytes of the rejected packet an ICMP error quotes */
	BG_REJECT_OUT_MAX = 40 + 8 + BG_REJECT_QUOTE_MAX, /* IPv6 header + ICMPv6 header + quote */
};

struct bg_reject_scratch {
	__u32 l3_off, l4_off, iphl, hlen, out_len, pseudo_len, csum_off; /* the reply's state (not on the stack) */
	__u8 family, proto, with, pad;
	/* in, pseudo and out start 8-byte aligned (asserted below): their IPv6 addresses are copied as 64-bit
	 * words (bg_copy_addr6), bytewise they cost the reply's stack frame a dozen spills */
	__u8 in[40];                     /* the rejected packet's IP header (fixed part) */
	__u8 pseudo[40];                 /* the reply's pseudo header (TCP, ICMPv6 checksums) */
	__u8 out[BG_REJECT_OUT_MAX + 4]; /* the reply from L3 on (+4: the quote padded to 4 for the checksum) */
	__u8 tcp[20];                    /* its TCP header */
	__u8 mac[12];
	struct bg_bucket fresh;          /* zero: a new reply bucket */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bg_reject_scratch);
} bg_reject_scratch SEC(".maps");

_Static_assert(__builtin_offsetof(struct bg_reject_scratch, in) % 8 == 0, "in: 64-bit aligned");
_Static_assert(__builtin_offsetof(struct bg_reject_scratch, pseudo) % 8 == 0, "pseudo: 64-bit aligned");
_Static_assert(__builtin_offsetof(struct bg_reject_scratch, out) % 8 == 0, "out: 64-bit aligned");

#define BG_ICMP_DEST_UNREACH 3
#define BG_ICMP_PORT_UNREACH 3
#define BG_ICMP_PKT_FILTERED 13
#define BG_ICMPV6_DEST_UNREACH 1
#define BG_ICMPV6_ADM_PROHIBITED 1
#define BG_ICMPV6_PORT_UNREACH 4
#define BG_TCP_RST_ACK (BG_TCP_RST | BG_TCP_ACK)

/* A checksum as bpf_csum_diff sums it (16-bit words in memory order), folded; stored with bg_put_csum. */
static __always_inline __u16 bg_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* x & mask, the mask kept (clang drops one it can prove has no effect): a bound restated where it is used,
 * for Linux 6.1, whose verifier loses a scalar's bounds when clang spills it in between */
static __always_inline __u64 bg_bound(__u64 x, __u64 mask)
{
	asm volatile("" : "+r"(x));
	return x & mask;
}

/* min(x, max), for the same reason */
static __always_inline __u64 bg_clamp(__u64 x, __u64 max)
{
	asm volatile("" : "+r"(x));
	return x > max ? max : x;
}

static __always_inline void bg_put_csum(__u8 *b, __u16 folded)
{
	__builtin_memcpy(b, &folded, 2); /* memory order, as it was summed */
}

static __always_inline __u32 bg_rd32(const __u8 *b)
{
	return ((__u32)b[0] << 24) | ((__u32)b[1] << 16) | ((__u32)b[2] << 8) | b[3];
}

static __always_inline void bg_wr32(__u8 *b, __u32 v)
{
	b[0] = v >> 24;
	b[1] = v >> 16;
	b[2] = v >> 8;
	b[3] = v;
}

static __always_inline void bg_wr16(__u8 *b, __u16 v)
{
	b[0] = v >> 8;
	b[1] = v;
}

/* an IPv6 address (16 bytes at 8-byte aligned offsets of the scratch buffer) as two 64-bit words */
static __always_inline void bg_copy_addr6(__u8 *dst, const __u8 *src)
{
	__u64 *d = __builtin_assume_aligned(dst, 8);
	const __u64 *s = __builtin_assume_aligned(src, 8);

	d[0] = s[0];
	d[1] = s[1];
}

/* an address nobody can be answered at: multicast, broadcast, unspecified */
static __always_inline int bg_v4_unanswerable(const __u8 *a)
{
	return a[0] >= 224 || (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline int bg_v6_unanswerable(const __u8 *a)
{
	__u8 any = 0;

	if (a[0] == 0xff)
		return 1;
	for (int i = 0; i < 16; i++)
		any |= a[i];
	return !any;
}

/* The reply's IP header in s->out (addresses swapped from s->in), l4len bytes after it, and the pseudo header
 * its L4 checksum starts from (s->pseudo, s->pseudo_len; none for ICMPv4). */
static __always_inline void bg_reject_ip(struct bg_reject_scratch *s, __u8 proto, __u32 l4len)
{
	__u8 *o = s->out;

	if (s->family == 4) {
		o[0] = 0x45;
		o[1] = 0xc0; /* precedence internetwork control, as the kernel's own ICMP and RST */
		bg_wr16(o + 2, 20 + l4len);
		o[6] = 0x40; /* DF */
		o[8] = 64;
		o[9] = proto;
		__builtin_memcpy(o + 12, s->in + 16, 4);
		__builtin_memcpy(o + 16, s->in + 12, 4);
		__builtin_memcpy(s->pseudo, o + 12, 8);
		s->pseudo[8] = 0;
		s->pseudo[9] = proto;
		bg_wr16(s->pseudo + 10, l4len);
		s->pseudo_len = proto == BG_IPPROTO_ICMP ? 0 : 12;
	} else {
		o[0] = 0x60;
		bg_wr16(o + 4, l4len);
		o[6] = proto;
		o[7] = 64;
		bg_copy_addr6(o + 8, s->in + 24);
		bg_copy_addr6(o + 24, s->in + 8);
		bg_copy_addr6(s->pseudo, s->in + 24);
		bg_copy_addr6(s->pseudo + 16, s->in + 8);
		bg_wr32(s->pseudo + 32, l4len);
		bg_wr32(s->pseudo + 36, proto);
		s->pseudo_len = 40;
	}
}

static __always_inline struct bg_reject_scratch *bg_reject_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&bg_reject_scratch, &zero);
}

/* A reply within the rule's reject_rate (bucket depth: one second of it). The LRU hash allows no spin lock:
 * approximate under concurrent CPUs, as per-source rate limits are. No bucket (table full): no reply. */
static __always_inline int bg_reply_allowed(__u32 rule_id, const struct bg_rule *r)
{
	struct bg_bucket *b = bpf_map_lookup_elem(&bg_reject_rate, &rule_id);

	if (!b) {
		struct bg_reject_scratch *s = bg_reject_state();

		if (!s)
			return 0;
		__builtin_memset(&s->fresh, 0, sizeof(s->fresh));
		bpf_map_update_elem(&bg_reject_rate, &rule_id, &s->fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&bg_reject_rate, &rule_id);
		if (!b)
			return 0;
	}
	return bucket_refill_take(b, r->reject_rate, r->reject_rate, NSEC, bpf_ktime_get_ns());
}

/* What bg_reject_begin found: the reply is a RST, or an ICMP/ICMPv6 destination unreachable */
enum bg_reject_reply { BG_REJECT_RST = 0, BG_REJECT_UNREACH = 1 };

/*
 * Where the reply starts, read from the frame as offsets (the engine passes no packet pointer: one still
 * live after its classifier would keep the parser's states apart through all of it): the IP header after
 * Ethernet and in-frame VLAN tags; the L4 header after IPv4 options or IPv6 extension headers (l4_off 0:
 * a non-first fragment). The walk is the parser's (parse.h), with its bounds. 0, or -1: nothing to answer.
 */
static __always_inline int bg_reject_locate(struct __sk_buff *skb, struct bg_reject_scratch *s)
{
	__u32 off = 12, l3;
	__u8 b[4], nh;
	__u16 type;

	if (bpf_skb_load_bytes(skb, off, b, 2) < 0)
		return -1;
	type = (__u16)b[0] << 8 | b[1];
	for (int i = 0; i < BG_PARSE_VLAN_MAX && (type == 0x8100 || type == 0x88a8); i++) {
		off += 4;
		if (bpf_skb_load_bytes(skb, off, b, 2) < 0)
			return -1;
		type = (__u16)b[0] << 8 | b[1];
	}
	l3 = off + 2;
	s->l3_off = l3;
	if (type == 0x0800) {
		if (bpf_skb_load_bytes(skb, l3, s->in, 20) < 0 || (s->in[0] >> 4) != 4 || (s->in[0] & 0x0f) < 5)
			return -1;
		s->family = 4;
		s->proto = s->in[9];
		s->iphl = (s->in[0] & 0x0f) * 4;
		s->hlen = 20;
		s->l4_off = (((__u32)s->in[6] & 0x1f) << 8 | s->in[7]) ? 0 : l3 + s->iphl;
		return 0;
	}
	if (type != 0x86dd || bpf_skb_load_bytes(skb, l3, s->in, 40) < 0 || (s->in[0] >> 4) != 6)
		return -1;
	s->family = 6;
	s->hlen = 40;
	nh = s->in[6];
	off = l3 + 40;
	for (int i = 0; i < BG_PARSE_V6_EXT_MAX && bg_is_v6_ext(nh); i++) {
		if (bpf_skb_load_bytes(skb, off, b, 4) < 0)
			return -1;
		if (nh == BG_V6_EXT_FRAGMENT) {
			nh = b[0];
			off += 8;
			if (((__u16)b[2] << 8 | b[3]) & 0xfff8) {
				s->proto = nh;
				s->l4_off = 0; /* what follows is payload */
				s->iphl = off - l3;
				return 0;
			}
			continue;
		}
		off += nh == BG_V6_EXT_AH ? ((__u32)b[1] + 2) * 4 : ((__u32)b[1] + 1) * 8;
		nh = b[0];
	}
	if (bg_is_v6_ext(nh))
		return -1;
	s->proto = nh;
	s->l4_off = off;
	s->iphl = off - l3;
	return 0;
}

/*
 * The reply is built in stages, each a global function the engine calls in turn (verified once on its own,
 * not once per state of the engine, and each with a small frame: the engine's own leaves little room);
 * their state lives in the per-CPU scratch buffer. bg_reject_begin finds the packet's headers and takes a
 * token of the rule's reply rate: enum bg_reject_reply, or -1: the packet gets no answer (dropped). The
 * other stages return 0 to go on.
 */
static __always_inline int bg_reject_begin(struct __sk_buff *skb, __u32 rule_id)
{
	struct bg_reject_scratch *s = bg_reject_state();
	struct bg_rule *r = bpf_map_lookup_elem(&bg_rules, &rule_id);
	__u32 l3_off, l4_off;

	if (!s || !r || !skb || bg_reject_locate(skb, s) < 0)
		return -1;
	l3_off = s->l3_off;
	l4_off = s->l4_off;
	if (l3_off > BG_REJECT_L2_MAX || l3_off < 14)
		return -1;
	if (l4_off && (l4_off <= l3_off || l4_off > l3_off + BG_REJECT_QUOTE_MAX - 8))
		return -1;
	if (s->family == 4 ? bg_v4_unanswerable(s->in + 12) || bg_v4_unanswerable(s->in + 16) || s->in[19] == 255
			   : bg_v6_unanswerable(s->in + 8) || bg_v6_unanswerable(s->in + 24))
		return -1;
	if (!bg_reply_allowed(rule_id, r))
		return -1;
	s->with = r->reject_with;
	if (bpf_skb_load_bytes(skb, 0, s->mac, 12) < 0)
		return -1;
	__builtin_memset(s->out, 0, sizeof(s->out)); /* ICMP: the quote's padding to 4 bytes sums as zeros */
	return s->proto == BG_IPPROTO_TCP ? BG_REJECT_RST : BG_REJECT_UNREACH;
}

/* TCP: the RST */
static __always_inline int bg_reject_rst(struct __sk_buff *skb)
{
	struct bg_reject_scratch *s = bg_reject_state();
	__u32 in_len, hdrs, data_len;
	__u8 *t;

	if (!s || !s->l4_off || bpf_skb_load_bytes(skb, s->l4_off, s->tcp, 20) < 0 || (s->tcp[13] & BG_TCP_RST))
		return -1;
	t = s->hlen == 40 ? s->out + 40 : s->out + 20;
	in_len = s->family == 4 ? ((__u32)s->in[2] << 8 | s->in[3]) : ((__u32)s->in[4] << 8 | s->in[5]) + 40;
	hdrs = s->l4_off - s->l3_off + (s->tcp[12] >> 4) * 4;
	data_len = in_len > hdrs ? in_len - hdrs : 0;
	__builtin_memcpy(t, s->tcp + 2, 2); /* ports swapped */
	__builtin_memcpy(t + 2, s->tcp, 2);
	if (s->tcp[13] & BG_TCP_ACK) {
		__builtin_memcpy(t + 4, s->tcp + 8, 4); /* seq = its ack */
		t[13] = BG_TCP_RST;
	} else {
		bg_wr32(t + 8, bg_rd32(s->tcp + 4) + data_len + !!(s->tcp[13] & BG_TCP_SYN) + !!(s->tcp[13] & BG_TCP_FIN));
		t[13] = BG_TCP_RST_ACK;
	}
	t[12] = 5 << 4;
	bg_reject_ip(s, BG_IPPROTO_TCP, 20);
	s->out_len = s->hlen + 20;
	s->csum_off = s->hlen + 16;
	return 0;
}

/* anything else: the ICMP/ICMPv6 destination unreachable quoting the packet */
static __always_inline int bg_reject_unreach(struct __sk_buff *skb)
{
	struct bg_reject_scratch *s = bg_reject_state();
	__u64 q;

	if (!s)
		return -1;
	/* never an error about an error */
	if (s->proto == (s->family == 4 ? BG_IPPROTO_ICMP : BG_IPPROTO_ICMPV6) && s->l4_off) {
		if (bpf_skb_load_bytes(skb, s->l4_off, s->tcp, 1) < 0)
			return -1;
		if (s->family == 6 ? s->tcp[0] < 128 : (s->tcp[0] == 3 || s->tcp[0] == 4 || s->tcp[0] == 5 ||
							 s->tcp[0] == 11 || s->tcp[0] == 12))
			return -1;
	}
	q = s->iphl + 8;
	if (q > skb->len - s->l3_off)
		q = skb->len - s->l3_off;
	asm volatile("" : "+r"(q));
	if (q < 20 || q > BG_REJECT_QUOTE_MAX)
		return -1;
	q = bg_len_nonzero(q);
	if (bpf_skb_load_bytes(skb, s->l3_off, s->hlen == 40 ? s->out + 48 : s->out + 28, q) < 0)
		return -1;
	if (s->family == 4) {
		s->out[20] = BG_ICMP_DEST_UNREACH;
		s->out[21] = s->with == BG_REJECT_ADMIN_PROHIBITED ? BG_ICMP_PKT_FILTERED : BG_ICMP_PORT_UNREACH;
		bg_reject_ip(s, BG_IPPROTO_ICMP, 8 + q);
	} else {
		s->out[40] = BG_ICMPV6_DEST_UNREACH;
		s->out[41] = s->with == BG_REJECT_ADMIN_PROHIBITED ? BG_ICMPV6_ADM_PROHIBITED : BG_ICMPV6_PORT_UNREACH;
		bg_reject_ip(s, BG_IPPROTO_ICMPV6, 8 + q);
	}
	s->out_len = s->hlen + 8 + q;
	s->csum_off = s->hlen + 2;
	return 0;
}

/* checksums (IPv4 header; L4 from its pseudo header), then the skb becomes the reply and goes back: out of
 * the interface at tc-ingress, up to the local sender at tc-egress. Returns the TC verdict, or -1: dropped. */
static __always_inline int bg_reject_send(struct __sk_buff *skb)
{
	struct bg_reject_scratch *s = bg_reject_state();
	__u64 len, l4len, plen, csum;
	__u32 hlen, coff;

	if (!s)
		return -1;
	len = s->out_len;
	hlen = s->hlen == 40 ? 40 : 20;
	plen = s->pseudo_len;
	coff = s->csum_off;
	asm volatile("" : "+r"(len));
	asm volatile("" : "+r"(plen));
	if (len < hlen + 8 || len > BG_REJECT_OUT_MAX || plen > 40 || (plen & 3) || coff > 60 || coff + 2 > len)
		return -1;
	l4len = (len - hlen + 3) & ~3ULL; /* padded with the zeros after the reply */
	asm volatile("" : "+r"(l4len));
	if (l4len < 8 || l4len > BG_REJECT_OUT_MAX - 20)
		return -1;
	if (hlen == 20)
		bg_put_csum(s->out + 10, bg_csum_fold(bpf_csum_diff(0, 0, (__be32 *)s->out, 20, 0)));
	csum = plen ? bpf_csum_diff(0, 0, (__be32 *)s->pseudo, bg_bound(plen, 0x3c), 0) : 0;
	if (hlen == 20)
		csum = bpf_csum_diff(0, 0, (__be32 *)(s->out + 20), bg_clamp(l4len, BG_REJECT_OUT_MAX - 20) & ~3ULL, csum);
	else
		csum = bpf_csum_diff(0, 0, (__be32 *)(s->out + 40), bg_clamp(l4len, BG_REJECT_OUT_MAX - 40) & ~3ULL, csum);
	if (coff < 60)
		bg_put_csum(s->out + bg_bound(coff, 63), bg_csum_fold(csum));
	if (s->l3_off > BG_REJECT_L2_MAX)
		return -1;
	if (bpf_skb_change_tail(skb, s->l3_off + len, 0) < 0)
		return -1;
	len = bg_len_nonzero(len);
	if (bpf_skb_store_bytes(skb, s->l3_off, s->out, len, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	/* MACs swapped: the reply goes to whoever sent the packet */
	__builtin_memcpy(s->out, s->mac + 6, 6);
	__builtin_memcpy(s->out + 6, s->mac, 6);
	if (bpf_skb_store_bytes(skb, 0, s->out, 12, BPF_F_RECOMPUTE_CSUM) < 0)
		return -1;
	return bpf_redirect(skb->ifindex, cfg_hook == BG_ENGINE_TC_EGRESS ? BPF_F_INGRESS : 0);
}

/* The reject action, the engine's one call for it (a global function: verified once, its frame within what
 * the engine's leaves of the stack). Returns the TC verdict, or -1: no answer, drop. */
__noinline int bg_reject(struct __sk_buff *skb, __u32 rule_id)
{
	int reply = bg_reject_begin(skb, rule_id);

	if (reply < 0 || (reply == BG_REJECT_RST ? bg_reject_rst(skb) : bg_reject_unreach(skb)) != 0)
		return -1;
	return bg_reject_send(skb);
}

#endif /* BG_REJECT_H */
