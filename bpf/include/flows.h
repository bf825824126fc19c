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

/* Python reads these from BTF (bpfgate.contract): every object built with this header carries them. */
BG_EXPORT_TYPE(enum bg_flow_end_reason, flow_end_reason);
BG_EXPORT_TYPE(enum bg_flow_stat, flow_stat);
BG_EXPORT_TYPE(enum bg_dir, flow_dir);
BG_EXPORT_TYPE(struct bg_flow_end_event, flow_end_event);

#endif /* BG_FLOWS_H */
