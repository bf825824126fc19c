/* SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause */
/* Bounds that older verifiers can prove (Debian 12's 6.1 is the oldest kernel bpfgate supports). */
#ifndef BG_BOUNDS_H
#define BG_BOUNDS_H

/*
 * A length already checked against 0 and a maximum by the caller, given back in a form 6.1's verifier
 * also sees as >= 1: it learns nothing from `len == 0` (newer ones do), so a helper whose size must not
 * be zero (bpf_skb_load_bytes) is rejected ("R3 min value is outside of the allowed memory range").
 * The asm is an unsigned compare the compiler cannot rewrite back to `== 0`; the value never changes.
 */
static __always_inline __u64 bg_len_nonzero(__u64 len)
{
	asm volatile("if %0 > 0 goto +1; %0 = 1" : "+r"(len));
	return len;
}

#endif
