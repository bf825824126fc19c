// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * sockmap acceleration of local TCP between opted-in sockets.
 *
 * bg_accel_sockops (sock_ops, on the opted-in cgroup): an established socket whose peer address is one of
 * this machine's (remote address == local address, or IPv4 loopback) and whose local or remote port is
 * opted in goes into bg_accel_socks under its own 4-tuple. Nothing else is touched: sockets of other
 * cgroups never reach this program, and a socket of the cgroup that does not match stays out of the map.
 *
 * bg_accel_msg (sk_msg, on bg_accel_socks): each message is redirected into the receive queue of the
 * socket under the swapped key (the peer). When the peer is not in the map (its process is outside the
 * cgroup, or it was refused) or the accelerator drains, the message goes the normal TCP way.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "accel.h"
#include "bg_sockkey.h"

#define AF_INET 2
#define AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, BG_ACCEL_SOCKS_MAX);
	__type(key, struct bg_accel_key);
	__type(value, __u64);
} bg_accel_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bg_accel_cfg);
} bg_accel_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BG_ACCEL_PORTS_MAX);
	__type(key, __u32);
	__type(value, __u8);
} bg_accel_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bg_accel_stats);
} bg_accel_stats SEC(".maps");

static __always_inline struct bg_accel_stats *stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&bg_accel_stats, &zero);
}

static __always_inline __u32 mode(void)
{
	__u32 zero = 0;
	struct bg_accel_cfg *c = bpf_map_lookup_elem(&bg_accel_cfg, &zero);

	return c ? c->mode : 0;
}

/* the socket's own key; 0 when it is not a local connection bpfgate may accelerate */
static __always_inline int own_key(struct bpf_sock_ops *skops, struct bg_accel_key *k)
{
	k->lport = skops->local_port;
	k->rport = bpf_ntohl(skops->remote_port); /* network order in the upper half */
	if (skops->family == AF_INET) {
		__u32 l = skops->local_ip4, r = skops->remote_ip4;

		if (l != r && (bpf_ntohl(r) >> 24) != 127)
			return 0;
		k->family = 4;
		*(__u32 *)k->laddr = l;
		*(__u32 *)k->raddr = r;
		return 1;
	}
	if (skops->family == AF_INET6) {
		__u32 *l = (__u32 *)k->laddr, *r = (__u32 *)k->raddr;

		/* one constant-offset ctx load each: the verifier refuses a ctx pointer moved by a loop index */
		l[0] = skops->local_ip6[0];
		l[1] = skops->local_ip6[1];
		l[2] = skops->local_ip6[2];
		l[3] = skops->local_ip6[3];
		r[0] = skops->remote_ip6[0];
		r[1] = skops->remote_ip6[1];
		r[2] = skops->remote_ip6[2];
		r[3] = skops->remote_ip6[3];
		if (l[0] != r[0] || l[1] != r[1] || l[2] != r[2] || l[3] != r[3])
			return 0;
		k->family = 6;
		return 1;
	}
	return 0;
}

SEC("sockops")
int bg_accel_sockops(struct bpf_sock_ops *skops)
{
	struct bg_accel_key k = {};
	struct bg_accel_stats *st;
	__u32 m;

	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	m = mode();
	if (!(m & BG_ACCEL_ON) || (m & BG_ACCEL_DRAIN) || !own_key(skops, &k))
		return 1;
	if (!(m & BG_ACCEL_ALL_PORTS) && !bpf_map_lookup_elem(&bg_accel_ports, &k.lport)
	    && !bpf_map_lookup_elem(&bg_accel_ports, &k.rport))
		return 1;
	st = stats();
	if (bpf_sock_hash_update(skops, &bg_accel_socks, &k, BPF_NOEXIST) == 0) {
		if (st)
			st->sockets++;
	} else if (st) {
		st->add_failed++;
	}
	return 1;
}

SEC("sk_msg")
int bg_accel_msg(struct sk_msg_md *msg)
{
	struct bg_accel_stats *st = stats();
	struct bg_accel_key peer = {};
	__u32 size = msg->size;

	if (mode() & BG_ACCEL_DRAIN)
		goto pass;
	BG_SOCK_KEY(peer, msg, remote, local); /* the peer's key: its local end is our remote one */
	/* SK_DROP here means "no such peer" (nothing was redirected): the message then goes the normal way */
	if (bpf_msg_redirect_hash(msg, &bg_accel_socks, &peer, BPF_F_INGRESS) == SK_PASS) {
		if (st) {
			st->redirected++;
			st->redirected_bytes += size;
		}
		return SK_PASS;
	}
pass:
	if (st)
		st->passed++;
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
