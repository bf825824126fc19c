/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * TCP tuning per cgroup (sock_ops): what `bpfgate tune` sets on the TCP sockets of a cgroup's processes.
 * One bg_tune_cfg in the array bg_tune_cfg[0], written by Python before the program is attached.
 */
#ifndef BG_TUNE_H
#define BG_TUNE_H

#include "bg_common.h"

enum bg_tune_limit {
	BG_TUNE_CC_MAX = 16,      /* TCP_CA_NAME_MAX: a congestion control's name with its NUL */
	BG_TUNE_RTT_BUCKETS = 24, /* RTT histogram: bucket i counts smoothed RTTs below 2^i us (the last: the rest) */
};

enum bg_tune_flag {
	BG_TUNE_CC = 0x01,      /* set congestion control cc */
	BG_TUNE_SNDBUF = 0x02,  /* SO_SNDBUF sndbuf (the kernel doubles it, as for setsockopt) */
	BG_TUNE_RCVBUF = 0x04,  /* SO_RCVBUF rcvbuf */
	BG_TUNE_NODELAY = 0x08, /* TCP_NODELAY 1 */
	BG_TUNE_IW = 0x10,      /* initial congestion window iw (segments; TCP_BPF_IW, before any data is sent) */
	BG_TUNE_SAMPLES = 0x20, /* RTT, retransmit and end-of-connection samples: counted, and emitted as events */
};

/* bg_tune_event.kind */
enum bg_tune_sample {
	BG_TUNE_EV_RTT = 1,     /* an RTT sample (at most one per connection per sample_gap_ms) */
	BG_TUNE_EV_RETRANS = 2, /* a retransmission (every one) */
	BG_TUNE_EV_END = 3,     /* the connection closed: its totals */
};

struct bg_tune_cfg {
	__u32 flags;  /* enum bg_tune_flag */
	__u32 sndbuf; /* bytes */
	__u32 rcvbuf;
	__u32 iw;            /* segments */
	__u32 sample_gap_ms; /* RTT events: at most one per connection per this many ms (0: every sample) */
	__u32 pad;
	char cc[BG_TUNE_CC_MAX];
};

/* per-CPU: what was set, and what the kernel refused (bpf_setsockopt < 0) */
struct bg_tune_stats {
	__u64 tuned;  /* sockets */
	__u64 failed; /* bpf_setsockopt calls refused */
	__u64 rtt_samples;
	__u64 retransmits; /* segments retransmitted */
	__u64 ended;  /* connections closed while sampled */
	__u64 rtt_hist[BG_TUNE_RTT_BUCKETS];
};

/* a sample of one connection (ring buffer "events"), from the tuned socket's point of view */
struct bg_tune_event {
	struct bg_event_hdr hdr;
	__u8 family; /* 4 or 6 */
	__u8 kind;   /* enum bg_tune_sample */
	__u16 sport; /* host byte order */
	__u16 dport;
	__u16 pad;
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u32 srtt_us;  /* smoothed RTT */
	__u32 snd_cwnd; /* segments */
	__u32 total_retrans;
	__u32 pad2;
	__u64 bytes_acked;
	__u64 bytes_received;
};

BG_EXPORT_TYPE(enum bg_tune_limit, tune_limit);
BG_EXPORT_TYPE(enum bg_tune_flag, tune_flag);
BG_EXPORT_TYPE(struct bg_tune_cfg, tune_cfg);
BG_EXPORT_TYPE(struct bg_tune_stats, tune_stats);
BG_EXPORT_TYPE(enum bg_tune_sample, tune_sample);
BG_EXPORT_TYPE(struct bg_tune_event, tune_event);

#endif /* BG_TUNE_H */
