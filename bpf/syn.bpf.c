// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * SYN counter at XDP: counts SYNs (SYN without ACK) per interface and per source, detects sources
 * above a rate (SYNs per second) and, when configured, drops them for a while.
 *
 * The block list (syn_blocklist: source -> CLOCK_MONOTONIC expiry) is its own map so the policy
 * engine can own it later (reuse_map): the datapath only drops while now < expiry, so a block ends on
 * time even if nobody deletes the entry.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "syn.h"
#include "parse.h"
#include "bg_emit.h"
#include "bg_compat.h"

#define NSEC_PER_SEC 1000000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bg_syn_config);
} syn_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct bg_syn_total);
} syn_totals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct bg_syn_src_key);
	__type(value, struct bg_syn_src);
} syn_sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct bg_src_key);
	__type(value, __u64);
} syn_blocklist SEC(".maps");

static __always_inline struct bg_syn_total *total_of(__u32 ifindex)
{
	struct bg_syn_total *t = bpf_map_lookup_elem(&syn_totals, &ifindex);
	struct bg_syn_total zero = {};

	if (t)
		return t;
	bpf_map_update_elem(&syn_totals, &ifindex, &zero, BPF_NOEXIST); /* EEXIST: another CPU won */
	return bpf_map_lookup_elem(&syn_totals, &ifindex);
}

static __always_inline struct bg_syn_src *source_of(struct bg_syn_src_key *key, __u64 now)
{
	struct bg_syn_src *s = bpf_map_lookup_elem(&syn_sources, key);
	struct bg_syn_src fresh = {.window_start_ns = now};

	if (s)
		return s;
	bpf_map_update_elem(&syn_sources, key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&syn_sources, key);
}

static __always_inline void report(void *ctx, __u32 ifindex, struct bg_src_key *src, __u64 now,
				   __u64 window_syns, __u64 rate, __u64 until)
{
	struct bg_syn_flood_event ev = {};

	ev.hdr.type = BG_EV_SYN_FLOOD;
	ev.hdr.len = sizeof(ev);
	ev.hdr.cpu = bpf_get_smp_processor_id();
	ev.hdr.ts_ns = now;
	ev.ifindex = ifindex;
	ev.src = *src;
	ev.window_syns = window_syns;
	ev.rate = rate;
	ev.block_until_ns = until;
	emit(ctx, &ev, sizeof(ev));
}

/* Flood detector: fixed one-second windows per source; one event per window over the rate. */
static __always_inline void detect(void *ctx, struct bg_syn_src *s, struct bg_syn_src_key *key, __u64 now)
{
	__u32 zero = 0;
	struct bg_syn_config *cfg = bpf_map_lookup_elem(&syn_config, &zero);
	__u64 start, n, until = 0;

	if (!cfg || !cfg->rate)
		return;
	start = s->window_start_ns;
	if (bg_ns_since(now, start) >= NSEC_PER_SEC) {
		s->window_start_ns = now;
		s->window_syns = 0;
		start = now;
	}
	n = __sync_fetch_and_add(&s->window_syns, 1) + 1;
	if (n <= cfg->rate || s->reported == start)
		return;
	s->reported = start;
	if (cfg->block_ns) {
		until = now + cfg->block_ns;
		if (bpf_map_update_elem(&syn_blocklist, &key->src, &until, BPF_ANY))
			until = 0; /* block list full: the event says "not blocked", truthfully */
	}
	report(ctx, key->ifindex, &key->src, now, n, cfg->rate, until);
}

SEC("xdp")
int bg_syn_xdp(struct xdp_md *ctx)
{
	struct bg_syn_src_key key = {};
	struct bg_pkt p = {};
	struct bg_syn_total *t;
	struct bg_syn_src *s;
	__u64 now, *until;

	bg_parse_xdp(ctx, &p);
	if (!bg_pkt_is_syn(&p))
		return XDP_PASS;
	/* CLOCK_MONOTONIC_COARSE (one jiffy resolution): enough for 1 s windows and block expiry, and
	 * ~23 ns cheaper per SYN than bpf_ktime_get_ns() here (bench/bench_syn_cost.py). Before Linux 5.11
	 * (no coarse helper) the same clock at full resolution. */
	now = BG_HAS_HELPER(ktime_get_coarse_ns) ? bpf_ktime_get_coarse_ns() : bpf_ktime_get_ns();
	key.ifindex = ctx->ingress_ifindex;
	key.src.family = p.family;
	bg_pkt_addrs(&p, key.src.addr, 0);

	t = total_of(key.ifindex);
	if (t)
		t->syns++; /* per-CPU: no atomics needed */
	s = source_of(&key, now);
	if (s) {
		__sync_fetch_and_add(&s->syns, 1);
		s->last_ns = now;
	}

	until = bpf_map_lookup_elem(&syn_blocklist, &key.src);
	if (until) {
		if (now < *until) {
			if (t)
				t->blocked++;
			return XDP_DROP;
		}
		bpf_map_delete_elem(&syn_blocklist, &key.src); /* expired: released */
	}
	if (s)
		detect(ctx, s, &key, now);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
