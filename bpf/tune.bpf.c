// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * TCP tuning per cgroup: a sock_ops program sets congestion control and buffer sizes when a socket of the
 * cgroup connects or listens (before the handshake, so the window scales to the buffers), and no-delay
 * once it is established (both sides: sockets accepted from a listener of the cgroup too).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "tune.h"

#define SOL_SOCKET 1
#define SO_SNDBUF 7
#define SO_RCVBUF 8
#define SOL_TCP 6
#define TCP_NODELAY 1
#define TCP_CONGESTION 13

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

static __always_inline void set_int(struct bpf_sock_ops *skops, int level, int name, int val, struct bg_tune_stats *st)
{
	if (bpf_setsockopt(skops, level, name, &val, sizeof(val)) < 0 && st)
		st->failed++;
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
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
