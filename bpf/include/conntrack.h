/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The connection tracker every family reads and extends: one key, one value, one table (map bg_ct).
 * The policy engine matches on its state (`ct:` rules) and keeps it (engine.bpf.c); flow accounting
 * (flows.bpf.c, `bpfgate flows` / `top`) counts per flow and per direction in the same entries. Python
 * reads both structs from the objects' BTF (bpfgate.engine.records). docs/conntrack.md says who tracks
 * where, so that each packet is counted once, and what NAT, load balancing and steering will keep here.
 *
 * Key: the flow in its originator's direction (the first packet's source -> destination); a packet of
 * the other direction finds it under the reversed key. ICMP echo request/reply: both ports are the echo
 * identifier; other ICMP: tracked per address pair (ports 0). A non-first fragment, or a TCP/UDP/SCTP/ICMP
 * packet cut short before its ports, is not tracked (no L4 header to tell its flow).
 */
#ifndef BG_CONNTRACK_H
#define BG_CONNTRACK_H

#include "bg_common.h"

struct bg_ct_key {
	__u8 family;     /* 4 or 6 */
	__u8 proto;
	__u16 sport;     /* host order; ICMP echo: the identifier in both */
	__u16 dport;
	__u16 pad;
	__u8 src[16];    /* network order; IPv4 in src[0..3], the rest zero */
	__u8 dst[16];
};

/* The hook a program runs at (bg_ct_value.created_dir, capture records). */
enum bg_dir {
	BG_DIR_INGRESS = 0,
	BG_DIR_EGRESS = 1,
};

/* What the tracker says of a packet (the engine's `ct:` match; bg_cls_key.ct_state). */
enum bg_ct_state { BG_CT_NEW = 1, BG_CT_ESTABLISHED = 2, BG_CT_RELATED = 3, BG_CT_INVALID = 4 };

enum bg_ct_dir_index { BG_CT_ORIG = 0, BG_CT_REPLY = 1 };

enum bg_ct_flags {
	BG_CTF_REPLY = 0x01,     /* a packet of the reply direction was seen: established */
	BG_CTF_MIDSTREAM = 0x02, /* created by flow accounting from a TCP packet that is not an opening SYN
	                          * (a connection older than the accounting): counted, never a state the
	                          * engine's `ct:` rules trust */
};

/* Why a flow ended (bg_ct_value.ended, bg_flow_end_event.reason). */
enum bg_flow_end_reason {
	BG_FLOW_END_NONE = 0,
	BG_FLOW_END_FIN = 1,     /* kernel: first FIN seen */
	BG_FLOW_END_RST = 2,     /* kernel: first RST seen */
	BG_FLOW_END_IDLE = 3,    /* user space: no packet for the idle timeout, entry deleted */
	BG_FLOW_END_EVICTED = 4, /* user space: the LRU table dropped it (counted, not listed) */
};

/*
 * Room for the families to come, zero until they exist. A family that starts storing here documents its
 * fields in docs/conntrack.md; the struct's size does not change (entries of a live table keep their size).
 */
struct bg_ct_ext {
	__u8 nat_addr[16];  /* NAT: the address the rewritten side is translated to */
	__u16 nat_port;     /* NAT: the translated port, host order */
	__u8 nat_flags;     /* NAT: which side is rewritten (source / destination), 0: no translation */
	__u8 pad0;
	__u32 backend_id;   /* load balancing: the backend chosen for the flow (kept for its lifetime) */
	__u32 in_ifindex;   /* egress steering: the interface the flow came in on (replies go back out there) */
	__u8 peer_mac[6];   /* egress steering: the L2 peer it came from (the replies' next hop) */
	__u8 pad1[6];
};

struct bg_ct_value {
	__u64 first_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 last_ns;           /* expiry: last_ns + the timeout of its state (the tracker's rodata) */
	/* per direction (enum bg_ct_dir_index); atomic adds. L3 bytes (IP header + payload); a GSO/GRO packet
	 * counts as the segments it stands for (bytes += (segs - 1) * the IP + L4 header length) */
	__u64 packets[2];
	__u64 bytes[2];
	__u64 ended;             /* enum bg_flow_end_reason, set once (atomic) when the flow-end record went out */
	__u32 flags;             /* enum bg_ct_flags */
	__u32 ifindex;           /* interface of the hook that created the entry */
	__u8 tcp_flags[2];       /* OR of the TCP flags seen, per direction */
	__u8 created_dir;        /* enum bg_dir of the hook that created it (ingress: the peer opened the flow) */
	__u8 pad[5];
	struct bg_ct_ext ext;    /* reserved: NAT, load balancing, steering */
};

#endif /* BG_CONNTRACK_H */
