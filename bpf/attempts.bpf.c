// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Connection-attempt log at TC ingress: every SYN (without ACK) to a port in attempt_ports becomes a
 * bg_attempt_event on the ring buffer and a count in attempt_counts (exact even when events are lost).
 * The port set is a map, edited live from Python; port 0 in it means every port. Never drops.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "attempts.h"
#include "parse.h"
#include "bg_emit.h"

#define TC_ACT_UNSPEC (-1) /* observer: TCX_NEXT / next classic filter, so a gate after us still decides */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct bg_port_key);
	__type(value, __u32);
} attempt_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct bg_attempt_key);
	__type(value, __u64);
} attempt_counts SEC(".maps");

static __always_inline int watched(__u16 port)
{
	struct bg_port_key k = {.port = port};
	struct bg_port_key any = {.port = BG_ATTEMPT_ALL_PORTS};

	return bpf_map_lookup_elem(&attempt_ports, &k) || bpf_map_lookup_elem(&attempt_ports, &any);
}

static __always_inline void count(__u32 ifindex, __u16 port)
{
	struct bg_attempt_key k = {.ifindex = ifindex, .port = port};
	__u64 one = 1, *v = bpf_map_lookup_elem(&attempt_counts, &k);

	if (v) {
		(*v)++; /* per-CPU slot */
		return;
	}
	if (bpf_map_update_elem(&attempt_counts, &k, &one, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(&attempt_counts, &k); /* another CPU created it first */
	if (v)
		(*v)++;
}

SEC("tc")
int bg_attempts_tc(struct __sk_buff *skb)
{
	struct bg_attempt_event ev = {};
	struct bg_pkt p = {};

	bg_parse_skb(skb, &p);
	if (!bg_pkt_is_syn(&p) || !watched(p.dport))
		return TC_ACT_UNSPEC;
	count(skb->ifindex, p.dport);

	ev.hdr.type = BG_EV_CONN_ATTEMPT;
	ev.hdr.len = sizeof(ev);
	ev.hdr.cpu = bpf_get_smp_processor_id();
	ev.hdr.ts_ns = bpf_ktime_get_ns();
	ev.ifindex = skb->ifindex;
	ev.family = p.family;
	ev.tcp_flags = p.tcp_flags;
	ev.sport = p.sport;
	ev.dport = p.dport;
	ev.pkt_len = skb->len;
	bg_pkt_addrs(&p, ev.saddr, ev.daddr);
	emit(skb, &ev, sizeof(ev));
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
