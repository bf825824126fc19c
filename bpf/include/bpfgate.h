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

#endif /* BPFGATE_H */
