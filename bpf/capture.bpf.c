// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Packet capture at TC ingress/egress: packets that match the load-time filter (protocol, port, host
 * prefix, each optionally only on the source or destination side) are copied, up to the snaplen, into
 * the capture ring buffer as struct bg_capture_event + bytes. Only matching packets leave the kernel.
 * Transparent: TC_ACT_UNSPEC / TCX_NEXT. With `capture --rule`, the filter is a policy rule's match and
 * records are labelled with that rule's action and id (cfg_verdict, cfg_rule_id).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "capture.h"
#include "parse.h"
#include "bg_stats.h"
#include "bg_bounds.h"

#define TC_ACT_UNSPEC (-1)

/* the filter, set before load (bpfgate.inspect.capture.CaptureFilter) */
const volatile __u32 cfg_snaplen = BG_CAPTURE_MAX;
const volatile __u8 cfg_proto = 0;       /* IPPROTO_*, 0: any (non-IP packets only when no filter) */
const volatile __u8 cfg_ip_only = 0;     /* 1: some IP filter is set, skip non-IP packets */
const volatile __u16 cfg_port = 0;       /* source or destination port, 0: any */
const volatile __u8 cfg_host_on = 0;     /* 1: source or destination must be in cfg_host/cfg_mask */
const volatile __u8 cfg_host_family = 0; /* 4 or 6 */
const volatile __u32 cfg_host[4] = {};   /* 16-byte address (IPv4-mapped for IPv4), network order */
const volatile __u32 cfg_mask[4] = {};
const volatile __u8 cfg_port_side = BG_SIDE_ANY; /* enum bg_capture_side */
const volatile __u8 cfg_host_side = BG_SIDE_ANY; /* enum bg_capture_side */
/* capture --rule: the label the records carry (the policy rule's action and id), BG_VERDICT_UNKNOWN otherwise */
const volatile __u8 cfg_verdict = BG_VERDICT_UNKNOWN;
const volatile __u32 cfg_rule_id = 0;
/* the filter expression (enum bg_capture_op), ANDed with the filter above */
const volatile __u32 cfg_expr_len = 0;
const volatile struct bg_capture_term cfg_expr[BG_CAPTURE_EXPR_MAX] = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 23);
} capture_events SEC(".maps");

/*
 * The record is built here, then copied with its exact length (ring buffer reserve needs a constant).
 * One slot per CPU, indexed by CPU id (programs do not migrate while they run): a per-CPU array would
 * be simpler but caps values at 32 KiB, less than a 64 KiB GSO packet.
 */
struct scratch {
	__u8 buf[sizeof(struct bg_capture_event) + BG_CAPTURE_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256); /* set to the number of possible CPUs before load */
	__type(key, __u32);
	__type(value, struct scratch);
} capture_scratch SEC(".maps");

static __always_inline int in_prefix(const __u8 *addr)
{
	const __u32 *a = (const __u32 *)addr;

#pragma unroll
	for (int i = 0; i < 4; i++)
		if ((a[i] & cfg_mask[i]) != cfg_host[i])
			return 0;
	return 1;
}

/* 16-byte IPv4-mapped (::ffff:a.b.c.d) or IPv6 addresses, the layout of cfg_host/cfg_mask */
static __always_inline void mapped_addrs(const struct bg_pkt *p, __u8 *src, __u8 *dst)
{
	if (p->family == 4) {
		src[10] = src[11] = dst[10] = dst[11] = 0xff;
		bg_pkt_addrs(p, src + 12, dst + 12);
	} else {
		bg_pkt_addrs(p, src, dst);
	}
}

static __always_inline int in_term_prefix(const volatile struct bg_capture_term *t, const __u8 *addr)
{
	const __u32 *a = (const __u32 *)addr;

#pragma unroll
	for (int i = 0; i < 4; i++)
		if ((a[i] & t->mask[i]) != t->addr[i])
			return 0;
	return 1;
}

static __always_inline int on_side(__u8 side, int src, int dst)
{
	return side == BG_SIDE_SRC ? src : side == BG_SIDE_DST ? dst : side == BG_SIDE_BOTH ? src && dst : src || dst;
}

/* One test of the expression. saddr/daddr: the packet's addresses (IPv4-mapped), or an ARP/RARP frame's
 * sender and target (arp set). proto_of: the protocol as libpcap reads it (IPv6: the first next header, or
 * the one after a fragment header; no other extension header is walked), proto_ports: the protocol a port
 * test needs (IPv6: the first next header). */
static __always_inline int term_true(const volatile struct bg_capture_term *t, const struct bg_pkt *p,
				     const __u8 *saddr, const __u8 *daddr, int arp, __u8 proto_of, __u8 proto_ports)
{
	__u8 op = t->op, side = t->side, family = t->family, proto = t->proto;
	__u16 lo = t->lo, hi = t->hi;

	if (op == BG_CF_FAMILY)
		return (p->have & BG_PKT_L3) && p->family == family;
	if (op == BG_CF_PROTO)
		return (p->have & BG_PKT_PROTO) && proto_of == proto && (!family || p->family == family);
	if (op == BG_CF_ADDR) {
		if (arp ? !t->arp : !(p->have & BG_PKT_L3) || p->family != family)
			return 0;
		return on_side(side, in_term_prefix(t, saddr), in_term_prefix(t, daddr));
	}
	if (op == BG_CF_PORT) {
		if (!(p->have & BG_PKT_PORTS) || (family && p->family != family))
			return 0;
		if (proto_ports != p->proto || (proto ? p->proto != proto
						   : p->proto != BG_IPPROTO_TCP && p->proto != BG_IPPROTO_UDP &&
							     p->proto != BG_IPPROTO_SCTP))
			return 0;
		return on_side(side, p->sport >= lo && p->sport <= hi, p->dport >= lo && p->dport <= hi);
	}
	return 0;
}

/* ARP and RARP over Ethernet (as libpcap reads them: the ethertype at byte 12, the IPv4 sender address at
 * byte 14 of the ARP header, the target at 24): 1 and their addresses IPv4-mapped, or 0 */
static __always_inline int arp_addrs(struct __sk_buff *skb, __u8 *saddr, __u8 *daddr)
{
	__u8 type[2];

	if (bpf_skb_load_bytes(skb, 12, type, 2) < 0 || type[0] != 0x08 || (type[1] != 0x06 && type[1] != 0x35))
		return 0;
	if (type[1] == 0x35 && type[0] != 0x80)
		return 0;
	if (bpf_skb_load_bytes(skb, 14 + 14, saddr + 12, 4) < 0 || bpf_skb_load_bytes(skb, 14 + 24, daddr + 12, 4) < 0)
		return 0;
	saddr[10] = saddr[11] = daddr[10] = daddr[11] = 0xff;
	return 1;
}

/* The expression on a parsed packet: a stack of results, one bit each (the compiler bounds its depth). */
static __always_inline int expr_matches(struct __sk_buff *skb, const struct bg_pkt *p, __u8 *saddr, __u8 *daddr)
{
	__u8 proto_of = p->proto, proto_ports = p->proto, *ip6 = p->l3;
	int arp = 0;
	__u64 st = 0, a, b;

	if (p->have & BG_PKT_L3)
		mapped_addrs(p, saddr, daddr);
	else
		arp = arp_addrs(skb, saddr, daddr);
	if (p->family == 6 && ip6 && (void *)(ip6 + 40) <= p->end) {
		proto_ports = ip6[6];
		proto_of = ip6[6] == BG_V6_EXT_FRAGMENT ? p->proto : ip6[6];
	}
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < BG_CAPTURE_EXPR_MAX; i++) {
		const volatile struct bg_capture_term *t = &cfg_expr[i];
		__u8 op;

		if (i >= cfg_expr_len)
			break;
		op = t->op;
		if (op == BG_CF_NOT) {
			st ^= 1;
		} else if (op == BG_CF_AND || op == BG_CF_OR) {
			a = st & 1;
			b = (st >> 1) & 1;
			st = (st >> 2) << 1 | (op == BG_CF_AND ? a & b : a | b);
		} else {
			st = st << 1 | term_true(t, p, saddr, daddr, arp, proto_of, proto_ports);
		}
	}
	return st & 1;
}

static __always_inline int matches(struct __sk_buff *skb)
{
	__u8 saddr[16] = {}, daddr[16] = {};
	struct bg_pkt p = {};

	if (!cfg_ip_only && !cfg_expr_len)
		return 1;
	bg_parse_skb(skb, &p);
	if (cfg_expr_len && !expr_matches(skb, &p, saddr, daddr))
		return 0;
	if (!cfg_ip_only)
		return 1;
	if (!(p.have & BG_PKT_PROTO) || (!p.later_frag && bg_pkt_l4_hdr_len(&p) < 0))
		return 0; /* not IP, or a header cut short */
	if (cfg_proto && p.proto != cfg_proto)
		return 0;
	if (cfg_port) {
		if (p.later_frag || (p.proto != BG_IPPROTO_TCP && p.proto != BG_IPPROTO_UDP))
			return 0;
		if (cfg_port_side == BG_SIDE_SRC && p.sport != cfg_port)
			return 0;
		if (cfg_port_side == BG_SIDE_DST && p.dport != cfg_port)
			return 0;
		if (cfg_port_side == BG_SIDE_ANY && p.sport != cfg_port && p.dport != cfg_port)
			return 0;
	}
	if (cfg_host_on) {
		if (p.family != cfg_host_family)
			return 0;
		__builtin_memset(saddr, 0, 16);
		__builtin_memset(daddr, 0, 16);
		mapped_addrs(&p, saddr, daddr);
		if (cfg_host_side == BG_SIDE_SRC && !in_prefix(saddr))
			return 0;
		if (cfg_host_side == BG_SIDE_DST && !in_prefix(daddr))
			return 0;
		if (cfg_host_side == BG_SIDE_ANY && !in_prefix(saddr) && !in_prefix(daddr))
			return 0;
	}
	return 1;
}

static __always_inline int capture(struct __sk_buff *skb, __u8 dir)
{
	__u32 cpu = bpf_get_smp_processor_id(), snap = cfg_snaplen;
	__u64 len = skb->len;
	struct bg_capture_event *ev;
	struct scratch *s;

	if (!matches(skb))
		return TC_ACT_UNSPEC;
	s = bpf_map_lookup_elem(&capture_scratch, &cpu);
	if (!s)
		return TC_ACT_UNSPEC;
	if (len > snap)
		len = snap;
	/* keep clang from folding the checks away: the verifier must see 0 < len <= BG_CAPTURE_MAX */
	asm volatile("" : "+r"(len));
	if (len == 0 || len > BG_CAPTURE_MAX)
		return TC_ACT_UNSPEC;
	len = bg_len_nonzero(len);
	if (bpf_skb_load_bytes(skb, 0, s->buf + sizeof(*ev), len) < 0) {
		stat_inc(BG_STAT_EVENTS_LOST);
		return TC_ACT_UNSPEC;
	}
	ev = (void *)s->buf;
	ev->hdr.type = BG_EV_CAPTURE;
	ev->hdr.len = sizeof(*ev) + len;
	ev->hdr.cpu = cpu;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->ifindex = skb->ifindex;
	ev->pkt_len = skb->len;
	ev->cap_len = len;
	ev->rule_id = cfg_rule_id;
	ev->dir = dir;
	ev->hook = BG_HOOK_TC;
	ev->verdict = cfg_verdict;
	if (bpf_ringbuf_output(&capture_events, s, sizeof(*ev) + len, 0) < 0)
		stat_inc(BG_STAT_EVENTS_LOST);
	else
		stat_inc(BG_STAT_EVENTS);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int bg_cap_ingress(struct __sk_buff *skb)
{
	return capture(skb, BG_DIR_INGRESS);
}

SEC("tc")
int bg_cap_egress(struct __sk_buff *skb)
{
	return capture(skb, BG_DIR_EGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
