/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * The struct bg_accel_key of a socket from an sk_skb or an sk_msg context (both name the 4-tuple alike):
 * BG_SOCK_KEY(k, ctx, local, remote) is the socket's own key, BG_SOCK_KEY(k, ctx, remote, local) its peer's
 * (the ends swapped). Every field is read as one load at a constant offset from the context pointer (CTX),
 * all of them before the family decides which count: branches sharing a load make the compiler move the
 * context pointer, which the verifier refuses. Include after bpf_helpers.h and bpf_endian.h.
 */
#ifndef BG_SOCKKEY_H
#define BG_SOCKKEY_H

#include "accel.h"

/* a context field read as one load at a constant offset from the context pointer */
#define CTX(field) (*(volatile __u32 *)&(field))

/* the local port is in host byte order, the remote one in network order in the upper half */
#define BG_SOCK_PORT_local(ctx) CTX((ctx)->local_port)
#define BG_SOCK_PORT_remote(ctx) bpf_ntohl(CTX((ctx)->remote_port))

#define BG_SOCK_KEY(k, ctx, near, far)                                                \
	do {                                                                          \
		__u32 *l_ = (__u32 *)(k).laddr, *r_ = (__u32 *)(k).raddr;             \
                                                                                      \
		(k).lport = BG_SOCK_PORT_##near(ctx);                                 \
		(k).rport = BG_SOCK_PORT_##far(ctx);                                  \
		l_[0] = CTX((ctx)->near##_ip6[0]);                                    \
		l_[1] = CTX((ctx)->near##_ip6[1]);                                    \
		l_[2] = CTX((ctx)->near##_ip6[2]);                                    \
		l_[3] = CTX((ctx)->near##_ip6[3]);                                    \
		r_[0] = CTX((ctx)->far##_ip6[0]);                                     \
		r_[1] = CTX((ctx)->far##_ip6[1]);                                     \
		r_[2] = CTX((ctx)->far##_ip6[2]);                                     \
		r_[3] = CTX((ctx)->far##_ip6[3]);                                     \
		(k).family = 6;                                                       \
		if (CTX((ctx)->family) == 2 /* AF_INET */) {                          \
			__u32 near4_ = CTX((ctx)->near##_ip4), far4_ = CTX((ctx)->far##_ip4); \
                                                                                      \
			(k).family = 4;                                               \
			l_[0] = near4_;                                               \
			r_[0] = far4_;                                                \
			l_[1] = l_[2] = l_[3] = r_[1] = r_[2] = r_[3] = 0;            \
		}                                                                     \
	} while (0)

#endif /* BG_SOCKKEY_H */
