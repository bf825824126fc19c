// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * TCP tuning per cgroup: a sock_ops program sets congestion control and buffer sizes when a socket of the
 * cgroup connects or listens (before the handshake, so the window scales to the buffers), and no-delay and
 * the initial congestion window once it is established (both sides: sockets accepted from a listener of the
 * cgroup too; TCP_BPF_IW only holds before the first data segment, which is the case then).
 *
 * With samples on, an established socket asks the kernel for its RTT, retransmit and state callbacks: each
 * RTT sample lands in a per-CPU histogram (and as an event, at most one per connection per sample_gap_ms),
 * each retransmission and each connection's end as an event, so a user sees what a change did.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "tune.h"

#define BG_EVENTS_SIZE (256 * 1024)
#include "bg_emit.h"

#define SOL_SOCKET 1
#define SO_SNDBUF 7
#define SO_RCVBUF 8
#define SOL_TCP 6
#define TCP_NODELAY 1
#define TCP_CONGESTION 13
#define AF_INET 2
#define AF_INET6 10
#define BG_TCP_CLOSE 7 /* TCP_CLOSE: enum in the kernel, not in vmlinux.h under a usable name */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bg_tune_cfg);
} bg_tune_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bg_tune_stats);
} bg_tune_stats SEC(".maps");

/* per sampled connection: when its last RTT event went out */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} bg_tune_last_rtt SEC(".maps");

static __always_inline void set_int(struct bpf_sock_ops *skops, int level, int name, int val, struct bg_tune_stats *st)
{
	if (bpf_setsockopt(skops, level, name, &val, sizeof(val)) < 0 && st)
		st->failed++;
}

static __always_inline __u32 log2_bucket(__u32 us)
{
	__u32 b = 0;

	/* bounded loop: the smallest i with us < 2^i, capped at the last bucket */
	for (int i = 0; i < BG_TUNE_RTT_BUCKETS - 1; i++)
		if (us >= (1u << i))
			b = i + 1;
	return b;
}

static __always_inline void sample(struct bpf_sock_ops *skops, __u8 kind)
{
	struct bg_tune_event ev = {};

	ev.hdr.type = BG_EV_TUNE;
	ev.hdr.len = sizeof(ev);
	ev.hdr.cpu = bpf_get_smp_processor_id();
	ev.hdr.ts_ns = bpf_ktime_get_ns();
	ev.kind = kind;
	ev.sport = (__u16)skops->local_port;
	ev.dport = (__u16)bpf_ntohl(skops->remote_port); /* network order in the upper half */
	if (skops->family == AF_INET) {
		ev.family = 4;
		*(__u32 *)ev.saddr = skops->local_ip4;
		*(__u32 *)ev.daddr = skops->remote_ip4;
	} else {
		ev.family = 6;
		__u32 *s = (__u32 *)ev.saddr, *d = (__u32 *)ev.daddr;

		/* one constant-offset ctx load each: the verifier refuses a ctx pointer moved by a loop index */
		s[0] = skops->local_ip6[0];
		s[1] = skops->local_ip6[1];
		s[2] = skops->local_ip6[2];
		s[3] = skops->local_ip6[3];
		d[0] = skops->remote_ip6[0];
		d[1] = skops->remote_ip6[1];
		d[2] = skops->remote_ip6[2];
		d[3] = skops->remote_ip6[3];
	}
	ev.srtt_us = skops->srtt_us >> 3; /* the kernel keeps it scaled by 8 */
	ev.snd_cwnd = skops->snd_cwnd;
	ev.total_retrans = skops->total_retrans;
	ev.bytes_acked = skops->bytes_acked;
	ev.bytes_received = skops->bytes_received;
	emit(skops, &ev, sizeof(ev));
}

static __always_inline void on_rtt(struct bpf_sock_ops *skops, struct bg_tune_cfg *c, struct bg_tune_stats *st)
{
	struct bpf_sock *sk = skops->sk;
	__u64 now, *last;

	if (st) {
		__u32 b = log2_bucket(skops->srtt_us >> 3);

		st->rtt_samples++;
		if (b < BG_TUNE_RTT_BUCKETS)
			st->rtt_hist[b]++;
	}
	if (!sk)
		return;
	last = bpf_sk_storage_get(&bg_tune_last_rtt, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!last)
		return;
	now = bpf_ktime_get_ns();
	if (*last && bg_ns_since(now, *last) < (__u64)c->sample_gap_ms * 1000000)
		return;
	*last = now;
	sample(skops, BG_TUNE_EV_RTT);
}

SEC("sockops")
int bg_tune_sockops(struct bpf_sock_ops *skops)
{
	__u32 zero = 0, op = skops->op;
	struct bg_tune_cfg *c = bpf_map_lookup_elem(&bg_tune_cfg, &zero);
	struct bg_tune_stats *st = bpf_map_lookup_elem(&bg_tune_stats, &zero);

	if (!c)
		return 1;
	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		if (c->flags & BG_TUNE_CC) {
			char cc[BG_TUNE_CC_MAX];

			__builtin_memcpy(cc, c->cc, sizeof(cc));
			if (bpf_setsockopt(skops, SOL_TCP, TCP_CONGESTION, cc, sizeof(cc)) < 0 && st)
				st->failed++;
		}
		if (c->flags & BG_TUNE_SNDBUF)
			set_int(skops, SOL_SOCKET, SO_SNDBUF, c->sndbuf, st);
		if (c->flags & BG_TUNE_RCVBUF)
			set_int(skops, SOL_SOCKET, SO_RCVBUF, c->rcvbuf, st);
		if (st)
			st->tuned++;
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (c->flags & BG_TUNE_NODELAY)
			set_int(skops, SOL_TCP, TCP_NODELAY, 1, st);
		if (c->flags & BG_TUNE_IW)
			set_int(skops, SOL_TCP, TCP_BPF_IW, c->iw, st);
		/* nonzero: flags this kernel does not know (older than the callback): counted as refused */
		if ((c->flags & BG_TUNE_SAMPLES)
		    && bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG
						 | BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG) && st)
			st->failed++;
		break;
	case BPF_SOCK_OPS_RTT_CB:
		on_rtt(skops, c, st);
		break;
	case BPF_SOCK_OPS_RETRANS_CB:
		/* args: seq, segments, error: count segments sent again, as the kernel's total_retrans does */
		if (st && skops->args[2] == 0)
			st->retransmits += skops->args[1];
		sample(skops, BG_TUNE_EV_RETRANS);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BG_TCP_CLOSE) {
			if (st)
				st->ended++;
			sample(skops, BG_TUNE_EV_END);
		}
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
