// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Programs the kernel layer uses to check itself (tests, doctor, benchmarks): ring buffer and perf
 * buffer delivery with loss accounting, load-time constants, empty programs for the cost floor.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "bg_common.h"
#include "bg_stats.h"

#define TC_ACT_OK 0

/* load-time constants: set from Python before load */
const volatile __u32 cfg_mark = 0;
const volatile __u32 cfg_verdict = TC_ACT_OK;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} perf_events SEC(".maps");

/* plain maps for map-API tests */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 200000);
	__type(key, struct bg_port_key);
	__type(value, struct bg_counter);
} test_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct bg_counter);
} test_percpu SEC(".maps");

static __u64 seq;

BG_EXPORT_TYPE(struct bg_test_event, test_event);

SEC("tc")
int bg_selftest_ringbuf(struct __sk_buff *skb)
{
	struct bg_test_event *ev;

	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		stat_inc(BG_STAT_EVENTS_LOST);
		return cfg_verdict;
	}
	ev->hdr.type = BG_EV_TEST;
	ev->hdr.len = sizeof(*ev);
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->seq = __sync_fetch_and_add(&seq, 1);
	ev->pkt_len = skb->len;
	ev->mark = cfg_mark;
	bpf_ringbuf_submit(ev, 0);
	stat_inc(BG_STAT_EVENTS);
	return cfg_verdict;
}

SEC("tc")
int bg_selftest_perf(struct __sk_buff *skb)
{
	struct bg_test_event ev = {};

	ev.hdr.type = BG_EV_TEST;
	ev.hdr.len = sizeof(ev);
	ev.hdr.cpu = bpf_get_smp_processor_id();
	ev.hdr.ts_ns = bpf_ktime_get_ns();
	ev.seq = __sync_fetch_and_add(&seq, 1);
	ev.pkt_len = skb->len;
	ev.mark = cfg_mark;
	if (bpf_perf_event_output(skb, &perf_events, BPF_F_CURRENT_CPU, &ev, sizeof(ev)) < 0)
		stat_inc(BG_STAT_EVENTS_LOST);
	else
		stat_inc(BG_STAT_EVENTS);
	return cfg_verdict;
}

/* sets skb->mark from the load-time constant: proves rodata is applied before load */
SEC("tc")
int bg_selftest_mark(struct __sk_buff *skb)
{
	skb->mark = cfg_mark;
	return cfg_verdict;
}

SEC("tc")
int bg_empty_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int bg_empty_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* counts frames of the IEEE local experimental ethertype 0x88B5 only (what the tests send) */
SEC("xdp")
int bg_selftest_xdp_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) <= end && eth->h_proto == bpf_htons(0x88B5))
		stat_inc(BG_STAT_EVENTS);
	return XDP_PASS;
}

/* bounces every frame back out of the interface: the live-frames traffic generator */
SEC("xdp")
int bg_selftest_xdp_tx(struct xdp_md *ctx)
{
	return XDP_TX;
}

/* lets everything through: a cgroup attachment for status listing tests */
SEC("cgroup_skb/ingress")
int bg_selftest_cgskb(struct __sk_buff *skb)
{
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
