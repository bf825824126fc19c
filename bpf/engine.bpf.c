// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * The policy engine: one classifier core shared by a TC program and an XDP program.
 *
 *   parse (parse.h, shared by every family) -> key with `have` bits -> conntrack state -> tuple-space search over bg_cls
 *   (one hash lookup per shape, early stop) -> bg_rules[rule_id] -> counters, log, rate limit, action.
 *
 * The map contract is docs/policy-engine.md section 5 (structs in engine.h). bg_ct_track is a
 * conntrack-only program for the other direction of an interface whose ingress is gated, so replies of
 * outgoing flows are known as established.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "engine.h"
#include "capture.h"
#define BG_EVENTS_SIZE (256 * 1024)
#include "bg_emit.h"
#include "bg_bounds.h"
#include "bg_compat.h"
#include "parse.h"
#include "ct_track.h" /* bg_ct: the tracker shared with flow accounting */

#define TC_ACT_UNSPEC -1
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define NSEC 1000000000ULL

/* set before load */
const volatile __u8 cfg_hook = BG_ENGINE_TC_INGRESS; /* enum bg_engine_hook (events say where) */
const volatile __u8 cfg_ct = 1;          /* track flows and set ct_state */
const volatile __u8 cfg_test_mark = 0;   /* tests: ct_state from skb->mark low 3 bits, rule_id+1 into mark */


struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, BG_HASH_MAX); /* two generations of 1M entries during a swap */
	__type(key, struct bg_cls_key);
	__type(value, struct bg_cls_val);
} bg_cls SEC(".maps");

/* the entries of the shapes with BG_SHAPE_SHORT in their id, under the 32-byte key (engine.h) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, BG_HASH_MAX);
	__type(key, struct bg_cls_short_key);
	__type(value, struct bg_cls_val);
} bg_cls_short SEC(".maps");

/* the BG_SHAPE_DIRECT shape's entries that fit its index (engine.h) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BG_DIRECT_SLOTS);
	__type(key, __u32);
	__type(value, struct bg_cls_val);
} bg_cls_direct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BG_CONF_SLOTS);
	__type(key, __u32);
	__type(value, struct bg_conf);
} bg_conf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * 4 << BG_PFX_TOP_BITS); /* generation slot x tree x top 16 bits */
	__type(key, __u32);
	__type(value, struct bg_pfx_top);
} bg_pfx_top SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, BG_HASH_MAX);
	__type(key, struct bg_pfx_key);
	__type(value, __u32);
} bg_pfx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bg_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BG_MAX_RULES);
	__type(key, __u32);
	__type(value, struct bg_rule);
} bg_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BG_MAX_RULES);
	__type(key, __u32);
	__type(value, struct bg_counter);
} bg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BG_MAX_RULES);
	__type(key, __u32);
	__type(value, struct bg_bucket);
} bg_rate_rule SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bg_rate_src_key);
	__type(value, struct bg_bucket);
} bg_rate_src SEC(".maps");

/* one bucket per rule for all CPUs (log_rate is the rule's events per second), under its lock: per-CPU
 * buckets would let ncpu x log_rate through, and a per-CPU array of every rule slot costs its creation time
 * and memory once per CPU (at 256k slots ~0.13 s and 4 MB a CPU) for the few rules that log */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BG_MAX_RULES);
	__type(key, __u32);
	__type(value, struct bg_bucket);
} bg_log_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, BG_REDIRECT_TARGETS);
	__type(key, __u32);
	__type(value, __u32);
} bg_redirect_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BG_REDIR_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bg_redirect_stats SEC(".maps");

/* reply buckets of reject rules (rule_id -> bucket of reject_rate): the program's own, never pinned; a slot
 * reused by another rule finds a bucket that refills within a second */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct bg_bucket);
} bg_reject_rate SEC(".maps");

/* [0] = 1: an engine earlier on this packet's path (XDP before tc-ingress) tracks the flows; this one only
 * reads their state, so per-flow counters count each packet once. Set by the control plane. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bg_ct_lookup_only SEC(".maps");

/* ---- capture with the verdict (bpfgate capture --rule / --engine; struct bg_capture_cfg in capture.h) -- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bg_capture_cfg);
} bg_capture_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} bg_capture_ring SEC(".maps");

/* the record is built here and copied with its exact length; one slot per CPU (set to the number of
 * possible CPUs before load), an ARRAY since per-CPU values are capped at 32 KiB */
struct bg_capture_scratch {
	__u8 buf[sizeof(struct bg_capture_event) + BG_ENGINE_CAPTURE_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct bg_capture_scratch);
} bg_capture_scratch SEC(".maps");

/* the parser's `have` bits are the key's: key_of() copies them */
_Static_assert(BG_PKT_L3 == BG_HAVE_L3 && BG_PKT_PROTO == BG_HAVE_PROTO && BG_PKT_PORTS == BG_HAVE_PORTS &&
	       BG_PKT_TCPFLAGS == BG_HAVE_TCPFLAGS && BG_PKT_ICMP == BG_HAVE_ICMP && BG_PKT_VLAN == BG_HAVE_VLAN,
	       "enum bg_pkt_have and enum bg_have differ");

/* ---- classifier ----------------------------------------------------------------------------------- */

_Static_assert(__builtin_offsetof(struct bg_pfx_key, gen) == 16 && __builtin_offsetof(struct bg_pfx_key, tree) == 17 &&
	       __builtin_offsetof(struct bg_pfx_key, len) == 18 && sizeof(struct bg_pfx_key) == 24,
	       "prefix_class() writes the key as three words");

/* Stage 0: the class of the longest class prefix holding addr (bg_pfx_top, then at most BG_PFX_LENS
 * probes of bg_pfx, longest first, only when the address's sub-range holds a longer prefix). */
static __always_inline __u32 prefix_class(const __u8 *addr, __u8 gen, __u32 tree)
{
	struct bg_pfx_key pk __attribute__((aligned(8)));
	const __u64 *a = (const __u64 *)addr;
	__u64 hi = bpf_be64_to_cpu(a[0]), lo = bpf_be64_to_cpu(a[1]);
	__u32 top = hi >> 32, idx = (((gen & 1) * 4 + tree) << BG_PFX_TOP_BITS) | (top >> 16);
	struct bg_pfx_top *t = bpf_map_lookup_elem(&bg_pfx_top, &idx);
	__u64 *pa = (__u64 *)pk.addr;
	__u32 *v;

	if (!t)
		return 0;
	if (!(t->sub & (1u << ((top >> (32 - BG_PFX_TOP_BITS - BG_PFX_SUB_BITS)) & ((1 << BG_PFX_SUB_BITS) - 1)))))
		return t->cls;
	for (int i = 0; i < BG_PFX_LENS; i++) {
		__u32 len;

		if (i >= t->nlens)
			break;
		len = t->lens[i];
		if (len > 128)
			break;
		pa[2] = gen | tree << 8 | len << 16; /* gen, tree, len: one word, as the hash reads it (see classify) */
		pa[0] = bpf_cpu_to_be64(len >= 64 ? hi : len ? hi & (~0ULL << (64 - len)) : 0);
		pa[1] = bpf_cpu_to_be64(len >= 128 ? lo : len > 64 ? lo & (~0ULL << (128 - len)) : 0);
		v = bpf_map_lookup_elem(&bg_pfx, &pk);
		if (v)
			return *v;
	}
	return t->cls;
}

_Static_assert(__builtin_offsetof(struct bg_cls_key, shape) == 0 && __builtin_offsetof(struct bg_cls_key, gen) == 1 &&
	       __builtin_offsetof(struct bg_cls_key, src_cls) == 48 && __builtin_offsetof(struct bg_cls_key, dst_cls) == 52 &&
	       sizeof(struct bg_cls_key) == 56, "classify() writes the key as these words");

_Static_assert(__builtin_offsetof(struct bg_cls_short_key, src4) == 16 &&
	       __builtin_offsetof(struct bg_cls_short_key, dst4) == 20 &&
	       __builtin_offsetof(struct bg_cls_short_key, src_cls) == 24 && sizeof(struct bg_cls_short_key) == 32,
	       "classify() writes the short key as these words, in the long key's buffer");

/* Word 2 of the short key (src4, dst4) from words 2 and 4 of the long one (src, dst), whose bytes past the
 * first 4 are masked to zero: the bytes in memory order, whatever the host's. */
static __always_inline __u64 src4_dst4(__u64 src, __u64 dst)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return src | dst << 32;
#else
	return src | dst >> 32;
#endif
}

/* What the program hands bg_classify() (the packet key) and the buffer its lookups' keys are built in: a
 * global function's frame is added to the program's own, which leaves it too little room for a key. */
struct bg_cls_arg {
	struct bg_cls_key pkt;
	struct bg_cls_key k;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bg_cls_arg);
} bg_cls_arg SEC(".maps");

_Static_assert((__u64)BG_FILTER_K0 == 0x9e3779b1ULL && (__u64)BG_FILTER_MIX == 0x9e3779b9ULL,
	       "the filter's multipliers are unsigned 32-bit (Python reads them as such)");

/* Bit p (< 256) of a 256-bit set in a map value. The word is picked by shifts, not by index: a
 * packet-derived offset into the map value would make the verifier track the key's words precisely, and
 * the parser's paths would no longer merge at the classifier's loop (1M instructions). */
static __always_inline int bit256(const __u64 *set, __u32 p)
{
	__u64 b = p & 63;

	b = (set[0] >> b & 1) | (set[1] >> b & 1) << 1 | (set[2] >> b & 1) << 2 | (set[3] >> b & 1) << 3;
	return b >> (p >> 6 & 3) & 1;
}

/* Whether the shape's filter has the packet key's bit: clear, no entry of the shape can match it (a
 * multiply per key word instead of a hash lookup). Words 3 and 5 (IPv6 addresses' tails) are never in
 * fmask: fewer instructions per shape, for 6.1's verifier budget. */
static __always_inline int filter_has(const struct bg_shape *sh, const __u64 *pk)
{
	const __u64 *f = (const __u64 *)&sh->fmask;
	__u64 h = (pk[0] & f[0]) * BG_FILTER_K0 ^ (pk[1] & f[1]) * BG_FILTER_K1 ^ (pk[2] & f[2]) * BG_FILTER_K2 ^
		  (pk[4] & f[4]) * BG_FILTER_K4 ^ (pk[6] & f[6]) * BG_FILTER_K6;

	h = (h ^ h >> 29) * BG_FILTER_MIX;
	return sh->filter[0] >> (h >> 58) & 1;
}

/* The index in bg_cls_direct (engine.h) of the packet key whose words 0 and 1 are w0, w1: ((gen & 1) * 3 +
 * slot) << 16 | dport, slot = proto & 3 (sctp 0, udp 1, tcp 2); BG_DIRECT_SLOTS or more (past the array: its lookup finds nothing) when no entry
 * there can match the packet (one without both protocol and ports, or of another protocol). Branch-free:
 * each branch here would be more states for the verifier. */
static __always_inline __u64 direct_index(__u64 w0, __u64 w1, __u64 gen)
{
	__u64 have = w0 >> 16 & 0xff, proto = w0 >> 32 & 0xff, slot = proto & 3;
	/* the protocol of each slot (slot 3: none, no protocol number is 0xffff) */
	__u64 want = (__u64)BG_IPPROTO_SCTP | (__u64)BG_IPPROTO_UDP << 16 | (__u64)BG_IPPROTO_TCP << 32 | 0xffffULL << 48;
	__u64 off = (proto ^ (want >> (slot * 16) & 0xffff)) |
		    ((have & (BG_HAVE_PROTO | BG_HAVE_PORTS)) ^ (BG_HAVE_PROTO | BG_HAVE_PORTS));

	off = (off | (0 - off)) >> 63; /* 1: does not fit */
	return ((gen & 1) * BG_DIRECT_PROTOS + slot + off * 8) << 16 | w1 >> 48; /* dport: the key's bytes 14..15 */
}

/* The entry of bg_cls_direct at idx (NULL past its end; prio 0: none there). The index goes through
 * `scratch`, a word of a key buffer read no more (the tc program's frame has no room to spare, see struct
 * verdict), written whole (a partly written stack slot would keep its old contents live for the verifier). */
static __always_inline struct bg_cls_val *direct_lookup(__u64 idx, __u64 *scratch)
{
	*scratch = idx; /* the u32 key in its first 4 bytes (little-endian, as the BPF target is here) */
	return bpf_map_lookup_elem(&bg_cls_direct, scratch);
}

/* The direct shape's mask (engine.h), as the key's words 0 and 1: have's PROTO and PORTS bits, proto; dport */
#define BG_DIRECT_W0 ((__u64)(BG_HAVE_PROTO | BG_HAVE_PORTS) << 16 | 0xffULL << 32)
#define BG_DIRECT_W1 (0xffffULL << 48)

/* The direct shape's entry for the packet key `pk` in the overlay of a batch (overlay: a constant), then
 * in bg_cls_direct, or in bg_cls_short for a key that does not fit the array (di: direct_index()). */
static __always_inline struct bg_cls_val *direct_entry(__u8 id, const __u64 *pk, __u64 gen, __u64 di,
						       struct bg_cls_key *k, const int overlay)
{
	struct bg_cls_val *v = 0;
	__u64 *d = (__u64 *)k;

	if (overlay) {
		/* the short key of the direct shape: its mask has no address or class bits */
		d[0] = (pk[0] & BG_DIRECT_W0) | id | (gen | BG_GEN_OVERLAY) << 8;
		d[1] = pk[1] & BG_DIRECT_W1;
		d[2] = 0;
		d[3] = 0;
		v = bpf_map_lookup_elem(&bg_cls_short, k);
		if (!v && di >= BG_DIRECT_SLOTS) {
			d[0] &= ~(__u64)(BG_GEN_OVERLAY << 8);
			v = bpf_map_lookup_elem(&bg_cls_short, k);
		}
		asm volatile("" : "+r"(v)); /* the two maps' lookups stay apart (see best_rule) */
	}
	if (!v && di < BG_DIRECT_SLOTS) {
		v = direct_lookup(di, (__u64 *)k);
		if (v && !v->prio)
			v = 0;
	}
	return v;
}

/* The best rule of the shapes of `cf` for the packet key `pk` (stage 0 classes filled in). The key is read
 * as 64-bit words (the masks, the hash): it is written as whole words too, since a load that spans several
 * narrower stores still in flight waits for them (store forwarding fails). overlay (a constant at each
 * use): a batch of edits is being written; its overlay entries (key.gen | BG_GEN_OVERLAY) decide the keys
 * it changes, and prio BG_PRIO_NONE (never best) stands for "no entry". k: where the lookups' keys are built. */
static __always_inline __u32 best_rule(const struct bg_conf *cf, const __u64 *pk, __u64 gen, const int overlay,
				       struct bg_cls_key *k)
{
	__u32 best = 0xffffffff, rule = cf->default_rule, skip = 0;
	__u8 did = cf->direct;

	/* The direct shape first, wherever it is in the visit order (a hit only lowers `best`, which is what the
	 * early stop compares). Outside a batch only its entries that fit the array are read here: its filter
	 * holds only its keys in bg_cls_short (the compiler's), so the loop skips it unless the packet's key may
	 * be one of those; a test in the loop would be more states for the verifier. A generation without a
	 * direct shape has nothing in its part of the array. In a batch its overlay entry first (the loop then
	 * skips it). */
	if (!overlay) {
		struct bg_cls_val *v = direct_lookup(direct_index(pk[0], pk[1], gen), (__u64 *)k);

		if (v && v->prio) {
			best = v->prio;
			rule = v->rule_id;
		}
	} else if (did) {
		struct bg_cls_val *v = direct_entry(did, pk, gen, direct_index(pk[0], pk[1], gen), k, overlay);

		skip = BG_SHAPE_DIRECT;
		if (v && v->prio < best) {
			best = v->prio;
			rule = v->rule_id;
		}
	}
	for (int i = 0; i < BG_MAX_SHAPES; i++) {
		struct bg_cls_val *v;
		const __u64 *m = (const __u64 *)&cf->shapes[i].mask;
		__u64 *d = (__u64 *)k;
		__u8 id;

		if (i >= cf->nshapes || cf->shapes[i].best_prio >= best)
			break;
		/* no entry holds class 0 (an address in no class prefix): such a packet skips the shapes
		 * keyed on that class, often most of a blocklist's lookups */
		if (((__u32)m[6] && !(__u32)pk[6]) || ((m[6] >> 32) && !(pk[6] >> 32)))
			continue;
		/* the overlay's entries may be missing from the filter: it only speeds up the generation's own.
		 * An unfiltered shape's filter is all ones: one branch per shape (6.1's verifier budget) */
		if (!overlay && !filter_has(&cf->shapes[i], pk))
			continue;
		/* shape and gen are the first two bytes, zero in the packet key and in masks */
		id = cf->shapes[i].id;
		if (overlay && (id & skip))
			continue; /* the direct shape, looked up before the loop */
		d[0] = (pk[0] & m[0]) | id | gen << 8;
		d[1] = pk[1] & m[1];
		v = 0;
		if (id & BG_SHAPE_SHORT) {
			/* no address bits past src[0..3] and dst[0..3]: the 32-byte key, a shorter hash */
			d[2] = src4_dst4(pk[2] & m[2], pk[4] & m[4]);
			d[3] = pk[6] & m[6];
			if (overlay) {
				d[0] |= BG_GEN_OVERLAY << 8;
				v = bpf_map_lookup_elem(&bg_cls_short, k);
				d[0] &= ~(__u64)(BG_GEN_OVERLAY << 8);
			}
			if (!v)
				v = bpf_map_lookup_elem(&bg_cls_short, k);
			/* keeps the lookups of the two maps apart: clang would merge them into one call on either
			 * map, which the verifier then leaves to the generic helper (an indirect call) instead of
			 * inlining it */
			asm volatile("" : "+r"(v));
		} else {
			d[2] = pk[2] & m[2];
			d[3] = pk[3] & m[3];
			d[4] = pk[4] & m[4];
			d[5] = pk[5] & m[5];
			d[6] = pk[6] & m[6];
			if (overlay) {
				d[0] |= BG_GEN_OVERLAY << 8;
				v = bpf_map_lookup_elem(&bg_cls, k);
				d[0] &= ~(__u64)(BG_GEN_OVERLAY << 8);
			}
			if (!v)
				v = bpf_map_lookup_elem(&bg_cls, k);
		}
		if (v && v->prio < best) {
			best = v->prio;
			rule = v->rule_id;
		}
	}
	return rule;
}

/* The rule for the packet key in bg_cls_arg (stage 0 classes filled in) by the shapes of bg_conf[slot];
 * overlay: the bg_conf.overlay stage 0 saw. Global: verified once on its own, not once for each of the many
 * verifier states the parser and conntrack end in (with the direct read inline the programs with conntrack
 * went past 6.1's 1M instructions); scalar arguments only (a pointer argument needs Linux 5.12). */
__noinline __u32 bg_classify(__u32 slot, __u32 overlay)
{
	__u32 zero = 0;
	struct bg_conf *cf = bpf_map_lookup_elem(&bg_conf, &slot);
	struct bg_cls_arg *a = bpf_map_lookup_elem(&bg_cls_arg, &zero);

	if (!cf || !a)
		return 0xffffffff;
	if (overlay)
		return best_rule(cf, (const __u64 *)&a->pkt, cf->gen, 1, &a->k);
	return best_rule(cf, (const __u64 *)&a->pkt, cf->gen, 0, &a->k);
}

static __always_inline __u32 classify(struct bg_cls_key *pkt)
{
	__u32 zero = 0, slot, *active, overlay;
	struct bg_cls_arg *arg;
	struct bg_conf *cf;
	__u64 *pk = (__u64 *)pkt;
	__u64 gen;

	active = bpf_map_lookup_elem(&bg_active, &zero);
	slot = active ? (*active & 1) : 0;
	cf = bpf_map_lookup_elem(&bg_conf, &slot);
	if (!cf)
		return 0xffffffff;
	gen = cf->gen;
	overlay = cf->overlay;
	if (cf->trees && (pkt->have & BG_HAVE_L3)) {
		__u32 v6 = pkt->family == 6, src_cls = 0, dst_cls = 0, all = overlay;

		/* a batch's overlay entries may be of protocols tree_protos does not hold yet: every walk then.
		 * Bitwise: one branch per tree (6.1's verifier budget) */
		if ((cf->trees >> (BG_TREE_SRC4 + v6) & 1) & (all | bit256(cf->tree_protos[0], pkt->proto)))
			src_cls = prefix_class(pkt->src, gen, BG_TREE_SRC4 + v6);
		if ((cf->trees >> (BG_TREE_DST4 + v6) & 1) & (all | bit256(cf->tree_protos[1], pkt->proto)))
			dst_cls = prefix_class(pkt->dst, gen, BG_TREE_DST4 + v6);
		pk[6] = src_cls | (__u64)dst_cls << 32; /* src_cls, dst_cls */
	}
	arg = bpf_map_lookup_elem(&bg_cls_arg, &zero);
	if (!arg)
		return 0xffffffff;
	if (!overlay) {
		/* A hit in the direct array that no other shape can beat (the first of them in the visit order,
		 * best_prio ascending, has no lower prio) is the answer without bg_classify's call (~10 ns here,
		 * where every return pays the CPU's Safe RET mitigation). bg_classify reads the array again
		 * otherwise: handing it the hit as arguments took the 6.1 TC program with conntrack past 1M
		 * instructions. */
		struct bg_cls_val *v = direct_lookup(direct_index(pk[0], pk[1], gen), (__u64 *)&arg->k);

		if (v && v->prio) {
			__u32 j = cf->shapes[0].id >> 6 & 1; /* 1: shapes[0] is the direct shape (BG_SHAPE_DIRECT) */

			if (j >= cf->nshapes || cf->shapes[j].best_prio >= v->prio)
				return v->rule_id;
		}
	}
	arg->pkt = *pkt;
	return bg_classify(slot, overlay);
}

/* ---- actions -------------------------------------------------------------------------------------- */

/* Token bucket; credit is tokens * 1e9 so slow rates refill without rounding away. 1: within the rate. */
static __always_inline int bucket_refill_take(struct bg_bucket *b, __u64 rate, __u64 burst, __u64 cost, __u64 now)
{
	__u64 cap = burst * NSEC, elapsed, credit;
	int ok;

	if (!b->last_ns) {
		credit = cap;
	} else {
		elapsed = bg_ns_since(now, b->last_ns);
		if (elapsed > 10 * NSEC)
			elapsed = 10 * NSEC; /* bounds elapsed * rate; 10 s refills any bucket of rate <= 1.8e9 */
		credit = b->credit + elapsed * rate;
		if (credit > cap)
			credit = cap;
	}
	ok = credit >= cost;
	b->credit = ok ? credit - cost : credit;
	b->last_ns = now;
	return ok;
}

/* per-rule buckets (ARRAY) are exact under the lock; per-source buckets live in an LRU hash, where the
 * kernel allows no spin lock: concurrent CPUs may race on one source's bucket (approximate, never stuck) */
static __always_inline int bucket_take_locked(struct bg_bucket *b, __u64 rate, __u64 burst, __u64 cost, __u64 now)
{
	int ok;

	bpf_spin_lock(&b->lock);
	ok = bucket_refill_take(b, rate, burst, cost, now);
	bpf_spin_unlock(&b->lock);
	return ok;
}

static __always_inline int within_rate(__u32 rule_id, const struct bg_rule *r, const struct bg_cls_key *k,
				       __u32 len)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 cost = ((r->flags & BG_RF_RATE_BYTES) ? len : 1) * NSEC;
	struct bg_bucket *b;

	if (r->flags & BG_RF_RATE_PER_SRC) {
		struct bg_rate_src_key sk = {};

		sk.rule_id = rule_id;
		sk.family = k->family;
		__builtin_memcpy(sk.addr, k->src, 16);
		b = bpf_map_lookup_elem(&bg_rate_src, &sk);
		if (!b) {
			struct bg_bucket fresh = {};

			bpf_map_update_elem(&bg_rate_src, &sk, &fresh, BPF_NOEXIST);
			b = bpf_map_lookup_elem(&bg_rate_src, &sk);
			if (!b)
				return 1; /* table full under churn: fail open for this packet */
		}
		return bucket_refill_take(b, r->rate, r->burst, cost, now);
	}
	b = bpf_map_lookup_elem(&bg_rate_rule, &rule_id);
	if (!b)
		return 1;
	return bucket_take_locked(b, r->rate, r->burst, cost, now);
}

#include "reject.h" /* the reject action's replies: bg_rules, bg_reject_rate, bucket_refill_take, cfg_hook */

static __always_inline int log_allowed(__u32 rule_id, const struct bg_rule *r)
{
	struct bg_bucket *b = bpf_map_lookup_elem(&bg_log_rate, &rule_id);

	if (!b)
		return 0;
	return bucket_take_locked(b, r->log_rate, r->log_rate, NSEC, bpf_ktime_get_ns());   /* a second's worth at most */
}

static __always_inline void log_event(void *ctx, __u32 rule_id, __u8 action, const struct bg_cls_key *k,
				      __u32 len, __u32 ifindex)
{
	struct bg_rule_log_event ev = {};

	ev.hdr.type = BG_EV_RULE_LOG;
	ev.hdr.len = sizeof(ev);
	ev.hdr.cpu = bpf_get_smp_processor_id();
	ev.hdr.ts_ns = bpf_ktime_get_ns();
	ev.rule_id = rule_id;
	ev.ifindex = ifindex;
	ev.pkt_len = len;
	ev.action = action;
	ev.hook = cfg_hook;
	ev.family = k->family;
	ev.proto = k->proto;
	ev.sport = k->sport;
	ev.dport = k->dport;
	ev.ct_state = k->ct_state;
	ev.tcp_flags = k->tcp_flags;
	__builtin_memcpy(ev.src, k->src, 16);
	__builtin_memcpy(ev.dst, k->dst, 16);
	emit(ctx, &ev, sizeof(ev));
}

struct verdict {          /* 16 bytes: the tc program's frame has no room to spare (reject's call) */
	__u32 rule_id;
	__u32 ifindex;
	__u32 mark;       /* applied when has_mark */
	__u8 action;      /* enum bg_action; 0: no rule record (pass) */
	__u8 redir_ingress;
	__u8 has_mark;
	__u8 gone_drop;   /* the redirect target is gone: drop (else pass) */
};

/* A redirect whose target is gone: counted, and the rule's fallback (pass, or drop). */
static __always_inline int redirect_gone(const struct verdict *v)
{
	__u32 idx = v->gone_drop ? BG_REDIR_STAT_GONE_DROPPED : BG_REDIR_STAT_GONE_PASSED;
	__u64 *n = bpf_map_lookup_elem(&bg_redirect_stats, &idx);

	if (n)
		(*n)++;
	return v->gone_drop;
}

/* The whole decision for one packet: classify, count, log, rate-limit. */
static __always_inline void decide(void *ctx, struct bg_cls_key *k, __u32 len, __u32 ifindex, struct verdict *v)
{
	struct bg_rule *r;
	struct bg_counter *c;
	__u32 rid = classify(k);

	v->rule_id = rid;
	r = bpf_map_lookup_elem(&bg_rules, &rid);
	if (!r) {
		v->action = 0;
		return;
	}
	v->action = r->action;
	if ((r->flags & BG_RF_RATE) && !within_rate(rid, r, k, len))
		v->action = r->over_action;
	if (r->flags & BG_RF_COUNT) {
		c = bpf_map_lookup_elem(&bg_counters, &rid);
		if (c) {
			c->packets++;
			c->bytes += len;
		}
	}
	if ((r->flags & BG_RF_LOG) && log_allowed(rid, r))
		log_event(ctx, rid, v->action, k, len, ifindex);
	if (v->action == BG_ACT_REDIRECT) {
		v->ifindex = r->redirect_ifindex;
		v->redir_ingress = !!(r->flags & BG_RF_REDIR_INGRESS);
		v->gone_drop = !!(r->flags & BG_RF_REDIR_GONE_DROP);
	}
	if (r->flags & BG_RF_MARK) {
		v->has_mark = 1;
		v->mark = r->mark;
	}
}

/* ---- capture ------------------------------------------------------------------------------------- */

static __always_inline struct bg_capture_cfg *capture_wanted(__u32 rule_id)
{
	__u32 zero = 0;
	struct bg_capture_cfg *c = bpf_map_lookup_elem(&bg_capture_cfg, &zero);

	if (!c || !c->enabled)
		return 0;
	if (c->rule_id_plus_1 && c->rule_id_plus_1 != rule_id + 1)
		return 0;
	return c;
}

static __always_inline __u8 capture_verdict(__u8 action)
{
	return action == BG_ACT_DROP || action == BG_ACT_REJECT ? BG_VERDICT_DROP : action == BG_ACT_REDIRECT ? BG_VERDICT_REDIRECT
									 : BG_VERDICT_PASS;
}

/* Copy up to the snaplen of the packet with the engine's verdict into bg_capture_ring. xdp: ctx is an
 * xdp_md, else an __sk_buff. */
static __always_inline int capture_emit(void *ctx, int xdp, struct bg_capture_cfg *c, __u32 pkt_len, __u32 ifindex,
				   __u32 rule_id, __u8 verdict)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u64 len = pkt_len, snap = c->snaplen;
	struct bg_capture_event *ev;
	struct bg_capture_scratch *s;
	long err;

	s = bpf_map_lookup_elem(&bg_capture_scratch, &cpu);
	if (!s)
		return 0;
	if (len > snap)
		len = snap;
	asm volatile("" : "+r"(len));
	if (len == 0 || len > BG_ENGINE_CAPTURE_MAX)
		return 0;
	len = bg_len_nonzero(len);
	if (xdp && !BG_HAS_HELPER(xdp_load_bytes))
		err = -1; /* before Linux 5.18: EngineCapture refuses to capture at XDP, nothing gets here */
	else if (xdp)
		err = bpf_xdp_load_bytes(ctx, 0, s->buf + sizeof(*ev), len);
	else
		err = bpf_skb_load_bytes(ctx, 0, s->buf + sizeof(*ev), len);
	if (err < 0) {
		__sync_fetch_and_add(&c->lost, 1);
		return 0;
	}
	ev = (void *)s->buf;
	ev->hdr.type = BG_EV_CAPTURE;
	ev->hdr.len = sizeof(*ev) + len;
	ev->hdr.cpu = cpu;
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->ifindex = ifindex;
	ev->pkt_len = pkt_len;
	ev->cap_len = len;
	ev->rule_id = rule_id;
	ev->dir = cfg_hook == BG_ENGINE_TC_EGRESS ? BG_DIR_EGRESS : BG_DIR_INGRESS;
	ev->hook = BG_HOOK_GATE;
	ev->verdict = verdict;
	if (bpf_ringbuf_output(&bg_capture_ring, s, sizeof(*ev) + len, 0) < 0)
		__sync_fetch_and_add(&c->lost, 1);
	return 0;
}

static __noinline int capture_tc(struct __sk_buff *skb, struct bg_capture_cfg *c, __u32 rule_id, __u8 verdict)
{
	return capture_emit(skb, 0, c, skb->len, skb->ifindex, rule_id, verdict);
}

static __noinline int capture_xdp(struct xdp_md *ctx, struct bg_capture_cfg *c, __u32 rule_id, __u8 verdict)
{
	return capture_emit(ctx, 1, c, ctx->data_end - ctx->data, ctx->ingress_ifindex, rule_id, verdict);
}

/* ---- programs ------------------------------------------------------------------------------------- */

/* The classifier key of a parsed packet (ct_state and the stage 0 classes are set later). */
static __always_inline __u64 addr_word(const __u32 *a)
{
	return a[0] | (__u64)a[1] << 32;
}

/* The key's words 2..5: the addresses (IPv4 in the first 4 bytes of each, the rest 0); 0 without L3. */
static __always_inline void key_addrs(const struct bg_pkt *p, __u64 *w)
{
	w[0] = w[1] = w[2] = w[3] = 0;
	if (p->family == 4) {
		struct iphdr *ip = p->l3;

		if (ip && (void *)(ip + 1) <= p->end) {
			w[0] = ip->saddr;
			w[2] = ip->daddr;
		}
	} else if (p->family == 6) {
		struct ipv6hdr *ip6 = p->l3;

		if (ip6 && (void *)(ip6 + 1) <= p->end) {
			w[0] = addr_word(ip6->saddr.in6_u.u6_addr32);
			w[1] = addr_word(ip6->saddr.in6_u.u6_addr32 + 2);
			w[2] = addr_word(ip6->daddr.in6_u.u6_addr32);
			w[3] = addr_word(ip6->daddr.in6_u.u6_addr32 + 2);
		}
	}
}

/* The classifier key of a parsed packet, written as whole words (see classify); ct_state and the stage 0
 * classes are set later (key_set_ct, classify). */
static __always_inline void key_of(const struct bg_pkt *p, struct bg_cls_key *k)
{
	__u64 *w = (__u64 *)k;

	w[0] = (__u64)p->have << 16 | (__u64)p->family << 24 | (__u64)p->proto << 32 | (__u64)p->tcp_flags << 40 |
	       (__u64)p->icmp_type << 48 | (__u64)p->icmp_code << 56;
	w[1] = (__u64)p->vlan << 16 | (__u64)p->sport << 32 | (__u64)p->dport << 48;
	key_addrs(p, w + 2);
	w[6] = 0;
}

_Static_assert(__builtin_offsetof(struct bg_cls_key, have) == 2 && __builtin_offsetof(struct bg_cls_key, family) == 3 &&
	       __builtin_offsetof(struct bg_cls_key, proto) == 4 && __builtin_offsetof(struct bg_cls_key, tcp_flags) == 5 &&
	       __builtin_offsetof(struct bg_cls_key, icmp_type) == 6 && __builtin_offsetof(struct bg_cls_key, icmp_code) == 7 &&
	       __builtin_offsetof(struct bg_cls_key, ct_state) == 8 && __builtin_offsetof(struct bg_cls_key, vlan) == 10 &&
	       __builtin_offsetof(struct bg_cls_key, sport) == 12 && __builtin_offsetof(struct bg_cls_key, dport) == 14 &&
	       __builtin_offsetof(struct bg_cls_key, src) == 16 && __builtin_offsetof(struct bg_cls_key, dst) == 32,
	       "key_of() writes the key as these words");

/* A conntrack state into the key (none: the key stays without BG_HAVE_CT). */
static __always_inline void key_set_ct(struct bg_cls_key *k, __u8 ct_state)
{
	__u64 *w = (__u64 *)k;

	if (ct_state) {
		w[0] |= (__u64)BG_HAVE_CT << 16;
		w[1] |= ct_state;
	}
}

static __always_inline void tc_key(struct __sk_buff *skb, struct bg_cls_key *k, struct bg_pkt *p)
{
	bg_parse_skb(skb, p);
	key_of(p, k);
}

SEC("tc")
int bg_engine_tc(struct __sk_buff *skb)
{
	struct bg_capture_cfg *c;
	struct bg_cls_key k = {};
	struct bg_pkt p = {};
	struct verdict v = {};

	tc_key(skb, &k, &p);
	if (p.arp) {
		if (cfg_test_mark)
			skb->mark = 0;
		return TC_ACT_UNSPEC;
	}
	if (cfg_test_mark) {
		key_set_ct(&k, skb->mark & 7);
	} else if (cfg_ct) {
		__u32 zero = 0, *lo = bpf_map_lookup_elem(&bg_ct_lookup_only, &zero);
		__u8 dir = cfg_hook == BG_ENGINE_TC_EGRESS ? BG_DIR_EGRESS : BG_DIR_INGRESS;
		struct bg_ct_size sz;

		bg_ct_size_skb(skb, &p, &sz);
		key_set_ct(&k, bg_ct_packet(&p, &sz, skb->ifindex, dir, lo && *lo, 0, 0));
	}
	decide(skb, &k, skb->len, skb->ifindex, &v);
	c = capture_wanted(v.rule_id);
	if (c)
		capture_tc(skb, c, v.rule_id, capture_verdict(v.action));
	if (v.has_mark)
		skb->mark = v.mark;
	if (cfg_test_mark)
		skb->mark = v.rule_id + 1;
	if (v.action == BG_ACT_REJECT) {
		/* the reply (reject.h): one global function, verified once, its frame and the engine's within the
		 * 512-byte stack; it finds the headers itself (a packet pointer kept past the classifier would keep
		 * the parser's states apart through all of it) */
		int verdict = bg_reject(skb, v.rule_id);

		if (verdict >= 0)
			return verdict;
	}
	if (v.action == BG_ACT_DROP || v.action == BG_ACT_REJECT) {
		skb->cb[BG_CB_RULE_WORD] = BG_CB_RULE_MAGIC; /* `bpfgate trace drops` names the rule */
		skb->cb[BG_CB_RULE_WORD + 1] = v.rule_id + 1;
		return TC_ACT_SHOT;
	}
	if (v.action == BG_ACT_REDIRECT) {
		if (!bpf_map_lookup_elem(&bg_redirect_devs, &v.ifindex))
			return redirect_gone(&v) ? TC_ACT_SHOT : TC_ACT_UNSPEC;
		return bpf_redirect(v.ifindex, v.redir_ingress ? BPF_F_INGRESS : 0);
	}
	/* pass: the filters after the gate (the attempt log: bpfgate.attach.order) see what it let through.
	 * TC_ACT_OK would end the clsact chain there (TCX_PASS the TCX one); with no filter left the
	 * packet passes all the same. */
	return TC_ACT_UNSPEC;
}

SEC("xdp")
int bg_engine_xdp(struct xdp_md *ctx)
{
	struct bg_capture_cfg *c;
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct bg_cls_key k = {};
	struct bg_pkt p = {};
	struct verdict v = {};
	__u32 len = end - data;

	bg_parse(data, end, &p);
	if (p.arp)
		return XDP_PASS;
	key_of(&p, &k);
	if (cfg_ct && !cfg_test_mark) {
		struct bg_ct_size sz;

		bg_ct_size_xdp(&p, &sz);
		key_set_ct(&k, bg_ct_packet(&p, &sz, ctx->ingress_ifindex, BG_DIR_INGRESS, 0, 0, 0));
	}
	decide(ctx, &k, len, ctx->ingress_ifindex, &v);
	c = capture_wanted(v.rule_id);
	if (c)
		capture_xdp(ctx, c, v.rule_id, capture_verdict(v.action));
	if (v.action == BG_ACT_DROP || v.action == BG_ACT_REJECT) /* reject is refused at xdp: never here */
		return XDP_DROP;
	if (v.action == BG_ACT_REDIRECT) {
		/* through the devmap: a target the kernel removed falls back to the rule's action */
		long rc = bpf_redirect_map(&bg_redirect_devs, v.ifindex, v.gone_drop ? XDP_DROP : XDP_PASS);

		if (rc != XDP_REDIRECT)
			redirect_gone(&v);
		return rc;
	}
	return XDP_PASS;
}

/* cgroup_skb: the packets of the sockets of a cgroup (and its descendants), from the IP header on. The
 * same decision as at a device; the program answers 1 (let through) or 0 (drop): no redirect, no capture.
 * Multi-attached: other programs on the cgroup run too, and a packet goes only if every one lets it. */
static __always_inline int cgroup_gate(struct __sk_buff *skb, __u8 dir)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct bg_cls_key k = {};
	struct bg_pkt p = {};
	struct verdict v = {};

	bg_parse_ip(data, end, bpf_ntohs(skb->protocol), &p);
	key_of(&p, &k);
	if (cfg_ct && !cfg_test_mark) {
		struct bg_ct_size sz;

		bg_ct_size_skb(skb, &p, &sz);
		key_set_ct(&k, bg_ct_packet(&p, &sz, skb->ifindex, dir, 0, 0, 0));
	}
	decide(skb, &k, skb->len, skb->ifindex, &v);
	if (v.has_mark)
		skb->mark = v.mark;
	return v.action == BG_ACT_DROP || v.action == BG_ACT_REJECT ? 0 : 1; /* reject: refused here, fail closed */
}

SEC("cgroup_skb/ingress")
int bg_engine_cg_ingress(struct __sk_buff *skb)
{
	return cgroup_gate(skb, BG_DIR_INGRESS);
}

SEC("cgroup_skb/egress")
int bg_engine_cg_egress(struct __sk_buff *skb)
{
	return cgroup_gate(skb, BG_DIR_EGRESS);
}

/* Benchmark baseline: the cost of any cgroup program (bench/bench_cgroup.py). */
SEC("cgroup_skb/egress")
int bg_bench_cg_empty(struct __sk_buff *skb)
{
	return 1;
}

/* Socket policy (bpf_sock_addr): the address a process in the cgroup connects or sends to (dst, dst_port),
 * or binds (src, src_port), classified like a packet of that socket's protocol; a drop refuses the call
 * with EPERM at once. Counted as one packet of no bytes per call. */
/* v6: a constant per program; the verifier refuses user_ip6 in a *4 program even behind a branch */
static __always_inline int sock_gate(struct bpf_sock_addr *ctx, int bind, int v6)
{
	struct bg_cls_key k = {};
	struct verdict v = {};
	__u8 *addr = bind ? k.src : k.dst;
	__u32 ip[4] = {};
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	k.have = BG_HAVE_L3 | BG_HAVE_PROTO | BG_HAVE_PORTS;
	k.proto = ctx->protocol;
	k.family = v6 ? 6 : 4;
	if (v6) {
		ip[0] = ctx->user_ip6[0];
		ip[1] = ctx->user_ip6[1];
		ip[2] = ctx->user_ip6[2];
		ip[3] = ctx->user_ip6[3];
		__builtin_memcpy(addr, ip, 16); /* a memcpy: stores through a __u32 * into the __u8 arrays alias */
	} else {
		ip[0] = ctx->user_ip4;
		__builtin_memcpy(addr, ip, 4);
	}
	if (bind)
		k.sport = port;
	else
		k.dport = port;
	decide(ctx, &k, 0, 0, &v);
	return v.action == BG_ACT_DROP || v.action == BG_ACT_REJECT ? 0 : 1; /* reject: refused here, fail closed */
}

/* One program per socket call and family (bg_sock_<call>, section cgroup/<call>), each sock_gate: bind's port
 * is the source, connect's and sendmsg's the destination. */
#define BG_SOCK_GATE(call, bind, v6)                            \
	SEC("cgroup/" #call)                                    \
	int bg_sock_##call(struct bpf_sock_addr *ctx)           \
	{                                                       \
		return sock_gate(ctx, bind, v6);                \
	}

BG_SOCK_GATE(connect4, 0, 0)
BG_SOCK_GATE(connect6, 0, 1)
BG_SOCK_GATE(sendmsg4, 0, 0)
BG_SOCK_GATE(sendmsg6, 0, 1)
BG_SOCK_GATE(bind4, 1, 0)
BG_SOCK_GATE(bind6, 1, 1)

/* Conntrack only (the other direction of a gated interface): never decides, lets the next filter run. */
SEC("tc")
int bg_ct_track(struct __sk_buff *skb)
{
	struct bg_cls_key k = {};
	struct bg_pkt p = {};

	struct bg_ct_size sz;

	tc_key(skb, &k, &p);
	bg_ct_size_skb(skb, &p, &sz);
	bg_ct_packet(&p, &sz, skb->ifindex, BG_DIR_EGRESS, 0, 0, 0);
	return TC_ACT_UNSPEC;
}

/* Benchmark baselines: the empty-program floor and an LPM-trie-only filter (bench/bench_classifier.py). */
struct bg_lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct bg_lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 18);
	__type(key, struct bg_lpm_v4);
	__type(value, __u32);
} bg_bench_lpm4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 18);
	__type(key, struct bg_lpm_v6);
	__type(value, __u32);
} bg_bench_lpm6 SEC(".maps");

SEC("tc")
int bg_bench_empty(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("tc")
int bg_bench_lpm(struct __sk_buff *skb)
{
	struct bg_cls_key k = {};
	struct bg_pkt p = {};
	__u32 *hit = 0;

	tc_key(skb, &k, &p);
	if (k.family == 4) {
		struct bg_lpm_v4 lk = { .prefixlen = 32 };

		__builtin_memcpy(lk.addr, k.src, 4);
		hit = bpf_map_lookup_elem(&bg_bench_lpm4, &lk);
	} else if (k.family == 6) {
		struct bg_lpm_v6 lk = { .prefixlen = 128 };

		__builtin_memcpy(lk.addr, k.src, 16);
		hit = bpf_map_lookup_elem(&bg_bench_lpm6, &lk);
	}
	return hit && *hit ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
