/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The flow table: key and value shared by flow accounting (bpf/flows.bpf.c) and, later, the policy
 * engine's conntrack. Python reads both from BTF (bpfgate.inspect.flows); never hand-copy the layout.
 *
 * Key: a canonical 5-tuple as the packet carries it (source -> destination), the same shape for both
 * families so one table holds both and identical tuples hash identically:
 *   - addresses are 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d, RFC 4291 2.5.5.2);
 *   - ports in host byte order; ICMP/ICMPv6: sport = echo identifier (echo request/reply, else 0),
 *     dport = type << 8 | code; other protocols: both 0;
 *   - every byte not set is zero (keys are built from `= {}`), including the explicit padding.
 * A conntrack entry for the reply direction is the same key with the endpoints swapped
 * (bg_flow_key_reverse) and the opposite `dir`.
 */
#ifndef BPFGATE_FLOW_H
#define BPFGATE_FLOW_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

enum bg_dir {
	BG_DIR_INGRESS = 0,
	BG_DIR_EGRESS = 1,
};

struct bg_flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;   /* IPPROTO_* */
	__u8 family;  /* 4 or 6 */
	__u8 dir;     /* enum bg_dir: the hook that saw the packet */
	__u8 pad0;
	__u32 ifindex; /* interface the hook is attached to */
	__u32 zone;    /* reserved for conntrack zones / netns; 0 today */
};

/* Why a flow ended (bg_flow_value.ended, bg_flow_end_event.reason). */
enum bg_flow_end_reason {
	BG_FLOW_END_NONE = 0,
	BG_FLOW_END_FIN = 1,     /* kernel: first FIN seen in this direction */
	BG_FLOW_END_RST = 2,     /* kernel: first RST seen in this direction */
	BG_FLOW_END_IDLE = 3,    /* user space: no packet for the idle timeout, entry deleted */
	BG_FLOW_END_EVICTED = 4, /* user space: the LRU table dropped it (counted, not listed) */
};

/*
 * Counters are updated with atomic adds (one shared entry per flow, so first/last/ended stay exact
 * and a FIN is reported once). bytes are L3 bytes (IP header + payload); a GSO/GRO packet counts as the
 * wire segments it stands for: packets += gso_segs, bytes += len + (gso_segs - 1) * L3+L4 header length.
 */
struct bg_flow_value {
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;  /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 last_ns;
	/* 64-bit: clang's default BPF target (v1/v2) has 64-bit atomic or/fetch-or only */
	__u64 tcp_flags; /* OR of the TCP flag bytes seen (FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 ...) */
	__u64 ended;     /* enum bg_flow_end_reason, set once (atomic) when a flow-end record went out */
};

/* Per-CPU counters of the flows program (array map "flow_stats"). */
enum bg_flow_stat {
	BG_FLOW_STAT_NEW = 0,     /* entries created */
	BG_FLOW_STAT_ENDED,       /* flow-end records submitted by the kernel (FIN/RST) */
	BG_FLOW_STAT_UNPARSED,    /* packets that were not IPv4/IPv6 or were truncated: not accounted */
	BG_FLOW_STAT_CREATE_FAIL, /* bpf_map_update_elem failed for a new flow */
	BG_FLOW_STAT_DELETED,     /* entries user space deleted (written by user space, CPU 0's slot):
	                           * evicted = NEW - live entries - DELETED, for every reader */
	BG_FLOW_STAT_MAX,
};

/* The key of the other direction of the same connection (conntrack reply lookups). */
static inline void bg_flow_key_reverse(const struct bg_flow_key *k, struct bg_flow_key *r)
{
	*r = *k;
	__builtin_memcpy(r->saddr, k->daddr, 16);
	__builtin_memcpy(r->daddr, k->saddr, 16);
	r->sport = k->dport;
	r->dport = k->sport;
	r->dir = k->dir ^ 1;
}

#endif /* BPFGATE_FLOW_H */
