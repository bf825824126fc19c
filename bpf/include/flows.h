/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Flow accounting (flows.bpf.c; bpfgate.inspect.flows): the record of a flow that ended. The flow table's
 * key and value are in flow.h (shared with conntrack).
 */
#ifndef BG_FLOWS_H
#define BG_FLOWS_H

#include "bg_common.h"
#include "flow.h"

/* A flow reported once when it ends (FIN/RST in the kernel), with its counters at that moment. */
struct bg_flow_end_event {
	struct bg_event_hdr hdr;
	struct bg_flow_key key;
	struct bg_flow_value val;
};

#endif /* BG_FLOWS_H */
