// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Egress steering (steer.h). At TC ingress of an attached interface: the connection tracker records each
 * new connection with the interface it arrived on and the L2 peer it came from (bg_ct ext). At TC egress:
 *   1. symmetric return: a reply of a connection that arrived on an interface marked BG_STEER_IF_RETURN
 *      leaves by that interface, to that peer's MAC (bpf_redirect after rewriting the Ethernet header);
 *   2. explicit rules: a packet whose source matches a rule leaves by the rule's interface to its next hop
 *      (bpf_redirect_neigh: the neighbour subsystem gives the MAC and keeps it fresh).
 * Before redirecting: the target must still exist (steer_devs), and a route lookup from the target to the
 * next hop (bpf_fib_lookup, output direction) tells the failures apart: next hop not on that link,
 * neighbour unresolved. Each is counted, and the packet passes unchanged: never redirected into nothing.
 * The kernel answers that lookup only for an interface with forwarding on (net.ipv4.conf.DEV.forwarding,
 * net.ipv6.conf.DEV.forwarding); elsewhere the packet goes to bpf_redirect_neigh unchecked, counted as
 * unverified (a neighbour that never resolves is then the kernel's drop, NEIGH_FAILED in `trace drops`).
 * Everything else passes untouched (TC_ACT_UNSPEC / TCX_NEXT): the next program at the hook decides.
 * A packet already leaving by its target interface is left alone (routing chose it; redirecting it to the
 * interface it is on would run this hook again).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "steer.h"
#include "parse.h"
#include "ct_track.h"
#include "bg_percpu.h"

#define TC_ACT_UNSPEC (-1)
#define BG_AF_INET 2
#define BG_AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, BG_STEER_RULES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bg_steer_key);
	__type(value, struct bg_steer_rule);
} steer_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BG_STEER_RULES_MAX);
	__type(key, __u32);
	__type(value, struct bg_steer_rule_stat);
} steer_rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BG_STEER_IFS_MAX);
	__type(key, __u32);
	__type(value, struct bg_steer_if);
} steer_ifs SEC(".maps");

/* the attached interfaces again, as a devmap: the kernel deletes an entry when its device is unregistered,
 * so a lookup tells whether an interface still exists */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, BG_STEER_IFS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} steer_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BG_STEER_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

static __always_inline void steer_count(__u32 idx)
{
	percpu_inc(&steer_stats, idx);
}

static __always_inline void count_rule(__u32 id, int steered)
{
	struct bg_steer_rule_stat *s = bpf_map_lookup_elem(&steer_rule_stats, &id);

	if (!s)
		return;
	if (steered)
		s->steered++;
	else
		s->failed++;
}

/* A failure of rule r: counted (globally and on the rule), the packet passes unchanged. */
static __always_inline int rule_failed(const struct bg_steer_rule *r, __u32 why)
{
	steer_count(why);
	count_rule(r->id, 0);
	return TC_ACT_UNSPEC;
}

/* The lookup's next hop is still r's (a route through a gateway would have replaced it). */
static __always_inline int same_addr(const struct bg_steer_rule *r, const struct bpf_fib_lookup *fib)
{
	__u32 nh[4];

	__builtin_memcpy(nh, r->nexthop, 16);
	if (r->family == 4)
		return nh[0] == fib->ipv4_dst;
	return nh[0] == fib->ipv6_dst[0] && nh[1] == fib->ipv6_dst[1] && nh[2] == fib->ipv6_dst[2] &&
	       nh[3] == fib->ipv6_dst[3];
}

/* What the route lookup from r's interface to r's next hop says: 0 (on link, neighbour resolved),
 * BG_STEER_STAT_NO_NEIGH, or the failure to count. */
static __always_inline __u32 check_nexthop(struct __sk_buff *skb, const struct bg_steer_rule *r)
{
	struct bpf_fib_lookup fib = {};
	long rc;

	fib.ifindex = r->ifindex;
	if (r->family == 4) {
		fib.family = BG_AF_INET;
		__builtin_memcpy(&fib.ipv4_dst, r->nexthop, 4);
	} else {
		fib.family = BG_AF_INET6;
		__builtin_memcpy(fib.ipv6_dst, r->nexthop, 16);
	}
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc < 0)
		return rc == -19 /* ENODEV */ ? BG_STEER_STAT_IF_GONE : BG_STEER_STAT_FIB_ERROR;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* the route found must put the next hop itself on the target link (no gateway in between) */
		if (fib.ifindex != r->ifindex)
			return BG_STEER_STAT_OFF_LINK;
		if (!same_addr(r, &fib))
			return BG_STEER_STAT_OFF_LINK;
		return rc == BPF_FIB_LKUP_RET_SUCCESS ? 0 : BG_STEER_STAT_NO_NEIGH;
	}
	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED)
		return BG_STEER_STAT_UNVERIFIED;
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return BG_STEER_STAT_TOO_BIG;
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED || rc == BPF_FIB_LKUP_RET_UNREACHABLE ||
	    rc == BPF_FIB_LKUP_RET_BLACKHOLE || rc == BPF_FIB_LKUP_RET_PROHIBIT)
		return BG_STEER_STAT_OFF_LINK;
	return BG_STEER_STAT_FIB_ERROR;
}

static __always_inline int redirect_neigh(const struct bg_steer_rule *r)
{
	struct bpf_redir_neigh nh = {};

	if (r->family == 4) {
		nh.nh_family = BG_AF_INET;
		__builtin_memcpy(&nh.ipv4_nh, r->nexthop, 4);
	} else {
		nh.nh_family = BG_AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, r->nexthop, 16);
	}
	return bpf_redirect_neigh(r->ifindex, &nh, sizeof(nh), 0);
}

static __always_inline struct bg_steer_rule *match_rule(const struct bg_pkt *p)
{
	struct bg_steer_key k = {};
	struct bg_steer_rule *r = NULL;

	if (!bg_pkt_addrs(p, k.addr, NULL))
		return NULL;
	k.family = p->family;
	k.prefixlen = 32 + (p->family == 4 ? 32 : 128);
	if (p->have & BG_PKT_PORTS) {
		k.proto = p->proto;
		k.port = p->sport;
		r = bpf_map_lookup_elem(&steer_rules, &k);
	}
	if (!r && (p->have & BG_PKT_PROTO)) {
		k.proto = p->proto;
		k.port = 0;
		r = bpf_map_lookup_elem(&steer_rules, &k);
	}
	if (!r) {
		k.proto = 0;
		k.port = 0;
		r = bpf_map_lookup_elem(&steer_rules, &k);
	}
	return r;
}

static __always_inline int steer_by_rule(struct __sk_buff *skb, struct bg_steer_rule *r)
{
	__u32 why;
	__u64 now;

	if (r->ifindex == skb->ifindex)
		return TC_ACT_UNSPEC;
	if (!bpf_map_lookup_elem(&steer_devs, &r->ifindex))
		return rule_failed(r, BG_STEER_STAT_IF_GONE);
	why = check_nexthop(skb, r);
	if (why == BG_STEER_STAT_NO_NEIGH) {
		/* nothing resolves a neighbour nobody sends to: let one packet per BG_STEER_PROBE_MS through
		 * bpf_redirect_neigh, which queues it and solicits the next hop */
		now = bpf_ktime_get_ns();
		if (bg_ns_since(now, r->probe_ns) < BG_STEER_PROBE_MS * 1000000ULL)
			return rule_failed(r, why);
		r->probe_ns = now;
		steer_count(BG_STEER_STAT_RESOLVING);
		count_rule(r->id, 1);
		return redirect_neigh(r);
	}
	if (why == BG_STEER_STAT_UNVERIFIED)
		steer_count(why);
	else if (why)
		return rule_failed(r, why);
	steer_count(BG_STEER_STAT_STEERED);
	count_rule(r->id, 1);
	return redirect_neigh(r);
}

/* Symmetric return of a reply whose connection arrived on in_ifindex from peer_mac. */
static __always_inline int steer_back(struct __sk_buff *skb, const struct bg_ct_value *e)
{
	__u32 in = e->ext.in_ifindex;
	struct bg_steer_if *ifc;
	__u8 macs[12];

	if (!in || in == skb->ifindex)
		return TC_ACT_UNSPEC;
	ifc = bpf_map_lookup_elem(&steer_ifs, &in);
	if (!ifc || !(ifc->flags & BG_STEER_IF_RETURN))
		return TC_ACT_UNSPEC;
	if (!bpf_map_lookup_elem(&steer_devs, &in)) {
		steer_count(BG_STEER_STAT_IF_GONE);
		return TC_ACT_UNSPEC;
	}
	__builtin_memcpy(macs, e->ext.peer_mac, 6);
	__builtin_memcpy(macs + 6, ifc->mac, 6);
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0)) {
		steer_count(BG_STEER_STAT_FIB_ERROR);
		return TC_ACT_UNSPEC;
	}
	steer_count(BG_STEER_STAT_RETURNED);
	return bpf_redirect(in, 0);
}

SEC("tc")
int bg_steer_egress(struct __sk_buff *skb)
{
	struct bg_ct_found f = {};
	struct bg_steer_rule *r;
	struct bg_ct_size sz;
	struct bg_pkt p = {};
	int rc;

	bg_parse_skb(skb, &p);
	if (!(p.have & BG_PKT_L3))
		return TC_ACT_UNSPEC;
	bg_ct_size_skb(skb, &p, &sz);
	bg_ct_packet(&p, &sz, skb->ifindex, BG_DIR_EGRESS, 0, 0, &f);
	r = match_rule(&p); /* before steer_back: rewriting the packet ends reading it */
	if (f.e && f.dir == BG_CT_REPLY) {
		rc = steer_back(skb, f.e);
		if (rc != TC_ACT_UNSPEC)
			return rc;
	}
	if (!r)
		return TC_ACT_UNSPEC;
	return steer_by_rule(skb, r);
}

SEC("tc")
int bg_steer_ingress(struct __sk_buff *skb)
{
	struct bg_ct_found f = {};
	struct bg_ct_size sz;
	struct bg_pkt p = {};

	bg_parse_skb(skb, &p);
	if (!(p.have & BG_PKT_L3) || p.data + 14 > p.end)
		return TC_ACT_UNSPEC;
	bg_ct_size_skb(skb, &p, &sz);
	bg_ct_packet(&p, &sz, skb->ifindex, BG_DIR_INGRESS, 0, 0, &f);
	if (f.created > 0 && f.e) {
		f.e->ext.in_ifindex = skb->ifindex;
		__builtin_memcpy(f.e->ext.peer_mac, p.data + 6, 6); /* the Ethernet source */
		steer_count(BG_STEER_STAT_TRACKED);
	} else if (f.created < 0) {
		steer_count(BG_STEER_STAT_CT_FULL);
	}
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
