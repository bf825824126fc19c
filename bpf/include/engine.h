/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The policy engine (engine.bpf.c, parse.h; bpfgate.engine): classifier maps, rules, stage 0 prefix
 * classes, rate limiting, conntrack and the rule log record. docs/policy-engine.md section 5; Python packs
 * these in bpfgate.policy.layout (checked against BTF).
 */
#ifndef BG_ENGINE_H
#define BG_ENGINE_H

#include "bg_common.h"
#include "conntrack.h" /* enum bg_ct_state */

#ifndef __VMLINUX_H__
#include <linux/bpf.h> /* struct bpf_spin_lock for host compilers */
#endif

/* Sizes of the engine's maps and tables (enums, so Python reads them from BTF). */
enum bg_engine_limits {
	BG_MAX_SHAPES = 32,        /* bg_conf.shapes[] */
	BG_GEN_OVERLAY = 2,        /* key.gen bit of a batch's overlay entries (prio BG_PRIO_NONE: no entry) */
	BG_PRIO_NONE = 0xffffffff, /* an overlay entry that hides the key's entry in bg_cls */
	BG_CONF_SLOTS = 2,         /* bg_conf is double-buffered; bg_active[0] names the live slot */
	BG_MAX_RULES = 1 << 18,    /* rule slots: bg_rules, bg_counters, bg_rate_rule, bg_log_rate */
	BG_REDIRECT_TARGETS = 256, /* interfaces the rules of one engine redirect to (bg_redirect_devs) */
	BG_HASH_MAX = 1 << 21,     /* bg_cls and bg_pfx allocated per entry: two generations of 1M entries */
	BG_PFX_LENS = 7,           /* longer lengths probed per level-0 bucket of stage 0, at most */
	BG_PFX_TOP_BITS = 16,      /* level 0 is indexed by the address's top 16 bits */
	BG_PFX_SUB_BITS = 5,       /* and says which of the bucket's 32 sub-ranges (bits 16..20) hold a longer prefix */
	BG_FILTER_BITS = 64,       /* bits of a shape's filter (bg_shape.filter) */
	BG_DIRECT_PROTOS = 3,      /* bg_cls_direct: sctp, udp, tcp (the protocols with ports; slot proto & 3) */
	BG_DIRECT_SLOTS = 2 * BG_DIRECT_PROTOS << 16, /* generation slot x protocol x destination port */
};

/* A key's filter bit (bg_shape.filter): each word of key & fmask (0, 1, 2, 4, 6: fmask has no bits in 3
 * and 5) times its multiplier, XORed, mixed once more by BG_FILTER_MIX; the top 6 bits.
 * bpfgate.policy.layout.filter_bit is the same function. */
enum bg_filter_k {
	BG_FILTER_K0 = 0x9e3779b1, BG_FILTER_K1 = 0x85ebca77, BG_FILTER_K2 = 0xc2b2ae3d, BG_FILTER_K3 = 0x27d4eb2f,
	BG_FILTER_K4 = 0x165667b1, BG_FILTER_K5 = 0x85ebca6b, BG_FILTER_K6 = 0xc2b2ae35, BG_FILTER_MIX = 0x9e3779b9,
};

enum bg_have { BG_HAVE_L3 = 0x01, BG_HAVE_PROTO = 0x02, BG_HAVE_PORTS = 0x04, BG_HAVE_TCPFLAGS = 0x08,
	       BG_HAVE_ICMP = 0x10, BG_HAVE_VLAN = 0x20, BG_HAVE_CT = 0x40 };
enum bg_action { BG_ACT_PASS = 1, BG_ACT_DROP = 2, BG_ACT_REDIRECT = 3, BG_ACT_REJECT = 4 };
/* bg_rule.reject_with: what a reject sends for anything but TCP (TCP always gets a RST) */
enum bg_reject_with { BG_REJECT_PORT_UNREACHABLE = 0, BG_REJECT_ADMIN_PROHIBITED = 1 };
enum bg_rule_flags { BG_RF_COUNT = 0x01, BG_RF_LOG = 0x02, BG_RF_MARK = 0x04, BG_RF_RATE = 0x08,
		     BG_RF_RATE_BYTES = 0x10, BG_RF_RATE_PER_SRC = 0x20, BG_RF_REDIR_INGRESS = 0x40,
		     BG_RF_REDIR_GONE_DROP = 0x80 /* the redirect target is gone: drop (else pass) */ };

/* Redirect targets (map bg_redirect_devs, a devmap keyed by ifindex): the control plane puts each rule's
 * target there; the kernel deletes an entry when its device goes, so a redirect never goes into nothing.
 * Per-CPU counters (bg_redirect_stats) of packets whose target was gone, by what the rule said. */
enum bg_redirect_stat {
	BG_REDIR_STAT_GONE_PASSED = 0,
	BG_REDIR_STAT_GONE_DROPPED,
	BG_REDIR_STAT_MAX,
};

struct bg_cls_key {      /* 56 bytes = 7 x u64: key of bg_cls, also the packet key and a shape's mask */
	__u8 shape;      /* shape id (0 in packet key and masks) */
	__u8 gen;        /* generation of the entries (0 in packet key and masks) */
	__u8 have;       /* BG_HAVE_* */
	__u8 family;     /* 0, 4 or 6 */
	__u8 proto;
	__u8 tcp_flags;  /* FIN 0x01 .. CWR 0x80 */
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 ct_state;   /* enum bg_ct_state */
	__u8 pad0;
	__u16 vlan;      /* outer VLAN id, host order */
	__u16 sport;     /* host order */
	__u16 dport;
	__u8 src[16];    /* network order; IPv4 in src[0..3] */
	__u8 dst[16];
	__u32 src_cls;   /* prefix class of src (stage 0, bg_pfx_*), 0: in no class prefix */
	__u32 dst_cls;
};

/* A shape whose mask holds no address bits past the first 4 bytes of src and dst (every IPv4 shape: stage 0
 * turns most address matches into class ids) keeps its entries in bg_cls_short under this shorter key: the
 * hash reads 32 bytes instead of 56. Its id carries BG_SHAPE_SHORT, so a key says which map it is in. */
enum bg_shape_flags { BG_SHAPE_SHORT = 0x80, BG_SHAPE_DIRECT = 0x40 };

/* The shape of "protocol P, destination port N" (mask: have PROTO|PORTS, proto, dport; at most one per
 * generation, its id carries BG_SHAPE_DIRECT too) keeps its keys of tcp, udp and sctp in an array,
 * bg_cls_direct, read without a hash: index ((gen & 1) * BG_DIRECT_PROTOS + slot) << 16 | dport, slot =
 * proto & 3 (sctp 0, udp 1, tcp 2); value prio 0: no entry (a rule's prio is never 0). Its other keys (an
 * entry without both have bits, a batch's overlay entries) stay in bg_cls_short, and its filter
 * (bg_shape.filter) holds only those. The program reads the array before the other shapes (bg_conf.direct
 * names the shape). */

struct bg_cls_short_key { /* 32 bytes = 4 x u64: words 0, 1 of bg_cls_key, then src[0..3] dst[0..3], classes */
	__u8 shape;      /* shape id, BG_SHAPE_SHORT set */
	__u8 gen;
	__u8 have;
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 ct_state;
	__u8 pad0;
	__u16 vlan;
	__u16 sport;
	__u16 dport;
	__u8 src4[4];    /* src[0..3] of bg_cls_key */
	__u8 dst4[4];    /* dst[0..3] */
	__u32 src_cls;
	__u32 dst_cls;
};

struct bg_cls_val {
	__u32 prio;      /* lower wins */
	__u32 rule_id;   /* index into bg_rules / bg_counters */
};

struct bg_rule {         /* bg_rules[rule_id] */
	__u8 action;     /* enum bg_action */
	__u8 over_action;/* action over the rate limit */
	__u16 flags;     /* enum bg_rule_flags */
	__u32 redirect_ifindex;
	__u32 mark;
	__u32 log_rate;  /* log events per second */
	__u64 rate;      /* tokens per second (packets, or bytes with BG_RF_RATE_BYTES) */
	__u64 burst;     /* bucket depth in tokens */
	__u8 reject_with;/* enum bg_reject_with (action reject) */
	__u8 pad[3];
	__u32 reject_rate;/* replies per second at most (action reject), bucket depth the same: never amplifies */
};

/* Stage 0: address -> prefix class (docs/policy-engine.md section 3). One tree per field and family; each
 * generation slot (gen & 1) has its own. Level 0 is an array indexed by the address's top 16 bits: the
 * class of the longest prefix <= /16, and which longer lengths to probe (bg_pfx, longest first) when the
 * address's 1/32 sub-range (bits 16..20) holds any longer prefix. */
enum bg_tree { BG_TREE_SRC4 = 0, BG_TREE_SRC6 = 1, BG_TREE_DST4 = 2, BG_TREE_DST6 = 3 };

struct bg_pfx_top {      /* 16 bytes; bg_pfx_top[((gen & 1) * 4 + tree) << 16 | top 16 bits] */
	__u32 cls;       /* longest prefix <= /16 holding the bucket, 0: none */
	__u32 sub;       /* bit (addr >> (W - 21)) & 31: that sub-range holds a longer prefix */
	__u8 nlens;      /* lens[0..nlens) to probe */
	__u8 lens[BG_PFX_LENS]; /* descending */
};

struct bg_pfx_key {      /* key of bg_pfx: the address masked to len */
	__u8 addr[16];   /* network order; IPv4 in addr[0..3] */
	__u8 gen;
	__u8 tree;       /* enum bg_tree */
	__u8 len;
	__u8 pad[5];
};

struct bg_shape {
	struct bg_cls_key mask;
	__u32 best_prio; /* early-stop bound */
	__u8 id;
	__u8 filtered;   /* 1: filter[] holds the bit of every entry (informational: else it is all ones) */
	__u8 pad[2];
	__u32 entries;
	__u32 pad2;
	/* A one-hash Bloom filter: a packet whose bit (bg_filter_bit of key & fmask) is clear has no entry
	 * in the shape, and skips its hash lookup. fmask: the mask, or the part of it with few values. */
	struct bg_cls_key fmask;
	__u64 filter[BG_FILTER_BITS / 64];
};

struct bg_conf {         /* bg_conf[2], double-buffered; bg_active[0] names the live slot */
	__u32 nshapes;
	__u32 default_rule;
	__u8 gen;
	__u8 trees;      /* 1 << BG_TREE_*: the prefix-class trees this generation uses (0: no stage 0) */
	__u8 overlay;    /* 1: a batch of edits is being written; its keys (gen | BG_GEN_OVERLAY) decide first */
	__u8 direct;     /* the id of the BG_SHAPE_DIRECT shape in shapes[] (bg_cls_direct), 0: none */
	__u8 pad[4];
	/* [0] src, [1] dst: bit p set when an entry keyed on that side's class may match key.proto p; a packet
	 * of another protocol skips that side's stage 0 walk (its class would be looked up by no shape) */
	__u64 tree_protos[2][4];
	struct bg_shape shapes[BG_MAX_SHAPES];
};

/* token bucket (bg_rate_rule[rule_id], bg_rate_src[key]); credit in token-nanoseconds (tokens * 1e9) */
struct bg_bucket {
	__u64 credit;
	__u64 last_ns;   /* 0: fresh (full bucket) */
	struct bpf_spin_lock lock;
	__u32 pad;
};

struct bg_rate_src_key {
	__u32 rule_id;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

/* conntrack: bg_ct, shared with flow accounting: conntrack.h (key, value), ct_track.h (code) */

enum bg_engine_hook {
	BG_ENGINE_TC_INGRESS = 1,
	BG_ENGINE_TC_EGRESS = 2,
	BG_ENGINE_XDP = 3,
	BG_ENGINE_CGROUP_INGRESS = 4, /* cgroup_skb: the packets of a cgroup's sockets */
	BG_ENGINE_CGROUP_EGRESS = 5,
	BG_ENGINE_CGROUP_CONNECT = 6, /* connect(), and sendmsg() of unconnected UDP: the destination */
	BG_ENGINE_CGROUP_BIND = 7,    /* bind(): the local address and port */
};

struct bg_rule_log_event {
	struct bg_event_hdr hdr;
	__u32 rule_id;
	__u32 ifindex;
	__u32 pkt_len;
	__u8 action;     /* what was done (enum bg_action) */
	__u8 hook;       /* enum bg_engine_hook */
	__u8 family;
	__u8 proto;
	__u16 sport;
	__u16 dport;
	__u8 ct_state;
	__u8 tcp_flags;
	__u8 pad[2];
	__u8 src[16];
	__u8 dst[16];
};

/* Python reads these from BTF (bpfgate.contract): every object built with this header carries them. */
BG_EXPORT_TYPE(enum bg_engine_limits, engine_limits);
BG_EXPORT_TYPE(enum bg_filter_k, filter_k);
BG_EXPORT_TYPE(enum bg_have, have);
BG_EXPORT_TYPE(enum bg_shape_flags, shape_flags);
BG_EXPORT_TYPE(struct bg_cls_short_key, cls_short_key);
BG_EXPORT_TYPE(enum bg_ct_state, ct_state);
BG_EXPORT_TYPE(enum bg_action, action);
BG_EXPORT_TYPE(enum bg_reject_with, reject_with);
BG_EXPORT_TYPE(enum bg_rule_flags, rule_flags);
BG_EXPORT_TYPE(enum bg_redirect_stat, redirect_stat);
BG_EXPORT_TYPE(enum bg_tree, tree);
BG_EXPORT_TYPE(enum bg_ct_flags, ct_flags);
BG_EXPORT_TYPE(enum bg_engine_hook, engine_hook);
BG_EXPORT_TYPE(struct bg_rule_log_event, rule_log_event);

#endif /* BG_ENGINE_H */
