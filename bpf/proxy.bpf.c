// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * Kernel splice proxy: sk_skb stream parser + verdict on a sockhash of (client, backend) socket pairs.
 * The parser takes each skb whole (no framing: a byte stream); the verdict looks up the socket's peer
 * (bg_proxy_peer, written by Python when it pairs them) and redirects the data to the peer's egress, counting
 * the bytes per source socket so that Python can tell when everything received has been handed to the peer
 * before it passes a FIN on (a half-close must never overtake the data).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "proxy.h"
#include "bg_sockkey.h"

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, BG_PROXY_SOCKS_MAX);
	__type(key, struct bg_accel_key);
	__type(value, __u64);
} bg_proxy_socks SEC(".maps");

/* socket -> its peer's key */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BG_PROXY_SOCKS_MAX);
	__type(key, struct bg_accel_key);
	__type(value, struct bg_accel_key);
} bg_proxy_peer SEC(".maps");

/* socket -> bytes it received that went to its peer */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BG_PROXY_SOCKS_MAX);
	__type(key, struct bg_accel_key);
	__type(value, __u64);
} bg_proxy_bytes SEC(".maps");

SEC("sk_skb/stream_parser")
int bg_proxy_parser(struct __sk_buff *skb)
{
	return skb->len;
}

SEC("sk_skb/stream_verdict")
int bg_proxy_verdict(struct __sk_buff *skb)
{
	struct bg_accel_key own = {};
	struct bg_accel_key *peer;
	__u64 *n;
	__u32 len = skb->len;

	BG_SOCK_KEY(own, skb, local, remote);
	peer = bpf_map_lookup_elem(&bg_proxy_peer, &own);
	if (!peer)
		return SK_PASS; /* not paired (yet): the data stays with the socket, Python forwards it */
	if (bpf_sk_redirect_hash(skb, &bg_proxy_socks, peer, 0) != SK_PASS)
		return SK_PASS;
	n = bpf_map_lookup_elem(&bg_proxy_bytes, &own);
	if (n)
		__sync_fetch_and_add(n, len);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
