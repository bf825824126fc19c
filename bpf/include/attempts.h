/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Connection attempts seen at TC (attempts.bpf.c; bpfgate.inspect.attempts): its key and its record.
 */
#ifndef BG_ATTEMPTS_H
#define BG_ATTEMPTS_H

#include "bg_common.h"

/* attempt_ports: key struct bg_port_key, value __u32 (unused, 1) */
enum bg_attempt_ports { BG_ATTEMPT_ALL_PORTS = 0 }; /* the port in attempt_ports that watches every port */

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

/* Python reads these from BTF (bpfgate.contract): every object built with this header carries them. */
BG_EXPORT_TYPE(enum bg_attempt_ports, attempt_ports);
BG_EXPORT_TYPE(struct bg_attempt_event, attempt_event);

#endif /* BG_ATTEMPTS_H */
