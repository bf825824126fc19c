/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Flow accounting (flows.bpf.c; bpfgate.inspect.flows): the record of a flow that ended and the program's
 * counters. The flow table is the connection tracker's (conntrack.h: key and value, shared with the engine).
 */
#ifndef BG_FLOWS_H
#define BG_FLOWS_H

#include "bg_common.h"
#include "conntrack.h"

/* A flow reported once when it ends (FIN/RST in the kernel), with its counters at that moment. */
struct bg_flow_end_event {
	struct bg_event_hdr hdr;
	struct bg_ct_key key;   /* the originator's direction */
	struct bg_ct_value val;
};

/* Per-CPU counters of the flows program (array map "flow_stats"). */
enum bg_flow_stat {
	BG_FLOW_STAT_NEW = 0,     /* entries created */
	BG_FLOW_STAT_ENDED,       /* flow-end records submitted by the kernel (FIN/RST) */
	BG_FLOW_STAT_UNPARSED,    /* packets not tracked: not IPv4/IPv6, or no L4 header to tell the flow
	                           * (cut short, a non-first fragment) */
	BG_FLOW_STAT_CREATE_FAIL, /* bpf_map_update_elem failed for a new flow */
	BG_FLOW_STAT_DELETED,     /* entries user space deleted (written by user space, CPU 0's slot):
	                           * evicted = NEW - live entries - DELETED, for every reader */
	BG_FLOW_STAT_MAX,
};

/* Python reads these from BTF (bpfgate.contract): every object built with this header carries them. */
BG_EXPORT_TYPE(enum bg_flow_end_reason, flow_end_reason);
BG_EXPORT_TYPE(enum bg_flow_stat, flow_stat);
BG_EXPORT_TYPE(enum bg_dir, flow_dir);
BG_EXPORT_TYPE(struct bg_flow_end_event, flow_end_event);

#endif /* BG_FLOWS_H */
