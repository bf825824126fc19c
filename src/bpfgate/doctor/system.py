"""Facts read from the host: kernel, BTF, JIT, capabilities, mounts, libbpf, BPF sysctls.

Nothing here loads a program (that is probes.py). `--fix` may mount bpffs and tracefs; everything
else is only reported, with the command that would change it.
"""

from __future__ import annotations

import os
import subprocess

from bpfgate.doctor.model import MISSING, OK, WARN, Check
from bpfgate.errors import BpfgateError
from bpfgate.kernel import pins

BTF_PATH = "/sys/kernel/btf/vmlinux"
JIT_SYSCTL = "/proc/sys/net/core/bpf_jit_enable"
UNPRIV_SYSCTL = "/proc/sys/kernel/unprivileged_bpf_disabled"
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
BPFFS = pins.BPFFS
TRACEFS = "/sys/kernel/tracing"
TRACEFS_LEGACY = "/sys/kernel/debug/tracing"  # libbpf prefers it when it is accessible

MOUNT_BPFFS = f"mount -t bpf bpf {BPFFS}"
MOUNT_TRACEFS = f"mount -t tracefs nodev {TRACEFS}"

# capability bits (linux/capability.h); bpfgate needs the first three, CAP_PERFMON for tracing
CAPS = {"CAP_BPF": 39, "CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def mounts() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount this process sees (octal escapes like \\040 decoded)."""
    text = _read("/proc/self/mounts") or ""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[1].encode().decode("unicode_escape"), parts[2]))
    return out


def mounted(path: str, fstype: str) -> bool:
    return (path, fstype) in mounts()


def cgroup2_mount() -> str | None:
    """Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts): the
    system's mount under /sys/fs/cgroup when there is one, else the first cgroup2 mount."""
    points = [p for p, t in mounts() if t == "cgroup2"]
    system_wide = [p for p in points if p == "/sys/fs/cgroup" or p.startswith("/sys/fs/cgroup/")]
    return (system_wide or points or [None])[0]


def tracefs_where() -> str | None:
    """Where tracefs is (or appears on first access: debugfs automounts it at debug/tracing, which is
    the path libbpf then uses), or None."""
    if mounted(TRACEFS, "tracefs"):
        return TRACEFS
    if mounted(TRACEFS_LEGACY, "tracefs"):
        return TRACEFS_LEGACY
    if mounted(os.path.dirname(TRACEFS_LEGACY), "debugfs"):
        return f"{TRACEFS_LEGACY} (automounted by debugfs)"
    return None


def tracefs_mounted() -> bool:
    return tracefs_where() is not None


def effective_caps() -> int:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _mount(fstype: str, source: str, target: str) -> None:
    try:
        os.makedirs(target, exist_ok=True)
        r = subprocess.run(["mount", "-t", fstype, source, target], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BpfgateError(f"mount {fstype} at {target}", str(e)) from None
    if r.returncode != 0:
        raise BpfgateError(f"mount {fstype} at {target}", r.stderr.strip() or "mount failed")


# ---- the checks ---------------------------------------------------------------------------------------


def check_kernel() -> Check:
    u = os.uname()
    return Check("kernel", "system", OK, f"Linux {u.release} ({u.machine})")


def check_btf() -> Check:
    if os.access(BTF_PATH, os.R_OK):
        return Check("btf", "system", OK, f"{BTF_PATH} ({os.path.getsize(BTF_PATH) // 1024} KiB)")
    return Check("btf", "system", MISSING, f"{BTF_PATH} is missing or unreadable",
                 impact="nothing loads: bpfgate's CO-RE objects need kernel BTF (CONFIG_DEBUG_INFO_BTF=y)",
                 errno="ENOENT")


def check_jit() -> Check:
    value = _read(JIT_SYSCTL)
    if value in ("1", "2"):
        return Check("jit", "system", OK, "on" + (" (debug output)" if value == "2" else ""))
    if value == "0":
        return Check("jit", "system", WARN, "off: programs run in the interpreter",
                     impact="every program is several times slower", fix="sysctl -w net.core.bpf_jit_enable=1")
    return Check("jit", "system", WARN, f"{JIT_SYSCTL} unreadable", impact="unknown whether programs are JIT-compiled")


def check_capabilities() -> Check:
    eff = effective_caps()
    have = [n for n, bit in CAPS.items() if eff >> bit & 1]
    lacking = [n for n in CAPS if n not in have]
    if not lacking:
        return Check("capabilities", "system", OK, ", ".join(have))
    impact = "loading and attaching programs fails" if set(lacking) & {"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"} \
        else "tracing programs (trace tcp) cannot load"
    return Check("capabilities", "system", MISSING, f"lacking {', '.join(lacking)}" + (f"; have {', '.join(have)}" if have else ""),
                 impact=impact, fix="run as root (or grant " + ", ".join(lacking) + ")", errno="EPERM")


def check_bpffs(fix: bool = False) -> Check:
    if pins.is_bpffs(BPFFS):
        return Check("bpffs", "system", OK, f"mounted at {BPFFS}")
    if fix:
        try:
            pins.mount_bpffs(BPFFS)
            return Check("bpffs", "system", OK, f"mounted at {BPFFS} by --fix")
        except BpfgateError as e:
            return Check("bpffs", "system", MISSING, f"not mounted, and --fix failed: {e.cause}",
                         impact=_BPFFS_IMPACT, fix=MOUNT_BPFFS)
    return Check("bpffs", "system", MISSING, f"not mounted at {BPFFS}", impact=_BPFFS_IMPACT, fix=MOUNT_BPFFS)


_BPFFS_IMPACT = "no pins: gates cannot outlive the command that made them, the agent cannot find its state"


def check_tracefs(fix: bool = False) -> Check:
    where = tracefs_where()
    if where:
        return Check("tracefs", "system", OK, f"mounted at {where}")
    if fix:
        try:
            _mount("tracefs", "nodev", TRACEFS)
            return Check("tracefs", "system", OK, f"mounted at {TRACEFS} by --fix")
        except BpfgateError as e:
            return Check("tracefs", "system", MISSING, f"not mounted, and --fix failed: {e.cause}",
                         impact=_TRACEFS_IMPACT, fix=MOUNT_TRACEFS)
    return Check("tracefs", "system", MISSING, f"not mounted at {TRACEFS}", impact=_TRACEFS_IMPACT, fix=MOUNT_TRACEFS)


_TRACEFS_IMPACT = "classic tracepoints cannot attach (tp_btf and raw tracepoints do not need tracefs)"


def check_cgroup2() -> Check:
    where = cgroup2_mount()
    if where:
        return Check("cgroup2", "system", OK, f"mounted at {where}")
    return Check("cgroup2", "system", MISSING, "no cgroup2 mount in /proc/self/mounts",
                 impact="no per-cgroup policy, cgroup_skb or sockops", fix="mount -t cgroup2 none /sys/fs/cgroup")


def check_libbpf() -> Check:
    try:
        from bpfgate.kernel import libbpf as L
    except BpfgateError as e:  # libbpf.so.1 absent: every probe will say so too
        return Check("libbpf", "system", MISSING, e.cause, impact="nothing loads: bpfgate drives the kernel through libbpf",
                     fix="apt-get install libbpf1", errno="ENOENT")

    v = L.version()
    major = L.libbpf_major_version()
    tcx = "bpf_program__attach_tcx" if L.has("bpf_program__attach_tcx") else "TCX through BPF_LINK_CREATE"
    if major < 1:
        return Check("libbpf", "system", WARN, f"{v}: older than 1.0", impact="untested libbpf: expect attach errors",
                     fix="apt-get install libbpf1")
    return Check("libbpf", "system", OK, f"{v} ({tcx})")


def check_unprivileged_bpf() -> Check:
    value = _read(UNPRIV_SYSCTL)
    meaning = {"0": "allowed for unprivileged users", "1": "disabled (until reboot)",
               "2": "disabled (root may re-enable)"}.get(value or "", f"unknown ({value})")
    return Check("unprivileged_bpf", "system", OK, f"{value}: {meaning}")


def check_bpf_stats() -> Check:
    value = _read(STATS_SYSCTL)
    if value == "1":
        return Check("bpf_stats", "system", OK, "on: run_cnt/run_time_ns counted for every program")
    return Check("bpf_stats", "system", OK,
                 f"{value or 'unknown'}: off; bpfgate turns run-time stats on while it reads them")


SYSTEM_CHECKS = {
    "kernel": check_kernel,
    "btf": check_btf,
    "jit": check_jit,
    "capabilities": check_capabilities,
    "bpffs": check_bpffs,
    "tracefs": check_tracefs,
    "cgroup2": check_cgroup2,
    "libbpf": check_libbpf,
    "unprivileged_bpf": check_unprivileged_bpf,
    "bpf_stats": check_bpf_stats,
}
FIXABLE = ("bpffs", "tracefs")
