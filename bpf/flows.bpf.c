// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Flow accounting at TC ingress and egress, in the connection tracker's table (ct_track.h, bg_ct): one
 * entry per connection, packets/bytes/TCP flags per direction, first/last seen. The first FIN or RST of a
 * flow sends one flow-end record (final counters) to the ring buffer; user space expires idle flows and
 * counts LRU evictions (created - deleted - live), so no flow disappears silently.
 *
 * With a policy engine tracking on the same interface, user space loads this program on the engine's
 * bg_ct (reuse_map) and, for each direction the engine side already tracks, sets cfg_track_* to 0: the
 * program then only reads the flow (and reports its end), so each packet is counted once.
 * Transparent: returns TC_ACT_UNSPEC / TCX_NEXT, so the next filter (the gate) still decides.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "flows.h"
#include "parse.h"
#include "ct_track.h"
#include "bg_stats.h"

#define TC_ACT_UNSPEC (-1)

/* set before load: 0 when another program (the engine, its tracker) counts this direction in bg_ct */
const volatile __u8 cfg_track_ingress = 1;
const volatile __u8 cfg_track_egress = 1;

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

static __always_inline void flow_end(const struct bg_ct_key *key, struct bg_ct_value *val, __u32 reason)
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

static __always_inline int account(struct __sk_buff *skb, __u8 dir)
{
	struct bg_ct_found f = {};
	struct bg_ct_size sz;
	struct bg_pkt p = {};
	int track = dir == BG_DIR_INGRESS ? cfg_track_ingress : cfg_track_egress;
	__u8 state = 0;

	bg_parse_skb(skb, &p);
	if (p.have & BG_PKT_L3) {
		bg_ct_size_skb(skb, &p, &sz);
		state = bg_ct_packet(&p, &sz, skb->ifindex, dir, !track, 1, &f);
	}
	if (!state) {
		percpu_inc(&flow_stats, BG_FLOW_STAT_UNPARSED);
		return TC_ACT_UNSPEC;
	}
	if (f.created > 0)
		percpu_inc(&flow_stats, BG_FLOW_STAT_NEW);
	else if (f.created < 0)
		percpu_inc(&flow_stats, BG_FLOW_STAT_CREATE_FAIL);
	if (f.e && p.proto == BG_IPPROTO_TCP && (p.tcp_flags & (BG_TCP_FIN | BG_TCP_RST)) && !f.e->ended)
		flow_end(&f.key, f.e, p.tcp_flags & BG_TCP_RST ? BG_FLOW_END_RST : BG_FLOW_END_FIN);
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
