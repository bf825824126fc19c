/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * TCP and drop tracing (trace_tcp.bpf.c, trace_drops.bpf.c; bpfgate.trace): the socket owner table both
 * programs read and the records they emit.
 */
#ifndef BG_TRACE_H
#define BG_TRACE_H

#include "bg_common.h"

/* What a bg_tcp_event reports (bg_tcp_event.kind). */
enum bg_tcp_kind {
	BG_TCP_CONNECT = 1,  /* active open established (SYN_SENT -> ESTABLISHED) */
	BG_TCP_ACCEPT,       /* passive open established (SYN_RECV -> ESTABLISHED) */
	BG_TCP_CLOSE,        /* an established connection ended (-> CLOSE): duration, bytes */
	BG_TCP_CONNECT_FAIL, /* SYN_SENT -> CLOSE: `error` is the socket's errno (refused/timed out/unreachable) */
	BG_TCP_RETRANSMIT,   /* tcp:tcp_retransmit_skb */
	BG_TCP_RESET_RX,     /* tcp:tcp_receive_reset */
	BG_TCP_RESET_TX,     /* tcp:tcp_send_reset (`error` holds enum sk_rst_reason) */
};

/* Owner of a socket, captured in process context and carried with the socket (hash keyed by sk). */
struct bg_sock_owner {
	__u64 start_ns; /* first state change seen (SYN_SENT / SYN_RECV) */
	__u64 cgroup_id;
	__u32 pid;      /* tgid; 0: not known (socket made before tracing began, no process-context event) */
	__u32 flags;    /* BG_OWNER_* */
	char comm[16];
};

/* Where a socket's owner was taken (bg_sock_owner.flags, bg_tcp_event.owner_flags). */
enum bg_owner_flags {
	BG_OWNER_ACTIVE = 1,  /* we saw connect() */
	BG_OWNER_PASSIVE = 2, /* child of a listener */
	BG_OWNER_CLOSER = 4,  /* owner taken at close()/shutdown() (the fd holder then) */
};

/* key of the listener map: who called listen() on (netns, port) */
struct bg_listen_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

struct bg_tcp_event {
	struct bg_event_hdr hdr;
	__u64 sk;          /* kernel socket address: identifies the flow across events */
	__u64 duration_ns; /* close / connect_fail: since the first state change */
	__u64 bytes_sent;  /* close: bytes acked by the peer (tcp_sock.bytes_acked) */
	__u64 bytes_received;
	__u64 cgroup_id;
	__u8 saddr[16];    /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u32 pid;         /* owner (0: unknown) */
	__u32 netns;       /* network namespace inode */
	__u32 error;       /* connect_fail: sk_err; reset_tx: sk_rst_reason */
	__u16 sport;       /* host byte order; the local end */
	__u16 dport;
	__u16 family;      /* AF_INET / AF_INET6 */
	__u8 kind;         /* enum bg_tcp_kind */
	__u8 old_state;
	__u8 new_state;
	__u8 owner_flags;  /* BG_OWNER_* */
	__u8 pad[2];
	char comm[16];
};

struct bg_drop_event {
	struct bg_event_hdr hdr;
	__u64 location;    /* kernel address of the caller that dropped */
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 reason;      /* enum skb_drop_reason (names from the kernel's BTF at run time) */
	__u32 ifindex;
	__u32 netns;
	__u32 pid;         /* owner of the skb's socket when trace tcp knows it, else 0 */
	__u32 len;
	__u16 sport;
	__u16 dport;
	__u16 family;      /* AF_INET / AF_INET6, 0: not IP */
	__u8 protocol;
	__u8 pad;
	__u32 engine_rule; /* TC drop by a policy engine: its rule id + 1 (from the skb's cb), 0: none */
};

/* Python reads these from BTF (bpfgate.contract): every object built with this header carries them. */
BG_EXPORT_TYPE(enum bg_tcp_kind, tcp_kind);
BG_EXPORT_TYPE(enum bg_owner_flags, owner_flags);
BG_EXPORT_TYPE(struct bg_tcp_event, tcp_event);
BG_EXPORT_TYPE(struct bg_drop_event, drop_event);

#endif /* BG_TRACE_H */
