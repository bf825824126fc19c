// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Feature probes for `bpfgate doctor`: one tiny program per feature, each in its own SEC. Python loads
 * them one at a time (autoload off for the others, unused maps not created), so a program type the
 * kernel lacks fails alone and never stops the other probes.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "bg_common.h"

#define TC_ACT_OK 0
#define PROBE_MAGIC 0xb9f9a7e5ULL /* what the ring buffer probe writes and Python expects back */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} probe_hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} probe_sockmap SEC(".maps");

/* ---- packet path ---------------------------------------------------------------------------- */

SEC("tc")
int bg_probe_tc(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("xdp")
int bg_probe_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* live frames: dropped, so the probe injects frames without sending anything anywhere */
SEC("xdp")
int bg_probe_xdp_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

/* maps: returns the value Python stored at key 0 (so a test run proves both sides see the map) */
SEC("tc")
int bg_probe_map(struct __sk_buff *skb)
{
	__u32 key = 0, *v = bpf_map_lookup_elem(&probe_hash, &key);

	return v ? *v : -1;
}

SEC("tc")
int bg_probe_ringbuf(struct __sk_buff *skb)
{
	__u64 *rec = bpf_ringbuf_reserve(&probe_events, sizeof(*rec), 0);

	if (!rec)
		return -1;
	*rec = PROBE_MAGIC;
	bpf_ringbuf_submit(rec, 0);
	return TC_ACT_OK;
}

/* ---- tracing: the TCP state tracepoint the tracer uses, reached four ways -------------------- */

SEC("tracepoint/sock/inet_sock_set_state")
int bg_probe_tp(void *ctx)
{
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int bg_probe_tp_btf(void *ctx)
{
	return 0;
}

SEC("raw_tp/inet_sock_set_state")
int bg_probe_raw_tp(void *ctx)
{
	return 0;
}

SEC("kprobe/tcp_v4_connect")
int bg_probe_kprobe(void *ctx)
{
	return 0;
}

SEC("fentry/tcp_v4_connect")
int bg_probe_fentry(void *ctx)
{
	return 0;
}

/* ---- cgroups and sockets -------------------------------------------------------------------- */

SEC("cgroup_skb/egress")
int bg_probe_cgroup_skb(struct __sk_buff *skb)
{
	return 1; /* allow */
}

SEC("sockops")
int bg_probe_sockops(struct bpf_sock_ops *ops)
{
	return 1;
}

SEC("sk_msg")
int bg_probe_sk_msg(struct sk_msg_md *msg)
{
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int bg_probe_sk_skb(struct __sk_buff *skb)
{
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
