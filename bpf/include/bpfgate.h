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

/* ---- ports (the test fixture bpf/dropper.bpf.c, selftest maps) --------------------------------- */

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
	__u8 pad;
	__u32 engine_rule; /* TC drop by a policy engine: its rule id + 1 (from the skb's cb), 0: none */
};

/* A policy engine's TC drop leaves its rule in the skb's cb for the drop tracer (__sk_buff cb[3..4] =
 * qdisc_skb_cb data[12..19]): the packet is freed right after, nothing else reads it. */
#define BG_CB_RULE_MAGIC 0xB96A7E5Eu
#define BG_CB_RULE_WORD 3

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

/* ---- policy engine (issue 4: bpf/engine.bpf.c, bpf/include/parse.h, bpfgate.engine) ---------- */
/* docs/policy-engine.md section 5; Python packs these in bpfgate.policy.layout (checked against BTF). */

#ifndef __VMLINUX_H__
#include <linux/bpf.h> /* struct bpf_spin_lock for host compilers */
#endif

#define BG_MAX_SHAPES 32

enum bg_have { BG_HAVE_L3 = 0x01, BG_HAVE_PROTO = 0x02, BG_HAVE_PORTS = 0x04, BG_HAVE_TCPFLAGS = 0x08,
	       BG_HAVE_ICMP = 0x10, BG_HAVE_VLAN = 0x20, BG_HAVE_CT = 0x40 };
enum bg_ct_state { BG_CT_NEW = 1, BG_CT_ESTABLISHED = 2, BG_CT_RELATED = 3, BG_CT_INVALID = 4 };
enum bg_action { BG_ACT_PASS = 1, BG_ACT_DROP = 2, BG_ACT_REDIRECT = 3 };
enum bg_rule_flags { BG_RF_COUNT = 0x01, BG_RF_LOG = 0x02, BG_RF_MARK = 0x04, BG_RF_RATE = 0x08,
		     BG_RF_RATE_BYTES = 0x10, BG_RF_RATE_PER_SRC = 0x20, BG_RF_REDIR_INGRESS = 0x40 };

struct bg_cls_key {      /* 56 bytes = 7 x u64: key of bg_cls, also the packet key and a shape's mask */
	__u8 shape;      /* shape id (0 in packet key and masks) */
	__u8 gen;        /* generation of the entries (0 in packet key and masks) */
	__u8 have;       /* BG_HAVE_* */
	__u8 family;     /* 0, 4 or 6 */
	__u8 proto;
	__u8 tcp_flags;  /* FIN 0x01 .. CWR 0x80 */
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 ct_state;   /* enum bg_ct_state */
	__u8 pad0;
	__u16 vlan;      /* outer VLAN id, host order */
	__u16 sport;     /* host order */
	__u16 dport;
	__u8 src[16];    /* network order; IPv4 in src[0..3] */
	__u8 dst[16];
	__u32 src_cls;   /* prefix class of src (stage 0, bg_pfx_*), 0: in no class prefix */
	__u32 dst_cls;
};

struct bg_cls_val {
	__u32 prio;      /* lower wins */
	__u32 rule_id;   /* index into bg_rules / bg_counters */
};

struct bg_rule {         /* bg_rules[rule_id] */
	__u8 action;     /* enum bg_action */
	__u8 over_action;/* action over the rate limit */
	__u16 flags;     /* enum bg_rule_flags */
	__u32 redirect_ifindex;
	__u32 mark;
	__u32 log_rate;  /* log events per second */
	__u64 rate;      /* tokens per second (packets, or bytes with BG_RF_RATE_BYTES) */
	__u64 burst;     /* bucket depth in tokens */
};

/* Stage 0: address -> prefix class (docs/policy-engine.md section 3). One tree per field and family; each
 * generation slot (gen & 1) has its own. Level 0 is an array indexed by the address's top 16 bits: the
 * class of the longest prefix <= /16, and which longer lengths to probe (bg_pfx, longest first) when the
 * address's 1/32 sub-range (bits 16..20) holds any longer prefix. */
enum bg_tree { BG_TREE_SRC4 = 0, BG_TREE_SRC6 = 1, BG_TREE_DST4 = 2, BG_TREE_DST6 = 3 };
#define BG_PFX_LENS 7
#define BG_PFX_TOP_BITS 16

struct bg_pfx_top {      /* 16 bytes; bg_pfx_top[((gen & 1) * 4 + tree) << 16 | top 16 bits] */
	__u32 cls;       /* longest prefix <= /16 holding the bucket, 0: none */
	__u32 sub;       /* bit (addr >> (W - 21)) & 31: that sub-range holds a longer prefix */
	__u8 nlens;      /* lens[0..nlens) to probe */
	__u8 lens[BG_PFX_LENS]; /* descending */
};

struct bg_pfx_key {      /* key of bg_pfx: the address masked to len */
	__u8 addr[16];   /* network order; IPv4 in addr[0..3] */
	__u8 gen;
	__u8 tree;       /* enum bg_tree */
	__u8 len;
	__u8 pad[5];
};

struct bg_shape {
	struct bg_cls_key mask;
	__u32 best_prio; /* early-stop bound */
	__u8 id;
	__u8 pad[3];
	__u32 entries;
	__u32 pad2;
};

struct bg_conf {         /* bg_conf[2], double-buffered; bg_active[0] names the live slot */
	__u32 nshapes;
	__u32 default_rule;
	__u8 gen;
	__u8 trees;      /* 1 << BG_TREE_*: the prefix-class trees this generation uses (0: no stage 0) */
	__u8 pad[6];
	struct bg_shape shapes[BG_MAX_SHAPES];
};

/* token bucket (bg_rate_rule[rule_id], bg_rate_src[key]); credit in token-nanoseconds (tokens * 1e9) */
struct bg_bucket {
	__u64 credit;
	__u64 last_ns;   /* 0: fresh (full bucket) */
	struct bpf_spin_lock lock;
	__u32 pad;
};

struct bg_rate_src_key {
	__u32 rule_id;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct bg_log_bucket {   /* per-CPU bg_log_rate[rule_id] */
	__u64 credit;
	__u64 last_ns;
};

/* conntrack (bg_ct, LRU hash shared by the hooks of one interface): key in the originator's direction */
struct bg_ct_key {
	__u8 family;
	__u8 proto;
	__u16 sport;     /* host order; ICMP echo: the identifier in both */
	__u16 dport;
	__u16 pad;
	__u8 src[16];
	__u8 dst[16];
};

#define BG_CTF_REPLY 0x01 /* a packet of the reply direction was seen */

struct bg_ct_entry {
	__u64 first_ns;
	__u64 last_ns;   /* expiry: last_ns + timeout (engine rodata) */
	__u64 packets_orig;
	__u64 bytes_orig;
	__u64 packets_reply;
	__u64 bytes_reply;
	__u32 flags;     /* BG_CTF_* */
	__u8 tcp_flags_seen; /* OR of the TCP flags seen (both directions) */
	__u8 pad[3];
};

enum bg_engine_event_type { BG_EV_RULE_LOG = 40 }; /* struct bg_rule_log_event */

enum bg_engine_hook { BG_ENGINE_TC_INGRESS = 1, BG_ENGINE_TC_EGRESS = 2, BG_ENGINE_XDP = 3 };

struct bg_rule_log_event {
	struct bg_event_hdr hdr;
	__u32 rule_id;
	__u32 ifindex;
	__u32 pkt_len;
	__u8 action;     /* what was done (enum bg_action) */
	__u8 hook;       /* enum bg_engine_hook */
	__u8 family;
	__u8 proto;
	__u16 sport;
	__u16 dport;
	__u8 ct_state;
	__u8 tcp_flags;
	__u8 pad[2];
	__u8 src[16];
	__u8 dst[16];
};

/* ---- end policy engine ---- */

#endif /* BPFGATE_H */
