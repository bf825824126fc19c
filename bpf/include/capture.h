/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Packet capture (capture.bpf.c, and the policy engine's capture with the verdict; bpfgate.inspect.capture):
 * the captured-packet record both write and the engine's capture switch.
 */
#ifndef BG_CAPTURE_H
#define BG_CAPTURE_H

#include "bg_common.h"
#include "conntrack.h" /* enum bg_dir */

/* Where a captured packet was seen (bg_capture_event.hook). */
enum bg_capture_hook {
	BG_HOOK_TC = 1,   /* capture program at clsact/TCX: before the gate, no verdict yet */
	BG_HOOK_XDP = 2,
	BG_HOOK_GATE = 3, /* emitted by the policy engine itself, after its decision */
};

/* Verdict of a captured packet (bg_capture_event.verdict). */
enum bg_capture_verdict {
	BG_VERDICT_UNKNOWN = 0, /* seen before any decision */
	BG_VERDICT_PASS = 1,
	BG_VERDICT_DROP = 2,
	BG_VERDICT_REDIRECT = 3,
};

/*
 * One captured packet: this header, then cap_len bytes of the packet from its Ethernet header.
 * hdr.len = sizeof(struct bg_capture_event) + cap_len. The policy engine emits captured packets with
 * their verdict by writing this same record (hook BG_HOOK_GATE, verdict, rule_id) into its own ring
 * buffer bg_capture_ring, which bpfgate.inspect.capture reads.
 */
enum bg_capture_limits {
	BG_CAPTURE_MAX = 65535,        /* largest snaplen: an skb (GSO included) is at most 64 KiB */
	BG_ENGINE_CAPTURE_MAX = 65535, /* the same for the engine's capture with the verdict */
	BG_CAPTURE_EXPR_MAX = 48,      /* terms of a filter expression (operators included) */
};

struct bg_capture_event {
	struct bg_event_hdr hdr;
	__u32 ifindex;
	__u32 pkt_len;  /* skb->len: the packet's length before truncation */
	__u32 cap_len;  /* bytes that follow */
	__u32 rule_id;  /* policy rule that decided (BG_HOOK_GATE), 0: none */
	__u8 dir;       /* enum bg_dir */
	__u8 hook;      /* enum bg_capture_hook */
	__u8 verdict;   /* enum bg_capture_verdict */
	__u8 pad[5];
	__u8 data[];
};

/* The policy engine's capture switch (its map bg_capture_cfg[0]): off unless bpfgate.inspect.capture's
 * EngineCapture enables it; off, it costs one array lookup a packet. */
struct bg_capture_cfg {
	__u32 enabled;
	__u32 snaplen;        /* 1..BG_ENGINE_CAPTURE_MAX */
	__u32 rule_id_plus_1; /* only packets this rule decided (rule id + 1), 0: every packet */
	__u32 lost;           /* records that found no room in bg_capture_ring */
	__u32 owner_pid;      /* the capturing process (user space only: a stale capture is taken over) */
};

/* Which end of the packet a capture filter's port or address must be (capture.bpf.c cfg_*_side). */
enum bg_capture_side {
	BG_SIDE_ANY = 0, /* source or destination */
	BG_SIDE_SRC = 1,
	BG_SIDE_DST = 2,
	BG_SIDE_BOTH = 3, /* source and destination (tcpdump's `src and dst`) */
};

/*
 * capture's filter expression (`bpfgate capture EXPRESSION`, a tcpdump subset compiled by
 * bpfgate.inspect.capture_expr), in postfix: a term is a test (pushes true/false) or an operator on the
 * results before it. Set before load: the verifier follows only the terms given.
 */
enum bg_capture_op {
	BG_CF_FAMILY = 1, /* IPv4 (family 4) or IPv6 (6) */
	BG_CF_PROTO = 2,  /* IP protocol `proto`, of family `family` when not 0 */
	BG_CF_ADDR = 3,   /* address in addr/mask (16 bytes, IPv4-mapped), on `side`; arp: ARP/RARP's too */
	BG_CF_PORT = 4,   /* port in lo..hi on `side`, of TCP/UDP/SCTP (proto 0) or of `proto` only */
	BG_CF_AND = 5,
	BG_CF_OR = 6,
	BG_CF_NOT = 7,
};

struct bg_capture_term {
	__u8 op;     /* enum bg_capture_op */
	__u8 side;   /* enum bg_capture_side */
	__u8 family; /* 4, 6; 0: either */
	__u8 proto;
	__u16 lo, hi;
	__u8 arp;    /* BG_CF_ADDR: ARP and RARP sender (src) / target (dst) addresses match too (tcpdump's host) */
	__u8 pad[3];
	__u32 addr[4];
	__u32 mask[4];
};

/* Python reads these from BTF (bpfgate.contract): every object built with this header carries them. */
BG_EXPORT_TYPE(enum bg_capture_hook, capture_hook);
BG_EXPORT_TYPE(enum bg_capture_verdict, capture_verdict);
BG_EXPORT_TYPE(enum bg_capture_limits, capture_limits);
BG_EXPORT_TYPE(enum bg_capture_side, capture_side);
BG_EXPORT_TYPE(enum bg_dir, capture_dir);
BG_EXPORT_TYPE(enum bg_capture_op, capture_op);
BG_EXPORT_TYPE(struct bg_capture_term, capture_term);
BG_EXPORT_TYPE(struct bg_capture_event, capture_event);
BG_EXPORT_TYPE(struct bg_capture_cfg, capture_cfg);

#endif /* BG_CAPTURE_H */
