/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Address/port translation and L4 load balancing (nat.bpf.c; bpfgate.nat): rule keys and values, the load
 * balancer's services and backends, the program's counters, and how a translated flow sits in the
 * connection tracker (conntrack.h: bg_ct_ext's nat_* and backend_id fields).
 *
 * A stateful translation keeps TWO entries in bg_ct, one per tuple the flow has on the wire:
 *   - the original entry, under the flow's key before translation (the originator's view); its ext names
 *     the address/port the rewritten side becomes (nat_addr/nat_port) and which side (nat_flags);
 *   - the view entry (BG_NAT_VIEW), under the key after translation (what the far side sees); its ext holds
 *     the original address/port, so a reply (the view key reversed) is translated back with one lookup.
 * The view entry of a source translation is also what makes an allocated source port taken.
 */
#ifndef BG_NAT_H
#define BG_NAT_H

#include "bg_common.h"
#include "conntrack.h"

/* bg_ct_ext.nat_flags */
enum bg_nat_flags {
	BG_NAT_SRC = 0x01,   /* the source is rewritten (SNAT) */
	BG_NAT_DST = 0x02,   /* the destination is rewritten (DNAT, load balancing) */
	BG_NAT_VIEW = 0x04,  /* keyed by the translated tuple: ext holds the original address/port */
	BG_NAT_CLOSED = 0x08, /* TCP: the flow ended (a RST, or a FIN each way): both entries live only
			       * cfg_nat_timeout_closed_ns past its last packet, so its SNAT port is free soon */
};

/* bg_nat_target.flags */
enum bg_nat_rule_flags {
	BG_NATR_STATELESS = 0x01, /* translate every packet by the rule alone (1:1), no conntrack entry */
};

/* A DNAT rule's match (map nat_dnat: destination address + port, port 0: any port) and the match of the
 * stateless reverse maps (nat_rev_in: destination, nat_rev_out: source). */
struct bg_nat_key {
	__u8 family;    /* 4 or 6 */
	__u8 proto;     /* 6 or 17 */
	__u16 port;     /* host order; 0: every port (address-only translation) */
	__u8 addr[16];  /* network order, IPv4 in addr[0..3] */
};

/* What a rule translates to. */
struct bg_nat_target {
	__u8 addr[16];
	__u16 port;     /* host order; 0: keep the port. SNAT: the first port of the range to allocate from */
	__u16 port_hi;  /* SNAT: the last port of the range (0: keep the source port, allocate only on collision) */
	__u32 flags;    /* enum bg_nat_rule_flags */
	__u32 svc;      /* load balancing: the service (lb_svc index + 1); 0: a plain DNAT rule */
	__u32 pad;
};

/* A stateful SNAT rule's match (map nat_snat, longest prefix): prefixlen = 8 + the address prefix. */
struct bg_snat_key {
	__u32 prefixlen;
	__u8 family;
	__u8 addr[16];
	__u8 pad[3];
};

/* A load-balanced service (map lb_svc): its Maglev table is lb_slots[base .. base + size). */
struct bg_lb_svc {
	__u32 base;
	__u32 size;     /* a prime */
	__u32 seed;     /* of the flow hash */
	__u32 pad;
};

/* A backend (map lb_backends, by backend id): where the service's flows on it go. */
struct bg_lb_backend {
	__u8 addr[16];
	__u16 port;
	__u8 family;
	__u8 pad;
	__u32 svc;      /* the service it belongs to */
};

/* Per-CPU counters of the program (array map "nat_stats"). */
enum bg_nat_stat {
	BG_NAT_STAT_XLATE_IN = 0,     /* packets translated at ingress */
	BG_NAT_STAT_XLATE_OUT,        /* packets translated at egress */
	BG_NAT_STAT_FLOWS,            /* translated flows created */
	BG_NAT_STAT_CT_FULL,          /* a flow's entries could not be inserted: packet passed untranslated */
	BG_NAT_STAT_PORT_COLLISION,   /* SNAT: a source port was taken, another one tried */
	BG_NAT_STAT_PORT_EXHAUSTED,   /* SNAT: no free port found in the tries: packet dropped */
	BG_NAT_STAT_NO_STATE,         /* a TCP packet for a stateful rule that is not an opening SYN and has
	                               * no flow: passed untranslated */
	BG_NAT_STAT_ICMP_XLATE,       /* ICMP errors quoting a translated flow, translated */
	BG_NAT_STAT_LB_NO_BACKEND,    /* a service's table slot holds no live backend: passed untranslated */
	BG_NAT_STAT_LB_REPICK,        /* a flow's backend was removed: a new one chosen from the table */
	BG_NAT_STAT_REWRITE_FAIL,     /* a checksum/store helper failed: packet dropped */
	BG_NAT_STAT_MAX,
};

/* How many source ports SNAT tries before it counts the range as exhausted for this flow. */
enum bg_nat_limit {
	BG_NAT_PORT_TRIES = 16,
};

BG_EXPORT_TYPE(enum bg_nat_flags, nat_flags);
BG_EXPORT_TYPE(enum bg_nat_rule_flags, nat_rule_flags);
BG_EXPORT_TYPE(enum bg_nat_stat, nat_stat);
BG_EXPORT_TYPE(enum bg_nat_limit, nat_limit);
BG_EXPORT_TYPE(struct bg_nat_key, nat_key);
BG_EXPORT_TYPE(struct bg_nat_target, nat_target);
BG_EXPORT_TYPE(struct bg_snat_key, snat_key);
BG_EXPORT_TYPE(struct bg_lb_svc, lb_svc);
BG_EXPORT_TYPE(struct bg_lb_backend, lb_backend);

#endif /* BG_NAT_H */
