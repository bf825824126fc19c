// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Packets the kernel dropped, from skb:kfree_skb with its drop reason: per-reason counts (always) and
 * per-flow events (ring buffer). Reason names are not compiled in: Python reads enum skb_drop_reason
 * from the running kernel's BTF, so new reasons show by name.
 *
 * `socks` has the same definition as in trace_tcp.bpf.c: when both run, Python shares trace_tcp's map
 * (reuse_map) so a drop on a traced socket carries its owner's PID.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "trace.h"
#include "bg_stats.h"
#include "bg_batched_ring.h"

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

/* set before load: skip per-flow events for SKB_DROP_REASON_NOT_SPECIFIED (still counted) */
const volatile __u32 cfg_skip_reason = 0xffffffff;

/* set before load: only drops in the network namespaces (inode numbers) in `netns_filter` */
const volatile __u32 cfg_netns_filter = 0;

/* drop reason -> packets (hash: subsystem reasons use the high 16 bits) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} reason_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct bg_sock_owner);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} netns_filter SEC(".maps");

static __always_inline void count(__u32 reason)
{
	__u64 one = 1, *v = bpf_map_lookup_elem(&reason_counts, &reason);

	if (v)
		(*v)++;
	else
		bpf_map_update_elem(&reason_counts, &reason, &one, BPF_NOEXIST);
}

static __always_inline void parse_flow(struct bg_drop_event *ev, const struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	void *l4 = 0;

	if (nh == (__u16)~0U)
		return;
	if (proto == ETH_P_IP) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) < 0 || ip.version != 4)
			return;
		ev->family = AF_INET;
		ev->protocol = ip.protocol;
		__builtin_memcpy(ev->saddr, &ip.saddr, 4);
		__builtin_memcpy(ev->daddr, &ip.daddr, 4);
		if (!(ip.frag_off & bpf_htons(0x1fff)))
			l4 = head + nh + ip.ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh) < 0 || ip6.version != 6)
			return;
		ev->family = AF_INET6;
		ev->protocol = ip6.nexthdr; /* extension headers: protocol shown, ports not */
		__builtin_memcpy(ev->saddr, &ip6.saddr, 16);
		__builtin_memcpy(ev->daddr, &ip6.daddr, 16);
		l4 = head + nh + sizeof(ip6);
	}
	if (l4 && (ev->protocol == IPPROTO_TCP || ev->protocol == IPPROTO_UDP)) {
		__be16 ports[2];

		if (bpf_probe_read_kernel(ports, sizeof(ports), l4) == 0) {
			ev->sport = bpf_ntohs(ports[0]);
			ev->dport = bpf_ntohs(ports[1]);
		}
	}
}

static __always_inline void on_drop(const struct sk_buff *skb, void *location, __u32 reason,
				    const struct sock *rx_sk)
{
	struct bg_drop_event *ev;
	struct bg_sock_owner *o;
	__u32 netns = 0;
	__u64 key;

	if (cfg_netns_filter) { /* counts too: they then describe the traced namespaces */
		netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
		if (!bpf_map_lookup_elem(&netns_filter, &netns))
			return;
	}
	count(reason);
	if (reason == cfg_skip_reason)
		return;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		stat_inc(BG_STAT_EVENTS_LOST);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.type = BG_EV_DROP;
	ev->hdr.len = sizeof(*ev);
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->location = (__u64)location;
	ev->reason = reason;
	ev->len = BPF_CORE_READ(skb, len);
	ev->ifindex = BPF_CORE_READ(skb, dev, ifindex);
	ev->netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	parse_flow(ev, skb);
	if (reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_TC_INGRESS) ||
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_TC_EGRESS)) {
		__u32 w[2] = {};
		const void *cb = (const void *)skb + bpf_core_field_offset(struct sk_buff, cb) +
				 bpf_core_field_offset(struct qdisc_skb_cb, data) + 4 * BG_CB_RULE_WORD;

		if (!bpf_probe_read_kernel(w, sizeof(w), cb) && w[0] == BG_CB_RULE_MAGIC)
			ev->engine_rule = w[1];
	}
	key = (__u64)(rx_sk ? rx_sk : BPF_CORE_READ(skb, sk));
	o = key ? bpf_map_lookup_elem(&socks, &key) : 0;
	if (o)
		ev->pid = o->pid;
	bpf_ringbuf_submit(ev, wakeup_flag(sizeof(struct bg_drop_event)));
	stat_inc(BG_STAT_EVENTS);
}

/* rx_sk (the receiving socket: a PID for drops on receive) joined the tracepoint, argument and field
 * together, in Linux 6.11: read only where the kernel has it (the verifier skips the dead branch) */
#define HAS_RX_SK bpf_core_field_exists(struct trace_event_raw_kfree_skb, rx_sk)

SEC("tp_btf/kfree_skb")
int BPF_PROG(bg_drop_btf, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	struct sock *rx_sk = HAS_RX_SK ? (struct sock *)ctx[3] : 0;

	on_drop(skb, location, reason, rx_sk);
	return 0;
}

SEC("tracepoint/skb/kfree_skb")
int bg_drop_tp(struct trace_event_raw_kfree_skb *ctx)
{
	void *rx_sk = HAS_RX_SK ? BPF_CORE_READ(ctx, rx_sk) : 0;

	on_drop(ctx->skbaddr, ctx->location, ctx->reason, rx_sk);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
