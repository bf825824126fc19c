// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/*
 * TCP connection lifecycle from tracepoints, for kernels without kprobes: connect, accept, close
 * (duration, bytes, final state), failed connects with their cause, retransmits and resets.
 *
 * The owner PID problem: sock:inet_sock_set_state often fires in softirq context (the final CLOSE of
 * a connection, the passive ESTABLISHED), where the "current" task is whoever was interrupted. So the
 * owner is only taken where the transition runs in the owner's process context and carried with the
 * socket in `socks` (keyed by sk address):
 *   CLOSE -> SYN_SENT          connect()
 *   CLOSE -> LISTEN            listen(): remembered per (netns, port) in `listeners`; a child socket
 *                              (LISTEN -> SYN_RECV, softirq) inherits its listener's owner
 *   -> FIN_WAIT1 / -> LAST_ACK close()/shutdown(): the process that holds the fd now
 *
 * Every hook exists twice: tp_btf (BTF-typed raw tracepoint, preferred) and a classic tracepoint
 * (needs tracefs). Python enables one of each pair with set_autoload, by what the kernel has.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "trace.h"
#include "bg_stats.h"
#include "bg_batched_ring.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* set before load: trace only the network namespaces (inode numbers) in `netns_filter` */
const volatile __u32 cfg_netns_filter = 0;

/* set before load: which events to emit, bit (1 << enum bg_tcp_kind); fewer events, less to consume */
const volatile __u32 cfg_kinds = ~0U;

/* sk address -> owner; an LRU so sockets we never see close (tracing started mid-way) age out */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct bg_sock_owner);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct bg_listen_key);
	__type(value, struct bg_sock_owner);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} netns_filter SEC(".maps");

static __always_inline bool netns_wanted(__u32 netns)
{
	return !cfg_netns_filter || bpf_map_lookup_elem(&netns_filter, &netns);
}

/*
 * Field access. tp_btf hands us BTF-typed pointers: plain loads (the verifier makes them fault-safe),
 * nearly free. A classic tracepoint gives a bare address: one bpf_probe_read_kernel per field (~20 ns
 * each, most of this program's cost). `direct` is a constant in each program, so after inlining each
 * keeps only its own kind of access.
 */
#define RD(direct, p, field) ((direct) ? (p)->field : BPF_CORE_READ(p, field))

static __always_inline __u32 sk_netns(const struct sock *sk, const bool direct)
{
	return direct ? sk->__sk_common.skc_net.net->ns.inum : BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* the tcp_sock of a full socket, NULL for request/timewait sockets (they are smaller) */
static __always_inline const struct tcp_sock *tcp_of(const struct sock *sk, const bool direct)
{
	__u8 state;

	if (direct)
		return bpf_skc_to_tcp_sock((void *)sk);
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	return state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV ? NULL : (const struct tcp_sock *)sk;
}

static __always_inline void owner_from_current(struct bg_sock_owner *o)
{
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline struct bg_tcp_event *reserve(__u8 kind)
{
	struct bg_tcp_event *ev;

	if (!(cfg_kinds & (1U << kind)))
		return NULL;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);

	if (!ev) {
		stat_inc(BG_STAT_EVENTS_LOST);
		return NULL;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.type = BG_EV_TCP;
	ev->hdr.len = sizeof(*ev);
	ev->hdr.cpu = bpf_get_smp_processor_id();
	ev->hdr.ts_ns = bpf_ktime_get_ns();
	ev->kind = kind;
	return ev;
}

static __always_inline void submit(struct bg_tcp_event *ev)
{
	bpf_ringbuf_submit(ev, wakeup_flag(sizeof(struct bg_tcp_event)));
	stat_inc(BG_STAT_EVENTS);
}

/* local end in saddr/sport, remote in daddr/dport, as `ss` shows them */
static __always_inline void flow_from_sk(struct bg_tcp_event *ev, const struct sock *sk,
					 const struct tcp_sock *tp, const bool direct)
{
	ev->sk = (__u64)sk;
	ev->family = RD(direct, sk, __sk_common.skc_family);
	/* inet_sport outlives the bound port (skc_num is 0 once the port is released at close) */
	if (tp)
		ev->sport = bpf_ntohs(RD(direct, tp, inet_conn.icsk_inet.inet_sport));
	if (!ev->sport)
		ev->sport = RD(direct, sk, __sk_common.skc_num);
	ev->dport = bpf_ntohs(RD(direct, sk, __sk_common.skc_dport));
	ev->netns = sk_netns(sk, direct);
	if (ev->family == AF_INET6 && direct) {
		__builtin_memcpy(ev->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(ev->daddr, &sk->__sk_common.skc_v6_daddr, 16);
	} else if (ev->family == AF_INET6) {
		BPF_CORE_READ_INTO(&ev->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&ev->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		*(__u32 *)ev->saddr = RD(direct, sk, __sk_common.skc_rcv_saddr);
		*(__u32 *)ev->daddr = RD(direct, sk, __sk_common.skc_daddr);
	}
}

static __always_inline void put_owner(struct bg_tcp_event *ev, const struct bg_sock_owner *o)
{
	if (!o)
		return;
	ev->pid = o->pid;
	ev->cgroup_id = o->cgroup_id;
	ev->owner_flags = o->flags;
	__builtin_memcpy(ev->comm, o->comm, sizeof(ev->comm));
}

static __always_inline void emit(const struct sock *sk, __u8 kind, int old, int new,
				 struct bg_sock_owner *o, __u64 now, const bool direct)
{
	const struct tcp_sock *tp = tcp_of(sk, direct);
	struct bg_tcp_event *ev = reserve(kind);

	if (!ev)
		return;
	flow_from_sk(ev, sk, tp, direct);
	put_owner(ev, o);
	ev->old_state = old;
	ev->new_state = new;
	if (o && o->start_ns)
		ev->duration_ns = now - o->start_ns;
	if (kind == BG_TCP_CLOSE && tp) {
		/* payload only: bytes_acked/bytes_received also count SYN and FIN sequence numbers;
		 * bytes_sent counts payload including retransmissions */
		ev->bytes_sent = RD(direct, tp, bytes_sent) - RD(direct, tp, bytes_retrans);
		ev->bytes_received = RD(direct, tp, bytes_received);
		if (ev->bytes_received && (RD(direct, sk, __sk_common.skc_flags) & (1UL << SOCK_DONE)))
			ev->bytes_received--; /* the peer's FIN (SOCK_DONE: tcp_fin() ran) */
	} else if (kind == BG_TCP_CONNECT_FAIL) {
		int err = RD(direct, sk, sk_err);

		ev->error = err ? err : RD(direct, sk, sk_err_soft);
	}
	submit(ev);
}

static __always_inline void on_state(const struct sock *sk, int old, int new, const bool direct)
{
	__u64 key = (__u64)sk, now = bpf_ktime_get_ns();
	struct bg_sock_owner fresh = {}, *o;

	if (RD(direct, sk, sk_protocol) != IPPROTO_TCP)
		return;
	if (cfg_netns_filter && !netns_wanted(sk_netns(sk, direct)))
		return;

	if (new == TCP_LISTEN || old == TCP_LISTEN) {
		struct bg_listen_key lk = {.netns = sk_netns(sk, direct), .port = RD(direct, sk, __sk_common.skc_num)};

		if (new == TCP_LISTEN) { /* listen(): process context */
			owner_from_current(&fresh);
			bpf_map_update_elem(&listeners, &lk, &fresh, BPF_ANY);
		} else if (new == TCP_SYN_RECV) { /* a child of the listener, in softirq */
			o = bpf_map_lookup_elem(&listeners, &lk);
			if (o)
				fresh = *o;
			fresh.start_ns = now;
			fresh.flags = BG_OWNER_PASSIVE;
			bpf_map_update_elem(&socks, &key, &fresh, BPF_ANY);
		} else if (new == TCP_CLOSE) {
			bpf_map_delete_elem(&listeners, &lk);
		}
		return;
	}

	switch (new) {
	case TCP_SYN_SENT: /* connect(): process context */
		owner_from_current(&fresh);
		fresh.start_ns = now;
		fresh.flags = BG_OWNER_ACTIVE;
		bpf_map_update_elem(&socks, &key, &fresh, BPF_ANY);
		return;
	case TCP_ESTABLISHED:
		if (old == TCP_SYN_SENT || old == TCP_SYN_RECV)
			emit(sk, old == TCP_SYN_SENT ? BG_TCP_CONNECT : BG_TCP_ACCEPT, old, new,
			     bpf_map_lookup_elem(&socks, &key), now, direct);
		return;
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK: /* close()/shutdown(): the process holding the socket now */
		o = bpf_map_lookup_elem(&socks, &key);
		if (!o) { /* opened before tracing began: owner known from here on, duration not */
			owner_from_current(&fresh);
			fresh.flags = BG_OWNER_CLOSER;
			bpf_map_update_elem(&socks, &key, &fresh, BPF_NOEXIST);
		} else if (!o->pid || (o->flags & BG_OWNER_PASSIVE)) {
			/* a listener's owner is a guess for its children (pre-fork servers): the closer knows */
			owner_from_current(o);
			o->flags |= BG_OWNER_CLOSER;
		}
		return;
	case TCP_CLOSE:
		o = bpf_map_lookup_elem(&socks, &key);
		if (old == TCP_SYN_SENT)
			emit(sk, BG_TCP_CONNECT_FAIL, old, new, o, now, direct);
		else if (old != TCP_SYN_RECV && old != TCP_CLOSE)
			emit(sk, BG_TCP_CLOSE, old, new, o, now, direct);
		if (o)
			bpf_map_delete_elem(&socks, &key);
		return;
	}
}

static __always_inline void on_sk_event(const struct sock *sk, __u8 kind, __u32 error, const bool direct)
{
	const struct tcp_sock *tp;
	__u64 key = (__u64)sk;
	struct bg_tcp_event *ev;

	if (cfg_netns_filter && !netns_wanted(sk_netns(sk, direct)))
		return;
	tp = tcp_of(sk, direct);
	ev = reserve(kind);

	if (!ev)
		return;
	flow_from_sk(ev, sk, tp, direct);
	put_owner(ev, bpf_map_lookup_elem(&socks, &key));
	ev->old_state = ev->new_state = RD(direct, sk, __sk_common.skc_state);
	ev->error = error;
	submit(ev);
}

/* RST sent for a segment that matched no socket (closed port): the flow comes from the segment */
static __always_inline void on_reset_nosk(const struct sk_buff *skb, __u32 reason)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header), th = BPF_CORE_READ(skb, transport_header);
	__u16 proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	__u32 netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	struct bg_tcp_event *ev;
	struct tcphdr tcp;

	if (!netns_wanted(netns) || bpf_probe_read_kernel(&tcp, sizeof(tcp), head + th) < 0)
		return;
	ev = reserve(BG_TCP_RESET_TX);
	if (!ev)
		return;
	ev->error = reason;
	ev->netns = netns;
	ev->sport = bpf_ntohs(tcp.dest); /* we are the segment's destination */
	ev->dport = bpf_ntohs(tcp.source);
	if (proto == ETH_P_IP) {
		struct iphdr ip;

		bpf_probe_read_kernel(&ip, sizeof(ip), head + nh);
		ev->family = AF_INET;
		__builtin_memcpy(ev->saddr, &ip.daddr, 4);
		__builtin_memcpy(ev->daddr, &ip.saddr, 4);
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;

		bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh);
		ev->family = AF_INET6;
		__builtin_memcpy(ev->saddr, &ip6.daddr, 16);
		__builtin_memcpy(ev->daddr, &ip6.saddr, 16);
	}
	submit(ev);
}

static __always_inline void on_send_reset(const struct sock *sk, const struct sk_buff *skb, __u32 reason,
					  const bool direct)
{
	/* sk is a full socket, a request or a timewait socket: only full sockets have an owner entry, and
	 * the flow fields read below sit in sock_common, which all three share */
	if (sk)
		on_sk_event(sk, BG_TCP_RESET_TX, reason, direct);
	else if (skb)
		on_reset_nosk(skb, reason);
}

/*
 * Arguments newer than Debian 12's 6.1, read only where the running kernel has them. A tracepoint's
 * classic struct gained each field together with the tp_btf argument, so one CO-RE check serves both
 * backends (bpfgate.trace.tcp.HOOKS names them for the report of what is lost).
 *   err of tcp_retransmit_skb: Linux 6.17 (before, the tracepoint fired for successful retransmits only)
 *   reason of tcp_send_reset: Linux 6.10 (which also traces resets sent without a socket; 6.1 does not)
 */
#define HAS_RETRANS_ERR bpf_core_field_exists(struct trace_event_raw_tcp_retransmit_skb, err)
#define HAS_RST_REASON bpf_core_field_exists(struct trace_event_raw_tcp_send_reset, reason)

/* Before those fields, both tracepoints shared this event class (its name is matched up to "___"). */
struct trace_event_raw_tcp_event_sk_skb___old {
	const void *skbaddr;
	const void *skaddr;
} __attribute__((preserve_access_index));

/* ---- tp_btf: BTF-typed raw tracepoints ------------------------------------------------------------ */

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(bg_tcp_state_btf, const struct sock *sk, const int old, const int new)
{
	on_state(sk, old, new, true);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(bg_tcp_retrans_btf, const struct sock *sk)
{
	/* the err argument is read only where the kernel has it (the verifier skips the dead branch) */
	int err = HAS_RETRANS_ERR ? (int)ctx[2] : 0;

	on_sk_event(sk, BG_TCP_RETRANSMIT, -err, true);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(bg_tcp_rst_rx_btf, struct sock *sk)
{
	on_sk_event(sk, BG_TCP_RESET_RX, 0, true);
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(bg_tcp_rst_tx_btf, const struct sock *sk, const struct sk_buff *skb)
{
	__u32 reason = HAS_RST_REASON ? (__u32)ctx[2] : 0;

	on_send_reset(sk, skb, reason, true);
	return 0;
}

/* ---- classic tracepoints (tracefs) ---------------------------------------------------------------- */

SEC("tracepoint/sock/inet_sock_set_state")
int bg_tcp_state_tp(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	on_state(ctx->skaddr, ctx->oldstate, ctx->newstate, false);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int bg_tcp_retrans_tp(void *ctx)
{
	struct trace_event_raw_tcp_retransmit_skb *tp = ctx;
	struct trace_event_raw_tcp_event_sk_skb___old *old = ctx;

	if (HAS_RETRANS_ERR)
		on_sk_event(tp->skaddr, BG_TCP_RETRANSMIT, -tp->err, false);
	else
		on_sk_event(old->skaddr, BG_TCP_RETRANSMIT, 0, false);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int bg_tcp_rst_rx_tp(struct trace_event_raw_tcp_event_sk *ctx)
{
	on_sk_event(ctx->skaddr, BG_TCP_RESET_RX, 0, false);
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int bg_tcp_rst_tx_tp(void *ctx)
{
	struct trace_event_raw_tcp_send_reset *tp = ctx;
	struct trace_event_raw_tcp_event_sk_skb___old *old = ctx;

	if (bpf_core_type_exists(struct trace_event_raw_tcp_send_reset))
		on_send_reset(tp->skaddr, tp->skbaddr, HAS_RST_REASON ? tp->reason : 0, false);
	else
		on_send_reset(old->skaddr, old->skbaddr, 0, false);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
