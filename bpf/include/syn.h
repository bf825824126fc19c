/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * SYN counting and flood detection at XDP (syn.bpf.c; bpfgate.inspect.syn): its maps and its record.
 */
#ifndef BG_SYN_H
#define BG_SYN_H

#include "bg_common.h"

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

/* Python reads this from BTF (bpfgate.contract): every object built with this header carries it. */
BG_EXPORT_TYPE(struct bg_syn_flood_event, syn_flood_event);

#endif /* BG_SYN_H */
