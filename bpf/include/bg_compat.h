/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
#ifndef BG_COMPAT_H
#define BG_COMPAT_H

#include <bpf/bpf_core_read.h>

/* Whether the running kernel has BPF helper bpf_<name> (enum bpf_func_id lists the kernel's helpers).
 * A CO-RE check: libbpf makes it a constant at load, and the verifier never visits, so never rejects,
 * a call behind a false one ("invalid func unknown#N" on an older kernel). The versions that added the
 * helpers used this way: bpfgate.kernel.btf.NEWER_HELPERS (for the Python side's refusals). */
#define BG_HAS_HELPER(name) bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_##name)

#endif
