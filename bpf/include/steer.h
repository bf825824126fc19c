/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Egress steering (steer.bpf.c; bpfgate.steer): explicit rules "traffic from this source leaves by
 * interface X to next hop N", and symmetric return "replies of a connection that arrived on X go back out
 * of X to the L2 peer it came from". One set of maps per network namespace, pinned, shared by the programs
 * of every interface steering is attached to (so an egress hook sees the flows another interface's
 * ingress recorded): the rules, the attached interfaces, a devmap of them (the kernel deletes an entry when
 * its device goes), the connection tracker's table (conntrack.h: ext.in_ifindex, ext.peer_mac) and the
 * counters. docs/steer.md says what each counter means.
 */
#ifndef BG_STEER_H
#define BG_STEER_H

#include "bg_common.h"
#include "conntrack.h"

enum bg_steer_limit {
	BG_STEER_RULES_MAX = 4096, /* explicit rules per namespace (rule ids 0 .. max - 1) */
	BG_STEER_IFS_MAX = 256,    /* interfaces steering is attached to, per namespace */
	BG_STEER_PROBE_MS = 5000, /* 5 s: a rule whose next hop has no valid neighbour
	                                 * entry sends one packet per 5 s through bpf_redirect_neigh (which
	                                 * solicits it; the kernel drops that packet if nobody answers); the
	                                 * others pass unchanged and are counted. Longer than TCP's first SYN
	                                 * retransmits (1 s, 3 s), so a dead next hop costs a connection one SYN */
};

/*
 * Key of an explicit rule (LPM trie "steer_rules"): the bits after prefixlen are family, proto, port
 * (always all 32 of them) and then the source prefix. proto 0: any protocol; port 0: any port (a port
 * needs a protocol). The egress program looks up (proto, source port), then (proto, 0), then (0, 0):
 * the most specific protocol/port wins, then the longest prefix.
 */
struct bg_steer_key {
	__u32 prefixlen; /* 32 + the source prefix length */
	__u8 family;     /* 4 or 6 */
	__u8 proto;
	__u16 port;      /* source port, host order */
	__u8 addr[16];   /* network order; IPv4 in addr[0..3] */
};

/* Where matching traffic leaves: interface + next hop (the neighbour subsystem resolves its MAC). */
struct bg_steer_rule {
	__u32 id;          /* index of its counters in steer_rule_stats */
	__u32 ifindex;     /* the interface it leaves by */
	__u8 family;       /* of the next hop: 4 or 6 */
	__u8 pad[3];
	__u8 nexthop[16];  /* network order; IPv4 in nexthop[0..3] */
	__u64 probe_ns;    /* kernel-written: last packet sent to resolve a missing neighbour */
};

/* Per rule (per-CPU array "steer_rule_stats", index = rule id). */
struct bg_steer_rule_stat {
	__u64 steered;  /* packets redirected */
	__u64 failed;   /* packets passed unchanged: a failure counted in steer_stats */
};

enum bg_steer_if_flags {
	BG_STEER_IF_RETURN = 0x01, /* symmetric return: replies of connections that arrived here go back here */
};

/* An interface steering is attached to (hash "steer_ifs", key ifindex). */
struct bg_steer_if {
	__u8 mac[6];   /* its own MAC: the source of replies sent back out of it */
	__u8 flags;    /* enum bg_steer_if_flags */
	__u8 pad;
};

/* Per-CPU counters (array "steer_stats"). Every failure passes the packet unchanged. */
enum bg_steer_stat {
	BG_STEER_STAT_STEERED = 0,  /* explicit rule: redirected to its next hop */
	BG_STEER_STAT_RETURNED,     /* symmetric return: reply sent back out of the interface it came in on */
	BG_STEER_STAT_RESOLVING,    /* explicit rule, next hop without a neighbour entry: this packet went
	                             * through bpf_redirect_neigh so the kernel resolves it (at most one per
	                             * rule and 5 s; the kernel drops it if resolution fails) */
	BG_STEER_STAT_NO_NEIGH,     /* failure: the next hop's neighbour is unresolved (incomplete, failed) */
	BG_STEER_STAT_IF_GONE,      /* failure: the target interface no longer exists */
	BG_STEER_STAT_OFF_LINK,     /* failure: no route puts the next hop on the target interface (not on
	                             * that link, behind a gateway, the link down) */
	BG_STEER_STAT_TOO_BIG,      /* failure: the packet exceeds the target's MTU (or the target is down) */
	BG_STEER_STAT_FIB_ERROR,    /* failure: any other route lookup result */
	BG_STEER_STAT_UNVERIFIED,   /* explicit rule, also counted as steered: sent without the route check, which
	                             * the kernel answers only for an interface with forwarding on */
	BG_STEER_STAT_TRACKED,      /* connections recorded at ingress (interface + peer MAC) */
	BG_STEER_STAT_CT_FULL,      /* a connection could not be recorded: the tracker's insert failed */
	BG_STEER_STAT_MAX,
};

BG_EXPORT_TYPE(enum bg_steer_limit, steer_limit);
BG_EXPORT_TYPE(enum bg_steer_if_flags, steer_if_flags);
BG_EXPORT_TYPE(enum bg_steer_stat, steer_stat);
BG_EXPORT_TYPE(struct bg_steer_key, steer_key);
BG_EXPORT_TYPE(struct bg_steer_rule, steer_rule);
BG_EXPORT_TYPE(struct bg_steer_rule_stat, steer_rule_stat);
BG_EXPORT_TYPE(struct bg_steer_if, steer_if);
BG_EXPORT_TYPE(struct bg_ct_key, steer_ct_key);
BG_EXPORT_TYPE(struct bg_ct_value, steer_ct_value);

#endif /* BG_STEER_H */
