/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The contract between the BPF programs and Python.
 *
 * Every struct that crosses the boundary (map keys/values, ring buffer records) is defined here and
 * only here. The Python side never hand-writes a layout: it reads these structs from the objects' BTF
 * (bpfgate.kernel.btf), and tests/unit/test_layout.py fails if the names Python relies on drift.
 * Fixed-width types only, explicit padding, no bitfields.
 */
#ifndef BPFGATE_H
#define BPFGATE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Every bpfgate program name starts with this, so `status` can tell ours from others'. */
#define BG_PROG_PREFIX "bg_"

/*
 * Keep a record type in the object's BTF even when the program only uses it through a pointer the
 * compiler optimises away (ring buffer records): Python reads layouts from BTF.
 */
#define BG_EXPORT_TYPE(T, tag) const T *__bg_btf_##tag __attribute__((unused))

/* ---- generic counters ---------------------------------------------------------------------- */

struct bg_counter {
	__u64 packets;
	__u64 bytes;
};

/* ---- drop-port gate (foundation slice; grows into the policy engine) ------------------------ */

/* key of the blocked_ports hash: destination port in host byte order, padded to 4 bytes */
struct bg_port_key {
	__u16 port;
	__u16 pad;
};

/* ---- ring buffer records -------------------------------------------------------------------- */

enum bg_event_type {
	BG_EV_TEST = 1, /* emitted by the self-test program (ring buffer delivery checks) */
};

/* Common header of every ring buffer record: the Python side dispatches on type. */
struct bg_event_hdr {
	__u16 type;
	__u16 len; /* whole record length in bytes */
	__u32 cpu;
	__u64 ts_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};

struct bg_test_event {
	struct bg_event_hdr hdr;
	__u64 seq;
	__u32 pkt_len;
	__u32 mark;
};

/* Index of the per-CPU counters every program that emits events keeps (array map "bg_stats"). */
enum bg_stat {
	BG_STAT_EVENTS = 0,     /* records submitted */
	BG_STAT_EVENTS_LOST,    /* bpf_ringbuf_reserve failed: the consumer fell behind */
	BG_STAT_MAX,
};

/* ---- tcp tracing (issue 6: bpf/trace_tcp.bpf.c, bpf/trace_drops.bpf.c, bpfgate.trace) --------- */

/* Record types of the tcp tracing ring buffers (hdr.type); values kept apart from other sections'. */
enum bg_trace_event_type {
	BG_EV_TCP = 60,  /* struct bg_tcp_event */
	BG_EV_DROP = 61, /* struct bg_drop_event */
};

/* What a bg_tcp_event reports (bg_tcp_event.kind). */
enum bg_tcp_kind {
	BG_TCP_CONNECT = 1,  /* active open established (SYN_SENT -> ESTABLISHED) */
	BG_TCP_ACCEPT,       /* passive open established (SYN_RECV -> ESTABLISHED) */
	BG_TCP_CLOSE,        /* an established connection ended (-> CLOSE): duration, bytes */
	BG_TCP_CONNECT_FAIL, /* SYN_SENT -> CLOSE: `error` is the socket's errno (refused/timed out/unreachable) */
	BG_TCP_RETRANSMIT,   /* tcp:tcp_retransmit_skb */
	BG_TCP_RESET_RX,     /* tcp:tcp_receive_reset */
	BG_TCP_RESET_TX,     /* tcp:tcp_send_reset (`error` holds enum sk_rst_reason) */
};

/* Owner of a socket, captured in process context and carried with the socket (hash keyed by sk). */
struct bg_sock_owner {
	__u64 start_ns; /* first state change seen (SYN_SENT / SYN_RECV) */
	__u64 cgroup_id;
	__u32 pid;      /* tgid; 0: not known (socket made before tracing began, no process-context event) */
	__u32 flags;    /* BG_OWNER_* */
	char comm[16];
};

#define BG_OWNER_ACTIVE 1  /* we saw connect() */
#define BG_OWNER_PASSIVE 2 /* child of a listener */
#define BG_OWNER_CLOSER 4  /* owner taken at close()/shutdown() (the fd holder then) */

/* key of the listener map: who called listen() on (netns, port) */
struct bg_listen_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

struct bg_tcp_event {
	struct bg_event_hdr hdr;
	__u64 sk;          /* kernel socket address: identifies the flow across events */
	__u64 duration_ns; /* close / connect_fail: since the first state change */
	__u64 bytes_sent;  /* close: bytes acked by the peer (tcp_sock.bytes_acked) */
	__u64 bytes_received;
	__u64 cgroup_id;
	__u8 saddr[16];    /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u32 pid;         /* owner (0: unknown) */
	__u32 netns;       /* network namespace inode */
	__u32 error;       /* connect_fail: sk_err; reset_tx: sk_rst_reason */
	__u16 sport;       /* host byte order; the local end */
	__u16 dport;
	__u16 family;      /* AF_INET / AF_INET6 */
	__u8 kind;         /* enum bg_tcp_kind */
	__u8 old_state;
	__u8 new_state;
	__u8 owner_flags;  /* BG_OWNER_* */
	__u8 pad[2];
	char comm[16];
};

struct bg_drop_event {
	struct bg_event_hdr hdr;
	__u64 location;    /* kernel address of the caller that dropped */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 reason;      /* enum skb_drop_reason (names from the kernel's BTF at run time) */
	__u32 ifindex;
	__u32 netns;
	__u32 pid;         /* owner of the skb's socket when trace tcp knows it, else 0 */
	__u32 len;
	__u16 sport;
	__u16 dport;
	__u16 family;      /* AF_INET / AF_INET6, 0: not IP */
	__u8 protocol;
	__u8 pad[5];
};

/* ---- inspection: events, syn, attempts (issue 5 part A: bpf/syn.bpf.c, bpf/attempts.bpf.c) ---- */

enum bg_inspect_event_type {
	BG_EV_SYN_FLOOD = 20,    /* struct bg_syn_flood_event */
	BG_EV_CONN_ATTEMPT = 21, /* struct bg_attempt_event */
};

/* a source address: IPv4 in the first 4 bytes of addr, the rest zero */
struct bg_src_key {
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16];
};

/* syn_config[0]: flood detection, editable live */
struct bg_syn_config {
	__u64 rate;     /* SYNs per second from one source that count as a flood; 0: detection off */
	__u64 block_ns; /* drop a flooding source for this long at XDP; 0: report only */
};

/* syn_totals (per-CPU hash, key: ifindex) */
struct bg_syn_total {
	__u64 syns;    /* SYN without ACK */
	__u64 blocked; /* of those, dropped because the source was on syn_blocklist */
};

/* syn_sources (LRU hash): per interface and source */
struct bg_syn_src_key {
	__u32 ifindex;
	struct bg_src_key src;
};

struct bg_syn_src {
	__u64 syns;            /* atomic: exact */
	__u64 last_ns;         /* CLOCK_MONOTONIC of the last SYN */
	__u64 window_start_ns; /* one-second window of the flood detector (approximate across CPUs) */
	__u64 window_syns;
	__u64 reported;        /* window_start_ns of the last window that raised an event */
};

/* syn_blocklist: key struct bg_src_key, value: CLOCK_MONOTONIC ns the block expires (checked per packet) */

struct bg_syn_flood_event {
	struct bg_event_hdr hdr;
	__u32 ifindex;
	struct bg_src_key src; /* ends at offset 40: the u64s below need no padding */
	__u64 window_syns;    /* SYNs from the source in the current one-second window */
	__u64 rate;           /* the configured limit */
	__u64 block_until_ns; /* CLOCK_MONOTONIC; 0: not blocked */
};

/* attempt_ports: key struct bg_port_key (port 0: every port), value __u32 (unused, 1) */
struct bg_attempt_key {
	__u32 ifindex;
	__u16 port;
	__u16 pad;
};

struct bg_attempt_event {
	struct bg_event_hdr hdr;
	__u32 ifindex;
	__u8 family;
	__u8 tcp_flags;
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u32 pkt_len;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* ---- end inspection ---- */

/* ---- inspection: flows, capture (issue 5 part B: bpf/flows.bpf.c, bpf/capture.bpf.c) ---------- */

#include "flow.h" /* the flow table key/value (shared with conntrack) */

/* Record types of the flows and capture ring buffers (hdr.type); values kept apart from other sections'. */
enum bg_flow_event_type {
	BG_EV_FLOW_END = 50, /* struct bg_flow_end_event */
	BG_EV_CAPTURE = 51,  /* struct bg_capture_event + cap_len packet bytes */
};

/* A flow reported once when it ends (FIN/RST in the kernel), with its counters at that moment. */
struct bg_flow_end_event {
	struct bg_event_hdr hdr;
	struct bg_flow_key key;
	struct bg_flow_value val;
};

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
 * their verdict by writing this same record (hook BG_HOOK_GATE, verdict, rule_id) into the capture
 * ring buffer it shares with bpfgate.inspect.capture (reuse_map on the pinned "capture_events").
 */
#define BG_CAPTURE_MAX 65535 /* largest snaplen: an skb (GSO included) is at most 64 KiB */

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

#endif /* BPFGATE_H */
