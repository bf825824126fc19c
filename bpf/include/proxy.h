/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/*
 * Kernel splice proxy (`bpfgate proxy`): each accepted client socket and its backend socket sit in a sockhash
 * under their own 4-tuple (struct bg_accel_key); the stream verdict sends what one receives out of the other.
 */
#ifndef BG_PROXY_H
#define BG_PROXY_H

#include "accel.h"

enum bg_proxy_limit {
	BG_PROXY_SOCKS_MAX = 8192, /* sockets (two per proxied connection) */
};

BG_EXPORT_TYPE(enum bg_proxy_limit, proxy_limit);

#endif /* BG_PROXY_H */
