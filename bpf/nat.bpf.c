// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Address and port translation at TC ingress and egress of one interface (bpfgate.nat): DNAT of packets
 * arriving for an address[:port] (and L4 load balancing: the backend from a Maglev table), SNAT of packets
 * leaving from a source prefix (source port allocated, collisions avoided), both IPv4 and IPv6, TCP and
 * UDP, stateful through the connection tracker (replies translated back; nat.h says how a flow sits in
 * bg_ct) or stateless (1:1, every packet by the rule). ICMP errors quoting a translated flow are translated
 * too: the quoted header, its checksums and the outer header.
 *
 * Checksums (the pitfalls other projects hit, each handled here):
 *   - IPv4 address: the IP header checksum (bpf_l3_csum_replace) AND the TCP/UDP checksum's pseudo-header
 *     (BPF_F_PSEUDO_HDR: for a CHECKSUM_PARTIAL packet the field holds the pseudo-header sum and only that
 *     part is updated; the size nibble is always given).
 *   - ports: the L4 checksum without BPF_F_PSEUDO_HDR (for CHECKSUM_PARTIAL the hardware/stack sums them).
 *   - UDP: BPF_F_MARK_MANGLED_0: a zero checksum (IPv4: none) stays zero, a result of zero becomes 0xffff.
 *   - IPv6 address with CHECKSUM_COMPLETE: bpf_l4_csum_replace(BPF_F_PSEUDO_HDR) also moves skb->csum as if
 *     the address were outside the summed data (true for IPv4, whose header checksum compensates; not for
 *     IPv6): bpf_csum_update() adds the difference back (it does nothing for other ip_summed). Newer
 *     kernels have BPF_F_IPV6 for this; 6.1 has not.
 *   - ICMP errors: inner checksums are updated by hand and every changed inner byte is folded into the
 *     ICMP checksum; ICMPv6's checksum also covers the outer pseudo-header.
 *
 * Transparent for what it does not translate (TC_ACT_UNSPEC / TCX_NEXT); drops only when it cannot do what
 * its rules say (no free SNAT port, a failed rewrite), each counted.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "nat.h"
#include "parse.h"
#include "ct_track.h"
#include "bg_percpu.h"

#define TC_ACT_UNSPEC (-1)
#define TC_ACT_SHOT 2

/* ingress: destination rules (DNAT, load balancing, reverses of stateless SNAT) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct bg_nat_key);
	__type(value, struct bg_nat_target);
} nat_in_dst SEC(".maps");

/* egress: source rules that are 1:1 (stateless SNAT, reverses of stateless DNAT) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct bg_nat_key);
	__type(value, struct bg_nat_target);
} nat_out_src SEC(".maps");

/* egress: stateful SNAT by source prefix (longest match) */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bg_snat_key);
	__type(value, struct bg_nat_target);
} nat_snat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct bg_lb_svc);
} lb_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct bg_lb_backend);
} lb_backends SEC(".maps");

/* every service's Maglev table, one region each (bg_lb_svc.base/size): slot -> backend id (0: none) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 20);
	__type(key, __u32);
	__type(value, __u32);
} lb_slots SEC(".maps");

/* new flows per backend id (backend ids are never handed out twice; user space deletes a removed one's) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} lb_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BG_NAT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nat_stats SEC(".maps");

static __always_inline void nat_count(__u32 idx)
{
	percpu_inc(&nat_stats, idx);
}

static __always_inline void lb_count(__u32 backend)
{
	__u64 one = 1, *v = bpf_map_lookup_elem(&lb_flows, &backend);

	if (v)
		(*v)++;
	else /* its first flow: the entry is made with this CPU's slot at 1, the others at 0 */
		bpf_map_update_elem(&lb_flows, &backend, &one, BPF_NOEXIST);
}

/* ---- checksums and rewrites ------------------------------------------------------------------------ */

static __always_inline __u16 csum_fold(__u64 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/* A 16-bit checksum field (raw, as in memory) after data it covers changed by `diff` (a ones'-complement
 * sum of ~old + new words, raw order). */
static __always_inline __u16 csum_apply(__u16 field, __u32 diff)
{
	return csum_fold((__u64)(__u16)~field + diff);
}

static __always_inline __u32 csum_diff16(__u16 old, __u16 new)
{
	return (__u32)(__u16)~old + new;
}

/* Offset of the checksum the addresses' pseudo-header is in (0: none, ICMPv4), and the flags it needs. */
static __always_inline __u32 l4_csum_off(__u8 proto, __u32 l4_off, __u64 *flags)
{
	*flags = 0;
	if (proto == BG_IPPROTO_TCP)
		return l4_off + 16;
	if (proto == BG_IPPROTO_UDP) {
		*flags = BPF_F_MARK_MANGLED_0;
		return l4_off + 6;
	}
	if (proto == BG_IPPROTO_ICMPV6)
		return l4_off + 2;
	return 0;
}

/* One address of the packet's IP header: `src` or destination, old -> new (16 bytes, IPv4 in 0..3). */
static __always_inline int rewrite_addr(struct __sk_buff *skb, __u32 l3_off, __u32 l4_off, __u8 family,
					__u8 proto, int src, const __u8 *old, const __u8 *new)
{
	__u64 flags;
	__u32 coff = l4_csum_off(proto, l4_off, &flags);

	if (family == 4) {
		__u32 o, n;

		__builtin_memcpy(&o, old, 4);
		__builtin_memcpy(&n, new, 4);
		if (o == n)
			return 0;
		if (coff && bpf_l4_csum_replace(skb, coff, o, n, BPF_F_PSEUDO_HDR | flags | 4))
			return -1;
		if (bpf_l3_csum_replace(skb, l3_off + 10, o, n, 4))
			return -1;
		return bpf_skb_store_bytes(skb, l3_off + (src ? 12 : 16), &n, 4, 0);
	} else {
		__u8 o[16], n[16];
		__s64 diff;

		__builtin_memcpy(o, old, 16);
		__builtin_memcpy(n, new, 16);
		diff = bpf_csum_diff((void *)o, 16, (void *)n, 16, 0);
		if (diff < 0)
			return -1;
		if (coff) {
			if (bpf_l4_csum_replace(skb, coff, 0, diff, BPF_F_PSEUDO_HDR | flags))
				return -1;
			bpf_csum_update(skb, diff); /* CHECKSUM_COMPLETE only: see the top of this file */
		}
		return bpf_skb_store_bytes(skb, l3_off + (src ? 8 : 24), n, 16, 0);
	}
}

/* The source or destination port (host order), with the L4 checksum. */
static __always_inline int rewrite_port(struct __sk_buff *skb, __u32 l4_off, __u8 proto, int src, __u16 old,
					__u16 new)
{
	__u64 flags;
	__u32 coff = l4_csum_off(proto, l4_off, &flags);
	__be16 o = bpf_htons(old), n = bpf_htons(new);

	if (old == new || !new)
		return 0;
	if (bpf_l4_csum_replace(skb, coff, o, n, flags | 2))
		return -1;
	return bpf_skb_store_bytes(skb, l4_off + (src ? 0 : 2), &n, 2, 0);
}

/* Where a packet is and what of it changes. */
struct xlate {
	__u32 l3_off;
	__u32 l4_off;
	__u8 family;
	__u8 proto;
	__u8 src;        /* rewrite the source, else the destination */
	__u8 pad;
	__u16 old_port;  /* host order */
	__u16 new_port;  /* 0: keep */
	__u8 old_addr[16];
	__u8 new_addr[16];
};

static __always_inline int rewrite(struct __sk_buff *skb, const struct xlate *x)
{
	if (rewrite_addr(skb, x->l3_off, x->l4_off, x->family, x->proto, x->src, x->old_addr, x->new_addr))
		return -1;
	return rewrite_port(skb, x->l4_off, x->proto, x->src, x->old_port, x->new_port);
}

/* ---- flows ---------------------------------------------------------------------------------------- */

static __always_inline int side_addr_eq(const __u8 *a, const __u8 *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;

	return x[0] == y[0] && x[1] == y[1];
}

/* Insert a zeroed entry and fill it in place (a value on the stack would pass 6.1's stack limit). */
static __always_inline struct bg_ct_value *ct_insert(const struct bg_ct_key *k, __u64 now, __u32 ifindex,
						     __u8 dir, __u8 nat_flags, const __u8 *addr, __u16 port)
{
	struct bg_ct_value *e;

	if (bpf_map_update_elem(&bg_ct, k, &bg_ct_zero, BPF_ANY) || !(e = bpf_map_lookup_elem(&bg_ct, k)))
		return 0;
	e->first_ns = e->last_ns = now;
	e->ifindex = ifindex;
	e->created_dir = dir;
	e->ext.nat_flags = nat_flags;
	__builtin_memcpy(e->ext.nat_addr, addr, 16);
	e->ext.nat_port = port;
	return e;
}

/* The key of the other entry of a translated flow (nat.h): from an original entry the view, from a view
 * the original. */
static __always_inline void partner_key(const struct bg_ct_key *k, const struct bg_ct_value *e,
					struct bg_ct_key *pk)
{
	*pk = *k;
	if (e->ext.nat_flags & BG_NAT_SRC) {
		__builtin_memcpy(pk->src, e->ext.nat_addr, 16);
		pk->sport = e->ext.nat_port;
	} else {
		__builtin_memcpy(pk->dst, e->ext.nat_addr, 16);
		pk->dport = e->ext.nat_port;
	}
}

/* Both entries of a flow stay alive as long as either direction has packets; the counters live in the
 * original entry (both directions, as flows.bpf.c keeps them). */
/* A flow that ended (BG_NAT_CLOSED) keeps its entries this long after its last packet (the last ACK, a
 * retransmitted FIN), not the established timeout: like conntrack's close timeout. */
const volatile __u64 cfg_nat_timeout_closed_ns = 10 * BG_CT_NSEC;

static __always_inline int nat_live(const struct bg_ct_value *e, __u64 now)
{
	if (e->ext.nat_flags & BG_NAT_CLOSED)
		return bg_ns_since(now, e->last_ns) <= cfg_nat_timeout_closed_ns;
	return bg_ct_live(e, now);
}

/* TCP state of a translated flow from the flags seen each way (the original entry's): a RST, or a FIN each
 * way, ends it, and both entries are marked; an opening SYN on an ended flow (its tuple used again)
 * starts it afresh. */
static __always_inline void tcp_state(struct bg_ct_value *e, struct bg_ct_value *other, struct bg_ct_value *orig,
				      __u8 tcp_flags)
{
	__u8 seen;

	if (!orig || !(tcp_flags & (BG_TCP_SYN | BG_TCP_FIN | BG_TCP_RST)))
		return;
	if ((tcp_flags & (BG_TCP_SYN | BG_TCP_ACK)) == BG_TCP_SYN) {
		if (e->ext.nat_flags & BG_NAT_CLOSED) {
			orig->tcp_flags[BG_CT_ORIG] = orig->tcp_flags[BG_CT_REPLY] = BG_TCP_SYN;
			e->ext.nat_flags &= ~BG_NAT_CLOSED;
			if (other)
				other->ext.nat_flags &= ~BG_NAT_CLOSED;
		}
		return;
	}
	seen = orig->tcp_flags[BG_CT_ORIG] & orig->tcp_flags[BG_CT_REPLY];
	if ((tcp_flags & BG_TCP_RST) || (seen & BG_TCP_FIN)) {
		e->ext.nat_flags |= BG_NAT_CLOSED;
		if (other)
			other->ext.nat_flags |= BG_NAT_CLOSED;
	}
}

static __always_inline void touch(const struct bg_ct_key *k, struct bg_ct_value *e, int reply,
				  const struct bg_ct_size *sz, __u8 tcp_flags, __u64 now)
{
	struct bg_ct_key pk;
	struct bg_ct_value *other, *orig = e;

	partner_key(k, e, &pk);
	other = bpf_map_lookup_elem(&bg_ct, &pk);
	if (e->ext.nat_flags & BG_NAT_VIEW)
		orig = other;
	if (other) {
		other->last_ns = now;
		if (reply && !(other->flags & BG_CTF_REPLY))
			other->flags |= BG_CTF_REPLY;
	}
	e->last_ns = now;
	if (orig)
		bg_ct_account(orig, reply ? BG_CT_REPLY : BG_CT_ORIG, sz, tcp_flags, now);
	if (reply && !(e->flags & BG_CTF_REPLY))
		e->flags |= BG_CTF_REPLY;
	tcp_state(e, other, orig, tcp_flags);
}

static __always_inline __u32 flow_hash(const struct bg_ct_key *k, __u32 seed)
{
	const __u32 *w = (const void *)k;
	__u32 h = seed ^ 0x9747b28c;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*k) / 4); i++) {
		h ^= w[i];
		h *= 0x01000193;
		h ^= h >> 15;
	}
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The backend of a new flow of service `svc` from its Maglev table: its id, 0 if none. */
static __always_inline __u32 lb_pick(const struct bg_ct_key *k, __u32 svc, struct bg_lb_backend **out)
{
	__u32 si = svc - 1, idx, *bid;
	struct bg_lb_svc *s = bpf_map_lookup_elem(&lb_svc, &si);

	if (!s || !s->size)
		return 0;
	idx = s->base + flow_hash(k, s->seed) % s->size;
	bid = bpf_map_lookup_elem(&lb_slots, &idx);
	if (!bid || !*bid)
		return 0;
	*out = bpf_map_lookup_elem(&lb_backends, bid);
	return *out ? *bid : 0;
}

static __always_inline struct bg_nat_target *rule_of(void *map, __u8 family, __u8 proto, const __u8 *addr,
						     __u16 port)
{
	struct bg_nat_key nk = {.family = family, .proto = proto, .port = port};
	struct bg_nat_target *t;

	__builtin_memcpy(nk.addr, addr, 16);
	t = bpf_map_lookup_elem(map, &nk);
	if (t)
		return t;
	nk.port = 0;
	return bpf_map_lookup_elem(map, &nk);
}

/* ---- ICMP errors quoting a translated flow --------------------------------------------------------- */

static __always_inline int icmp_csum_fix(struct __sk_buff *skb, __u32 coff, __u32 from, __u32 to, __u64 size)
{
	return bpf_l4_csum_replace(skb, coff, from, to, size);
}

/* Rewrite the quoted packet's source or destination (address and port) with its checksums, and fold every
 * changed byte into the ICMP checksum at icmp_coff. */
static __always_inline int rewrite_inner(struct __sk_buff *skb, __u32 icmp_coff, __u8 family, __u8 iproto,
					 __u32 in3, __u32 in4, int src, const __u8 *old, const __u8 *new,
					 __u16 old_port, __u16 new_port)
{
	__u32 adiff, pdiff = 0, l4c_off = in4 + (iproto == BG_IPPROTO_TCP ? 16 : 6);
	__u16 c, nc, po = bpf_htons(old_port), pn = bpf_htons(new_port);
	__u8 o[16], n[16];
	__s64 d;

	__builtin_memcpy(o, old, 16);
	__builtin_memcpy(n, new, 16);
	d = bpf_csum_diff((void *)o, family == 4 ? 4 : 16, (void *)n, family == 4 ? 4 : 16, 0);
	if (d < 0)
		return -1;
	adiff = d;
	if (new_port && new_port != old_port)
		pdiff = csum_diff16(po, pn);
	/* the quoted L4 checksum, when the quote reaches it (an IPv4 error may quote only 8 bytes of TCP) */
	if (l4c_off + 2 <= skb->len && !bpf_skb_load_bytes(skb, l4c_off, &c, 2) &&
	    !(iproto == BG_IPPROTO_UDP && c == 0 && family == 4)) {
		nc = csum_apply(c, adiff + pdiff);
		if (iproto == BG_IPPROTO_UDP && nc == 0)
			nc = 0xffff;
		if (bpf_skb_store_bytes(skb, l4c_off, &nc, 2, 0) || icmp_csum_fix(skb, icmp_coff, c, nc, 2))
			return -1;
	}
	if (family == 4) {
		__u32 o4, n4;

		if (bpf_skb_load_bytes(skb, in3 + 10, &c, 2))
			return -1;
		nc = csum_apply(c, adiff);
		if (bpf_skb_store_bytes(skb, in3 + 10, &nc, 2, 0) || icmp_csum_fix(skb, icmp_coff, c, nc, 2))
			return -1;
		__builtin_memcpy(&o4, o, 4);
		__builtin_memcpy(&n4, n, 4);
		if (bpf_skb_store_bytes(skb, in3 + (src ? 12 : 16), &n4, 4, 0) ||
		    icmp_csum_fix(skb, icmp_coff, o4, n4, 4))
			return -1;
	} else {
		if (bpf_skb_store_bytes(skb, in3 + (src ? 8 : 24), n, 16, 0) ||
		    icmp_csum_fix(skb, icmp_coff, 0, adiff, 0))
			return -1;
	}
	if (pdiff && (bpf_skb_store_bytes(skb, in4 + (src ? 0 : 2), &pn, 2, 0) ||
		      icmp_csum_fix(skb, icmp_coff, po, pn, 2)))
		return -1;
	return 0;
}

static __always_inline int icmp_error(struct __sk_buff *skb, const struct bg_pkt *p, int egress)
{
	__u32 l3_off = p->l3 - p->data, icmp_off = p->l4 - p->data, in3 = icmp_off + 8, in4;
	struct bg_ct_key ik = {}, rk = {};
	struct bg_ct_value *e;
	__u8 t = p->icmp_type, newv[16] = {};
	__u8 outer[16] __attribute__((aligned(8))) = {}, oldv[16] __attribute__((aligned(8))) = {};
	__u16 ports[2], old_port, new_port;
	int inner_src, outer_src;
	__u8 *inner_old;

	if (p->proto == BG_IPPROTO_ICMP ? !(t == 3 || t == 11 || t == 12) : !(t >= 1 && t <= 4))
		return TC_ACT_UNSPEC;
	ik.family = p->family;
	if (p->family == 4) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, in3, &ip, sizeof(ip)) || ip.version != 4 || ip.ihl < 5)
			return TC_ACT_UNSPEC;
		ik.proto = ip.protocol;
		__builtin_memcpy(ik.src, &ip.saddr, 4);
		__builtin_memcpy(ik.dst, &ip.daddr, 4);
		in4 = in3 + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, in3, &ip6, sizeof(ip6)))
			return TC_ACT_UNSPEC;
		ik.proto = ip6.nexthdr;
		__builtin_memcpy(ik.src, &ip6.saddr, 16);
		__builtin_memcpy(ik.dst, &ip6.daddr, 16);
		in4 = in3 + 40;
	}
	if ((ik.proto != BG_IPPROTO_TCP && ik.proto != BG_IPPROTO_UDP) || bpf_skb_load_bytes(skb, in4, ports, 4))
		return TC_ACT_UNSPEC;
	ik.sport = bpf_ntohs(ports[0]);
	ik.dport = bpf_ntohs(ports[1]);

	/* The quoted packet went out translated in the flow's direction (its tuple is the view entry's): the
	 * side that was translated goes back. Or it is a reply on its way before its translation back (the
	 * original entry is under its reversed tuple): the other side is translated as the flow's packets are. */
	e = bpf_map_lookup_elem(&bg_ct, &ik);
	if (e && (e->ext.nat_flags & BG_NAT_VIEW) && nat_live(e, bpf_ktime_get_ns())) {
		if ((e->ext.nat_flags & BG_NAT_DST) && egress)
			inner_src = 0; /* DNAT: the backend's error about client -> backend */
		else if ((e->ext.nat_flags & BG_NAT_SRC) && !egress)
			inner_src = 1; /* SNAT: an error about translated -> server, coming back */
		else
			return TC_ACT_UNSPEC;
	} else {
		bg_ct_reverse(&ik, &rk);
		e = bpf_map_lookup_elem(&bg_ct, &rk);
		if (!e || !e->ext.nat_flags || (e->ext.nat_flags & BG_NAT_VIEW) || !nat_live(e, bpf_ktime_get_ns()))
			return TC_ACT_UNSPEC;
		if ((e->ext.nat_flags & BG_NAT_DST) && !egress)
			inner_src = 1; /* DNAT: the client's error about a reply from the VIP */
		else if ((e->ext.nat_flags & BG_NAT_SRC) && egress)
			inner_src = 0; /* SNAT: the inside host's error about a reply to it */
		else
			return TC_ACT_UNSPEC;
	}
	inner_old = inner_src ? ik.src : ik.dst;
	old_port = inner_src ? ik.sport : ik.dport;
	new_port = e->ext.nat_port;
	__builtin_memcpy(oldv, inner_old, 16);
	__builtin_memcpy(newv, e->ext.nat_addr, 16);
	/* the outer header: the side that carries the same address as the quoted side is translated too
	 * (the error came from / goes to the translated host) */
	outer_src = !inner_src;
	if (p->family == 4) {
		if (bpf_skb_load_bytes(skb, l3_off + (outer_src ? 12 : 16), outer, 4))
			return TC_ACT_UNSPEC;
	} else if (bpf_skb_load_bytes(skb, l3_off + (outer_src ? 8 : 24), outer, 16)) {
		return TC_ACT_UNSPEC;
	}
	if (rewrite_inner(skb, icmp_off + 2, p->family, ik.proto, in3, in4, inner_src, oldv, newv, old_port,
			  new_port))
		goto fail;
	if (side_addr_eq(outer, oldv) &&
	    rewrite_addr(skb, l3_off, icmp_off, p->family, p->proto, outer_src, oldv, newv))
		goto fail;
	nat_count(BG_NAT_STAT_ICMP_XLATE);
	nat_count(egress ? BG_NAT_STAT_XLATE_OUT : BG_NAT_STAT_XLATE_IN);
	return TC_ACT_UNSPEC;
fail:
	nat_count(BG_NAT_STAT_REWRITE_FAIL);
	return TC_ACT_SHOT;
}

/* ---- new flows ------------------------------------------------------------------------------------- */

/* A new stateful flow: the original entry under ck, the view entry under the translated tuple. The view
 * key `vk` is filled here. */
static __always_inline int new_flow(const struct bg_ct_key *ck, struct bg_ct_key *vk, int src, const __u8 *to,
				    __u16 to_port, __u32 backend, __u32 ifindex, __u8 dir, __u64 now)
{
	struct bg_ct_value *e;
	__u8 side = src ? BG_NAT_SRC : BG_NAT_DST;

	*vk = *ck;
	if (src) {
		__builtin_memcpy(vk->src, to, 16);
		vk->sport = to_port;
	} else {
		__builtin_memcpy(vk->dst, to, 16);
		vk->dport = to_port;
	}
	e = ct_insert(vk, now, ifindex, dir, side | BG_NAT_VIEW, src ? ck->src : ck->dst, src ? ck->sport : ck->dport);
	if (!e)
		return -1;
	e->ext.backend_id = backend;
	e = ct_insert(ck, now, ifindex, dir, side, to, to_port);
	if (!e) {
		bpf_map_delete_elem(&bg_ct, vk);
		return -1;
	}
	e->ext.backend_id = backend;
	nat_count(BG_NAT_STAT_FLOWS);
	if (backend)
		lb_count(backend);
	return 0;
}

/* SNAT: a source port for the flow whose translated tuple (vk, source = the NAT address) is free. */
static __always_inline int snat_port(struct bg_ct_key *vk, const struct bg_nat_target *t, __u16 sport, __u64 now)
{
	__u32 lo = t->port, hi = t->port_hi, n, start;
	struct bg_ct_value *e;

	if (!lo && !hi) {
		lo = 1024;
		hi = 65535;
		start = sport >= lo ? sport - lo : 0; /* keep the port when it is free */
	} else {
		if (hi < lo)
			return -1;
		start = sport >= lo && sport <= hi ? sport - lo : flow_hash(vk, 0);
	}
	n = hi - lo + 1;
	for (int i = 0; i < BG_NAT_PORT_TRIES; i++) {
		/* first the preferred port, then spread over the range */
		__u32 off = i == 0 ? start : start + (flow_hash(vk, i) | 1);

		vk->sport = lo + off % n;
		e = bpf_map_lookup_elem(&bg_ct, vk);
		if (!e || !nat_live(e, now))
			return 0;
		nat_count(BG_NAT_STAT_PORT_COLLISION);
	}
	return -1;
}

/* ---- the hooks ------------------------------------------------------------------------------------- */

static __always_inline int fill_xlate(struct xlate *x, const struct bg_pkt *p, const struct bg_ct_key *ck,
				      int src, const __u8 *to, __u16 to_port)
{
	x->l3_off = p->l3 - p->data;
	x->l4_off = p->l4 - p->data;
	x->family = p->family;
	x->proto = p->proto;
	x->src = src;
	x->old_port = src ? ck->sport : ck->dport;
	x->new_port = to_port;
	__builtin_memcpy(x->old_addr, src ? ck->src : ck->dst, 16);
	__builtin_memcpy(x->new_addr, to, 16);
	return 0;
}

static __always_inline int translate(struct __sk_buff *skb, struct xlate *x, int egress)
{
	if (rewrite(skb, x)) {
		nat_count(BG_NAT_STAT_REWRITE_FAIL);
		return TC_ACT_SHOT;
	}
	nat_count(egress ? BG_NAT_STAT_XLATE_OUT : BG_NAT_STAT_XLATE_IN);
	return TC_ACT_UNSPEC;
}

static __always_inline int nat(struct __sk_buff *skb, int egress)
{
	struct bg_pkt p = {};
	struct bg_ct_key ck = {}, rk = {};
	struct bg_ct_value *e;
	struct bg_ct_size sz;
	struct bg_nat_target *t;
	struct xlate x = {};
	__u64 now;
	__u8 side = egress ? BG_NAT_SRC : BG_NAT_DST;

	bg_parse_skb(skb, &p);
	if (!(p.have & BG_PKT_PROTO) || !p.l4 || !p.l3)
		return TC_ACT_UNSPEC;
	if (p.have & BG_PKT_ICMP)
		return icmp_error(skb, &p, egress);
	if ((p.proto != BG_IPPROTO_TCP && p.proto != BG_IPPROTO_UDP) || !(p.have & BG_PKT_PORTS) ||
	    bg_pkt_l4_hdr_len(&p) < 0 || !bg_ct_key_of(&p, &ck))
		return TC_ACT_UNSPEC;
	now = bpf_ktime_get_ns();
	bg_ct_size_skb(skb, &p, &sz);

	/* a packet of a translated flow in its own direction: the original entry */
	e = bpf_map_lookup_elem(&bg_ct, &ck);
	if (e && (e->ext.nat_flags & side) && !(e->ext.nat_flags & BG_NAT_VIEW) && nat_live(e, now)) {
		if (e->ext.backend_id && !bpf_map_lookup_elem(&lb_backends, &e->ext.backend_id)) {
			/* its backend was removed: the flow is chosen again below, like a new one */
			nat_count(BG_NAT_STAT_LB_REPICK);
		} else {
			touch(&ck, e, 0, &sz, p.tcp_flags, now);
			fill_xlate(&x, &p, &ck, !egress ? 0 : 1, e->ext.nat_addr, e->ext.nat_port);
			return translate(skb, &x, egress);
		}
	}
	/* a reply of a translated flow: the view entry under the reversed tuple, translated back */
	bg_ct_reverse(&ck, &rk);
	e = bpf_map_lookup_elem(&bg_ct, &rk);
	if (e && (e->ext.nat_flags & BG_NAT_VIEW) && !(e->ext.nat_flags & side) && nat_live(e, now)) {
		touch(&rk, e, 1, &sz, p.tcp_flags, now);
		/* the reply's other side: DNAT'd flows' replies leave from the backend, SNAT'd ones arrive to the
		 * NAT address */
		fill_xlate(&x, &p, &ck, egress ? 1 : 0, e->ext.nat_addr, e->ext.nat_port);
		return translate(skb, &x, egress);
	}

	/* rules: ingress by destination, egress by source (1:1), then stateful SNAT by source prefix */
	if (egress)
		t = rule_of(&nat_out_src, ck.family, ck.proto, ck.src, ck.sport);
	else
		t = rule_of(&nat_in_dst, ck.family, ck.proto, ck.dst, ck.dport);
	if (t && (t->flags & BG_NATR_STATELESS)) {
		fill_xlate(&x, &p, &ck, egress, t->addr, t->port);
		return translate(skb, &x, egress);
	}
	if (egress && !t) {
		struct bg_snat_key sk = {.prefixlen = 8 + 128, .family = ck.family};

		__builtin_memcpy(sk.addr, ck.src, 16);
		t = bpf_map_lookup_elem(&nat_snat, &sk);
	}
	if (!t)
		return TC_ACT_UNSPEC;
	if (p.proto == BG_IPPROTO_TCP && !bg_pkt_is_syn(&p)) {
		nat_count(BG_NAT_STAT_NO_STATE);
		return TC_ACT_UNSPEC;
	}
	{
		struct bg_ct_key vk;
		struct bg_lb_backend *be = 0;
		__u8 to[16];
		__u16 to_port;
		__u32 backend = 0;

		if (t->svc) {
			backend = lb_pick(&ck, t->svc, &be);
			if (!backend || !be) {
				nat_count(BG_NAT_STAT_LB_NO_BACKEND);
				return TC_ACT_UNSPEC;
			}
			__builtin_memcpy(to, be->addr, 16);
			to_port = be->port ? be->port : ck.dport;
		} else {
			__builtin_memcpy(to, t->addr, 16);
			to_port = egress ? ck.sport : (t->port ? t->port : ck.dport);
		}
		if (egress) {
			vk = ck;
			__builtin_memcpy(vk.src, to, 16);
			if (snat_port(&vk, t, ck.sport, now)) {
				nat_count(BG_NAT_STAT_PORT_EXHAUSTED);
				return TC_ACT_SHOT;
			}
			to_port = vk.sport;
		}
		if (new_flow(&ck, &vk, egress, to, to_port, backend, skb->ifindex, egress ? BG_DIR_EGRESS : BG_DIR_INGRESS,
			     now)) {
			nat_count(BG_NAT_STAT_CT_FULL);
			return TC_ACT_UNSPEC;
		}
		e = bpf_map_lookup_elem(&bg_ct, &ck);
		if (e)
			bg_ct_account(e, BG_CT_ORIG, &sz, p.tcp_flags, now);
		fill_xlate(&x, &p, &ck, egress, to, to_port);
		return translate(skb, &x, egress);
	}
}

SEC("tc")
int bg_nat_ingress(struct __sk_buff *skb)
{
	return nat(skb, 0);
}

SEC("tc")
int bg_nat_egress(struct __sk_buff *skb)
{
	return nat(skb, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
