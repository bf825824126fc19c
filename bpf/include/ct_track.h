/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The connection tracker's code, shared by every program that tracks (engine.bpf.c, flows.bpf.c): the
 * table bg_ct (conntrack.h: key and value), the packet -> key mapping on parse.h's struct bg_pkt, and one
 * bg_ct_packet() that finds the packet's flow, creates it for a valid first packet and counts the packet in
 * its direction. Programs of one interface share one bg_ct (reuse_map of the pinned table): the control
 * plane sets exactly one tracker per direction of a device and the others read (lookup_only), so a packet
 * is counted once whichever families are attached (docs/conntrack.md).
 */
#ifndef BG_CT_TRACK_H
#define BG_CT_TRACK_H

#include "conntrack.h"
#include "parse.h"

#define BG_CT_NSEC 1000000000ULL

/* flow expiry after the last packet (set before load; bpfgate.engine.engine.CT_TIMEOUT_*_S) */
const volatile __u64 cfg_ct_timeout_new_ns = 30 * BG_CT_NSEC;  /* no reply seen yet */
const volatile __u64 cfg_ct_timeout_est_ns = 600 * BG_CT_NSEC; /* reply seen */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bg_ct_key);
	__type(value, struct bg_ct_value);
} bg_ct SEC(".maps");

static const struct bg_ct_value bg_ct_zero; /* what a new entry starts from (filled in place) */

/* What one packet adds to its flow's counters. */
struct bg_ct_size {
	__u64 segs;  /* wire packets: a GSO/GRO skb stands for gso_segs */
	__u64 bytes; /* L3 bytes of those packets */
};

static __always_inline void bg_ct_size_xdp(const struct bg_pkt *p, struct bg_ct_size *sz)
{
	sz->segs = 1;
	sz->bytes = p->end - p->l3;
}

static __always_inline void bg_ct_size_skb(struct __sk_buff *skb, const struct bg_pkt *p, struct bg_ct_size *sz)
{
	int l4len = bg_pkt_l4_hdr_len(p);
	__u64 hdr = 0;

	sz->segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	if (sz->segs > 1 && l4len >= 0)
		hdr = (p->l4 - p->l3) + l4len; /* what each segment repeats */
	sz->bytes = skb->len - (p->l3 - p->data) + (sz->segs - 1) * hdr;
}

/* The flow key of the packet, in the packet's direction. 0 if the packet is not trackable. */
static __always_inline int bg_ct_key_of(const struct bg_pkt *p, struct bg_ct_key *ck)
{
	__u8 proto = p->proto;

	if (!(p->have & BG_PKT_PROTO) || !bg_pkt_addrs(p, ck->src, ck->dst))
		return 0;
	ck->family = p->family;
	ck->proto = proto;
	if (p->have & BG_PKT_PORTS) {
		ck->sport = p->sport;
		ck->dport = p->dport;
	} else if (p->have & BG_PKT_ICMP) {
		/* echo request/reply share the identifier; other ICMP is tracked per address pair */
		__u8 t = p->icmp_type;

		if (t == 8 || t == 0 || t == 128 || t == 129)
			ck->sport = ck->dport = p->icmp_id;
	} else if (proto == BG_IPPROTO_TCP || proto == BG_IPPROTO_UDP || proto == BG_IPPROTO_SCTP ||
		   proto == BG_IPPROTO_ICMP || proto == BG_IPPROTO_ICMPV6) {
		return 0; /* fragment or truncated: no L4 to tell the flow */
	}
	return 1;
}

static __always_inline void bg_ct_reverse(const struct bg_ct_key *ck, struct bg_ct_key *rk)
{
	rk->family = ck->family;
	rk->proto = ck->proto;
	rk->sport = ck->dport;
	rk->dport = ck->sport;
	__builtin_memcpy(rk->src, ck->dst, 16);
	__builtin_memcpy(rk->dst, ck->src, 16);
}

static __always_inline int bg_ct_live(const struct bg_ct_value *e, __u64 now)
{
	__u64 t = (e->flags & BG_CTF_REPLY) ? cfg_ct_timeout_est_ns : cfg_ct_timeout_new_ns;

	return bg_ns_since(now, e->last_ns) <= t;
}

/* Whether an entry is a state to go by: live, and (for the engine) not picked up mid-stream. */
static __always_inline int bg_ct_usable(const struct bg_ct_value *e, __u64 now, int midstream)
{
	return e && bg_ct_live(e, now) && (midstream || !(e->flags & BG_CTF_MIDSTREAM));
}

static __always_inline void bg_ct_account(struct bg_ct_value *e, int dir, const struct bg_ct_size *sz,
					  __u8 tcp_flags, __u64 now)
{
	e->last_ns = now;
	if (dir == BG_CT_REPLY) {
		__sync_fetch_and_add(&e->packets[BG_CT_REPLY], sz->segs);
		__sync_fetch_and_add(&e->bytes[BG_CT_REPLY], sz->bytes);
		if (!(e->flags & BG_CTF_REPLY))
			e->flags |= BG_CTF_REPLY;
		if ((e->tcp_flags[BG_CT_REPLY] | tcp_flags) != e->tcp_flags[BG_CT_REPLY])
			e->tcp_flags[BG_CT_REPLY] |= tcp_flags;
	} else {
		__sync_fetch_and_add(&e->packets[BG_CT_ORIG], sz->segs);
		__sync_fetch_and_add(&e->bytes[BG_CT_ORIG], sz->bytes);
		if ((e->tcp_flags[BG_CT_ORIG] | tcp_flags) != e->tcp_flags[BG_CT_ORIG])
			e->tcp_flags[BG_CT_ORIG] |= tcp_flags;
	}
}

/* An ICMP error (unreachable, time exceeded, parameter problem; ICMPv6 types 1-4) about a tracked flow:
 * the error quotes the offending packet's IP header and first L4 bytes. */
static __always_inline int bg_ct_related(const struct bg_pkt *p, __u64 now)
{
	struct bg_ct_key ik = {}, rk = {};
	struct bg_ct_value *e;
	__u8 t = p->icmp_type, *in;
	void *end = p->end;

	if (!(p->have & BG_PKT_ICMP) || !p->l4)
		return 0;
	if (p->proto == BG_IPPROTO_ICMP ? !(t == 3 || t == 11 || t == 12) : !(t >= 1 && t <= 4))
		return 0;
	in = p->l4 + 8;
	if (p->family == 4) {
		struct iphdr *ip = (void *)in;

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return 0;
		ik.family = 4;
		ik.proto = ip->protocol;
		__builtin_memcpy(ik.src, &ip->saddr, 4);
		__builtin_memcpy(ik.dst, &ip->daddr, 4);
		in += ip->ihl * 4;
	} else {
		struct ipv6hdr *ip6 = (void *)in;

		if ((void *)(ip6 + 1) > end)
			return 0;
		ik.family = 6;
		ik.proto = ip6->nexthdr;
		__builtin_memcpy(ik.src, &ip6->saddr, 16);
		__builtin_memcpy(ik.dst, &ip6->daddr, 16);
		in = (void *)(ip6 + 1);
	}
	if (ik.proto == BG_IPPROTO_TCP || ik.proto == BG_IPPROTO_UDP || ik.proto == BG_IPPROTO_SCTP) {
		if ((void *)(in + 4) > end)
			return 0;
		ik.sport = ((__u16)in[0] << 8) | in[1];
		ik.dport = ((__u16)in[2] << 8) | in[3];
	} else if (ik.proto == BG_IPPROTO_ICMP || ik.proto == BG_IPPROTO_ICMPV6) {
		if ((void *)(in + 6) > end)
			return 0;
		if (in[0] == 8 || in[0] == 0 || in[0] == 128 || in[0] == 129)
			ik.sport = ik.dport = ((__u16)in[4] << 8) | in[5];
	}
	e = bpf_map_lookup_elem(&bg_ct, &ik);
	if (bg_ct_usable(e, now, 0))
		return 1;
	bg_ct_reverse(&ik, &rk);
	e = bpf_map_lookup_elem(&bg_ct, &rk);
	return bg_ct_usable(e, now, 0);
}

/* Where a tracked packet's flow is (bg_ct_packet's out-parameter, for programs that report flows). */
struct bg_ct_found {
	struct bg_ct_value *e;  /* the entry (NULL: none, or not trackable) */
	struct bg_ct_key key;   /* its key (originator's direction) */
	__u8 dir;               /* enum bg_ct_dir_index of this packet */
	__s8 created;           /* 1: this packet created the entry, -1: creating it failed (table full) */
};

/* The packet's conntrack state (enum bg_ct_state, 0: not trackable). Creates the flow for a valid first
 * packet and counts the packet in its direction, unless lookup_only (another program tracks here).
 * midstream (flow accounting): a TCP packet of no known flow that is not an opening SYN still creates
 * an entry, flagged BG_CTF_MIDSTREAM; without it (the engine) such entries count as no state at all. */
static __always_inline __u8 bg_ct_packet(const struct bg_pkt *p, const struct bg_ct_size *sz, __u32 ifindex,
					__u8 hook_dir, int lookup_only, int midstream, struct bg_ct_found *found)
{
	struct bg_ct_key ck = {}, rk = {};
	struct bg_ct_value *e;
	__u64 now = bpf_ktime_get_ns();
	__u8 flags = (p->have & BG_PKT_TCPFLAGS) ? p->tcp_flags : 0, state = BG_CT_NEW;

	if (!bg_ct_key_of(p, &ck))
		return 0;
	e = bpf_map_lookup_elem(&bg_ct, &ck);
	if (bg_ct_usable(e, now, midstream)) {
		if (!lookup_only)
			bg_ct_account(e, BG_CT_ORIG, sz, flags, now);
		if (found) {
			found->e = e;
			found->key = ck;
			found->dir = BG_CT_ORIG;
		}
		return (e->flags & BG_CTF_REPLY) ? BG_CT_ESTABLISHED : BG_CT_NEW;
	}
	bg_ct_reverse(&ck, &rk);
	e = bpf_map_lookup_elem(&bg_ct, &rk);
	if (bg_ct_usable(e, now, midstream)) {
		if (!lookup_only)
			bg_ct_account(e, BG_CT_REPLY, sz, flags, now);
		if (found) {
			found->e = e;
			found->key = rk;
			found->dir = BG_CT_REPLY;
		}
		return BG_CT_ESTABLISHED;
	}
	if (bg_ct_related(p, now))
		return BG_CT_RELATED;
	/* a new flow: TCP only from a SYN without ACK (anything else without state is invalid) */
	if (p->proto == BG_IPPROTO_TCP && (!(p->have & BG_PKT_TCPFLAGS) || (flags & 0x16) != 0x02)) {
		state = BG_CT_INVALID;
		if (!midstream)
			return state;
	}
	if (lookup_only)
		return state;
	/* inserted zeroed from .rodata, then filled in place: a 112-byte value on the stack would pass 6.1's
	 * 512-byte limit of the engine's stack plus its capture call's */
	if (bpf_map_update_elem(&bg_ct, &ck, &bg_ct_zero, BPF_ANY) || !(e = bpf_map_lookup_elem(&bg_ct, &ck))) {
		if (found)
			found->created = -1;
		return state;
	}
	e->first_ns = e->last_ns = now;
	e->packets[BG_CT_ORIG] = sz->segs;
	e->bytes[BG_CT_ORIG] = sz->bytes;
	e->tcp_flags[BG_CT_ORIG] = flags;
	e->ifindex = ifindex;
	e->created_dir = hook_dir;
	if (state == BG_CT_INVALID)
		e->flags = BG_CTF_MIDSTREAM;
	if (found) {
		found->e = e;
		found->key = ck;
		found->dir = BG_CT_ORIG;
		found->created = 1;
	}
	return state;
}

#endif /* BG_CT_TRACK_H */
