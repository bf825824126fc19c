"""Capabilities of this process (CapEff), so a command without privileges says so up front instead of
reporting an empty or half-done result."""

from __future__ import annotations

from bpfgate.errors import PermissionDenied

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39
NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_PERFMON: "CAP_PERFMON",
         CAP_BPF: "CAP_BPF"}


def effective() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def has(cap: int) -> bool:
    return bool(effective() >> cap & 1)


def missing(*caps: int) -> list[str]:
    eff = effective()
    return [NAMES[c] for c in caps if not eff >> c & 1]


def require(op: str, *caps: int) -> None:
    """Raise PermissionDenied naming the missing capabilities (CAP_SYS_ADMIN covers CAP_BPF on old kernels)."""
    wanted = caps or (CAP_BPF, CAP_NET_ADMIN)
    lacking = missing(*wanted)
    if CAP_BPF in wanted and "CAP_BPF" in lacking and has(CAP_SYS_ADMIN):
        lacking.remove("CAP_BPF")
    if lacking:
        raise PermissionDenied(op, f"missing {', '.join(lacking)}")
