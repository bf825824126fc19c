/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * TCP tuning per cgroup (sock_ops): what `bpfgate tune` sets on the TCP sockets of a cgroup's processes.
 * One bg_tune_cfg in the array bg_tune_cfg[0], written by Python before the program is attached.
 */
#ifndef BG_TUNE_H
#define BG_TUNE_H

#include "bg_common.h"

enum bg_tune_limit {
	BG_TUNE_CC_MAX = 16, /* TCP_CA_NAME_MAX: a congestion control's name with its NUL */
};

enum bg_tune_flag {
	BG_TUNE_CC = 0x01,      /* set congestion control cc */
	BG_TUNE_SNDBUF = 0x02,  /* SO_SNDBUF sndbuf (the kernel doubles it, as for setsockopt) */
	BG_TUNE_RCVBUF = 0x04,  /* SO_RCVBUF rcvbuf */
	BG_TUNE_NODELAY = 0x08, /* TCP_NODELAY 1 */
};

struct bg_tune_cfg {
	__u32 flags;  /* enum bg_tune_flag */
	__u32 sndbuf; /* bytes */
	__u32 rcvbuf;
	__u32 pad;
	char cc[BG_TUNE_CC_MAX];
};

/* per-CPU: what was set, and what the kernel refused (bpf_setsockopt < 0) */
struct bg_tune_stats {
	__u64 tuned;  /* sockets */
	__u64 failed; /* bpf_setsockopt calls refused */
};

BG_EXPORT_TYPE(enum bg_tune_limit, tune_limit);
BG_EXPORT_TYPE(enum bg_tune_flag, tune_flag);
BG_EXPORT_TYPE(struct bg_tune_cfg, tune_cfg);
BG_EXPORT_TYPE(struct bg_tune_stats, tune_stats);

#endif /* BG_TUNE_H */
