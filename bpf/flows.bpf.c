// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Flow accounting at TC ingress and egress: one LRU hash entry per (5-tuple, interface, direction)
 * with packets, bytes, first/last seen and the TCP flags seen. The first FIN or RST of a flow sends one
 * flow-end record (final counters) to the ring buffer; user space expires idle flows and counts LRU
 * evictions (created - ended - expired - live), so no flow disappears silently.
 * Transparent: returns TC_ACT_UNSPEC / TCX_NEXT, so the next filter (the gate) still decides.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "flows.h"
#include "parse.h"
#include "bg_stats.h"

#define TC_ACT_UNSPEC (-1)

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bg_flow_key);
	__type(value, struct bg_flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} flow_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BG_FLOW_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} flow_stats SEC(".maps");

static __always_inline void flow_end(struct bg_flow_key *key, struct bg_flow_value *val, __u32 reason)
{
	struct bg_flow_end_event *ev;

	/* atomic: of two CPUs seeing a FIN/RST for the same flow, exactly one reports it */
	if (__sync_fetch_and_or(&val->ended, reason) != 0)
		return;
	ev = bpf_ringbuf_reserve(&flow_events, sizeof(*ev), 0);
	if (!ev) {
		percpu_inc(&bg_stats, BG_STAT_EVENTS_LOST);
		return;
	}
	ev->hdr.type = BG_EV_FLOW_END;
	ev->hdr.len = sizeof(*ev);
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.ts_ns = val->last_ns;
	ev->key = *key;
	ev->val = *val;
	ev->val.ended = reason;
	bpf_ringbuf_submit(ev, 0);
	percpu_inc(&bg_stats, BG_STAT_EVENTS);
	percpu_inc(&flow_stats, BG_FLOW_STAT_ENDED);
}

/* The flow key of a parsed packet and its header bytes (IP + L4 header: what each GSO segment repeats);
 * -1 if the packet is not accounted (not IP, protocol unknown, L4 header not whole). */
static __always_inline int flow_key_of(const struct bg_pkt *p, struct bg_flow_key *key, __u32 *hdr_len)
{
	int l4len = 0;

	if (!(p->have & BG_PKT_PROTO))
		return -1;
	if (!p->later_frag) {
		l4len = bg_pkt_l4_hdr_len(p);
		if (l4len < 0)
			return -1;
	}
	key->family = p->family;
	key->proto = p->proto;
	/* IPv4-mapped (flow.h) */
	if (p->family == 4) {
		key->saddr[10] = key->saddr[11] = 0xff;
		key->daddr[10] = key->daddr[11] = 0xff;
		bg_pkt_addrs(p, &key->saddr[12], &key->daddr[12]);
	} else {
		bg_pkt_addrs(p, key->saddr, key->daddr);
	}
	if (p->later_frag) {
		*hdr_len = 0;
		return 0;
	}
	*hdr_len = (p->l4 - p->l3) + l4len;
	if (p->proto == BG_IPPROTO_TCP || p->proto == BG_IPPROTO_UDP) {
		key->sport = p->sport;
		key->dport = p->dport;
	} else if (p->proto == BG_IPPROTO_ICMP || p->proto == BG_IPPROTO_ICMPV6) {
		__u8 t = p->icmp_type;

		key->dport = ((__u16)t << 8) | p->icmp_code;
		/* echo request/reply (v4: 8/0, v6: 128/129): the identifier tells pings apart */
		if (t == 8 || t == 0 || t == 128 || t == 129)
			key->sport = p->icmp_id;
	}
	return 0;
}

static __always_inline int account(struct __sk_buff *skb, __u8 dir)
{
	struct bg_flow_key key = {};
	struct bg_pkt pkt = {};
	struct bg_flow_value *val;
	__u64 now = bpf_ktime_get_ns();
	__u64 segs, bytes;
	__u32 hdr_len;

	bg_parse_skb(skb, &pkt);
	if (flow_key_of(&pkt, &key, &hdr_len) < 0) {
		percpu_inc(&flow_stats, BG_FLOW_STAT_UNPARSED);
		return TC_ACT_UNSPEC;
	}
	key.dir = dir;
	key.ifindex = skb->ifindex;
	/* a GSO/GRO packet stands for gso_segs wire packets, each repeating the headers */
	segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	bytes = skb->len - (pkt.l3 - pkt.data) + (segs - 1) * hdr_len;

	val = bpf_map_lookup_elem(&flows, &key);
	if (!val) {
		struct bg_flow_value fresh = {
			.packets = segs, .bytes = bytes, .first_ns = now, .last_ns = now, .tcp_flags = pkt.tcp_flags,
		};

		if (bpf_map_update_elem(&flows, &key, &fresh, BPF_NOEXIST) == 0) {
			percpu_inc(&flow_stats, BG_FLOW_STAT_NEW);
			if (key.proto == BG_IPPROTO_TCP && (pkt.tcp_flags & (BG_TCP_FIN | BG_TCP_RST))) {
				val = bpf_map_lookup_elem(&flows, &key);
				if (val)
					flow_end(&key, val, pkt.tcp_flags & BG_TCP_RST ? BG_FLOW_END_RST : BG_FLOW_END_FIN);
			}
			return TC_ACT_UNSPEC;
		}
		val = bpf_map_lookup_elem(&flows, &key); /* another CPU created it first */
		if (!val) {
			percpu_inc(&flow_stats, BG_FLOW_STAT_CREATE_FAIL);
			return TC_ACT_UNSPEC;
		}
	}
	__sync_fetch_and_add(&val->packets, segs);
	__sync_fetch_and_add(&val->bytes, bytes);
	val->last_ns = now;
	if (pkt.tcp_flags && (val->tcp_flags | pkt.tcp_flags) != val->tcp_flags)
		__sync_fetch_and_or(&val->tcp_flags, pkt.tcp_flags);
	if (key.proto == BG_IPPROTO_TCP && (pkt.tcp_flags & (BG_TCP_FIN | BG_TCP_RST)) && !val->ended)
		flow_end(&key, val, pkt.tcp_flags & BG_TCP_RST ? BG_FLOW_END_RST : BG_FLOW_END_FIN);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int bg_flow_ingress(struct __sk_buff *skb)
{
	return account(skb, BG_DIR_INGRESS);
}

SEC("tc")
int bg_flow_egress(struct __sk_buff *skb)
{
	return account(skb, BG_DIR_EGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
