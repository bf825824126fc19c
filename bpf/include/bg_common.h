/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The part of the C <-> Python contract every program family shares: the ring buffer record header and
 * its type ids, the per-CPU event counters, generic counters and keys. Each family's own maps and records
 * are in its header (engine.h, trace.h, syn.h, attempts.h, flows.h, capture.h), which includes this one.
 *
 * Every struct that crosses the boundary (map keys/values, ring buffer records) is defined in these headers
 * and only there. The Python side never hand-writes a layout: it reads these structs from the objects' BTF
 * (bpfgate.kernel.btf), and tests/unit/test_layout.py fails if the names Python relies on drift.
 * Fixed-width types only, explicit padding, no bitfields.
 */
#ifndef BG_COMMON_H
#define BG_COMMON_H

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

/* Nanoseconds from `then` to `now`, 0 when `then` is later: a timestamp another CPU stored after this
 * program read its clock (now - then would wrap to ~2^64 and an entry a packet just touched would look
 * expired, a bucket just drained would look refilled). */
static inline __attribute__((always_inline)) __u64 bg_ns_since(__u64 now, __u64 then)
{
	return now > then ? now - then : 0;
}

/* ---- generic counters and keys ---------------------------------------------------------------- */

struct bg_counter {
	__u64 packets;
	__u64 bytes;
};

/* key of a port set (the test fixture's blocked_ports, attempts' attempt_ports): destination port in host
 * byte order, padded to 4 bytes */
struct bg_port_key {
	__u16 port;
	__u16 pad;
};

/* ---- ring buffer records -------------------------------------------------------------------- */

/* Record type ids (bg_event_hdr.type) of every family, in one place so no two families share one. */
enum bg_event_type {
	BG_EV_TEST = 1,          /* struct bg_test_event: the self-test program (ring buffer delivery checks) */
	BG_EV_SYN_FLOOD = 20,    /* struct bg_syn_flood_event (syn.h) */
	BG_EV_CONN_ATTEMPT = 21, /* struct bg_attempt_event (attempts.h) */
	BG_EV_RULE_LOG = 40,     /* struct bg_rule_log_event (engine.h) */
	BG_EV_FLOW_END = 50,     /* struct bg_flow_end_event (flows.h) */
	BG_EV_CAPTURE = 51,      /* struct bg_capture_event + cap_len packet bytes (capture.h) */
	BG_EV_TCP = 60,          /* struct bg_tcp_event (trace.h) */
	BG_EV_DROP = 61,         /* struct bg_drop_event (trace.h) */
	BG_EV_TUNE = 70,         /* struct bg_tune_event (tune.h) */
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

/* ---- between families -------------------------------------------------------------------------- */

/* A policy engine's TC drop leaves its rule in the skb's cb for the drop tracer (__sk_buff cb[3..4] =
 * qdisc_skb_cb data[12..19]): the packet is freed right after, nothing else reads it. */
#define BG_CB_RULE_MAGIC 0xB96A7E5Eu
#define BG_CB_RULE_WORD 3

#endif /* BG_COMMON_H */
