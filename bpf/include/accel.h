/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * sockmap acceleration of local TCP (`bpfgate accel`): established sockets of an opted-in cgroup whose peer
 * is local go into a sockhash keyed by their own 4-tuple; a message sent on one is moved straight into the
 * receive queue of its peer (the key with both ends swapped), bypassing the TCP/IP stack.
 */
#ifndef BG_ACCEL_H
#define BG_ACCEL_H

#include "bg_common.h"

enum bg_accel_limit {
	BG_ACCEL_SOCKS_MAX = 65536, /* sockets in the sockhash (two per accelerated connection) */
	BG_ACCEL_PORTS_MAX = 64,    /* opted-in ports */
};

enum bg_accel_mode {
	BG_ACCEL_ON = 1,      /* collect sockets, redirect messages */
	BG_ACCEL_DRAIN = 2,   /* being removed: collect no more, send every message the normal way */
	BG_ACCEL_ALL_PORTS = 4, /* with ON: every port (no port set) */
};

/* a socket's own view of its connection; the peer's key has the ends swapped */
struct bg_accel_key {
	__u32 family; /* 4 or 6 */
	__u32 lport;  /* host byte order */
	__u32 rport;
	__u32 pad;
	__u8 laddr[16]; /* IPv4 in the first 4 bytes */
	__u8 raddr[16];
};

struct bg_accel_cfg {
	__u32 mode; /* enum bg_accel_mode */
	__u32 pad;
};

/* per-CPU counters */
struct bg_accel_stats {
	__u64 sockets;       /* sockets added to the sockhash */
	__u64 add_failed;    /* bpf_sock_hash_update refused (full, or a socket the kernel cannot take) */
	__u64 redirected;    /* messages moved to the peer */
	__u64 redirected_bytes;
	__u64 passed;        /* messages sent the normal way (peer not in the map, or draining) */
};

BG_EXPORT_TYPE(enum bg_accel_limit, accel_limit);
BG_EXPORT_TYPE(enum bg_accel_mode, accel_mode);
BG_EXPORT_TYPE(struct bg_accel_key, accel_key);
BG_EXPORT_TYPE(struct bg_accel_cfg, accel_cfg);
BG_EXPORT_TYPE(struct bg_accel_stats, accel_stats);

#endif /* BG_ACCEL_H */
