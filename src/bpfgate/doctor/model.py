"""What a doctor check reports, the JSON document built from a run, and the exit code.

The JSON keys are a stable interface (docs/doctor.md): add keys, never rename or remove them.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import asdict, dataclass

from bpfgate.errors import BpfgateError, NotSupported, ObjectError

SCHEMA = 1
OK, MISSING, WARN = "ok", "missing", "warn"

# The core: without these bpfgate's packet path cannot work, and `doctor` exits non-zero (the policy
# engine's object included: every probe can pass on a kernel whose verifier rejects the engine).
# XDP native is not here: it depends on the NIC driver; generic XDP works on every device.
ESSENTIAL = frozenset({"btf", "maps", "ringbuf", "tc", "xdp_generic", "engine"})

EXIT_OK, EXIT_CORE_MISSING = 0, 1


@dataclass(frozen=True)
class Check:
    """One line of the report. `impact` says what in bpfgate is disabled or degraded when the check is
    not OK ('' when OK); `fix` is the command that repairs it, when there is one."""

    name: str
    kind: str  # "system" (a fact read from the host), "probe" (a program really loaded/attached) or "object"
    #            (one of bpfgate's own BPF objects loaded as its commands load it)
    status: str  # ok | missing | warn
    detail: str
    impact: str = ""
    fix: str | None = None
    errno: str | None = None  # symbolic errno of the failure (EPERM, ENOENT, ...), when there was one

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def essential(self) -> bool:
        return self.name in ESSENTIAL

    def to_json(self) -> dict:
        return {**asdict(self), "essential": self.essential}


def core_ok(checks: list[Check]) -> bool:
    """Every essential check that ran is OK (and they all ran)."""
    by_name = {c.name: c for c in checks}
    return all(n in by_name and by_name[n].ok for n in ESSENTIAL)


def exit_code(checks: list[Check]) -> int:
    return EXIT_OK if core_ok(checks) else EXIT_CORE_MISSING


def document(checks: list[Check]) -> dict:
    """The `bpfgate doctor --json` document."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("bpfgate")
    except PackageNotFoundError:
        ours = None
    return {
        "schema": SCHEMA,
        "bpfgate": ours,
        "kernel": os.uname().release,
        "core_ok": core_ok(checks),
        "exit_code": exit_code(checks),
        "missing": [c.name for c in checks if c.status == MISSING],
        "checks": [c.to_json() for c in checks],
    }


# ---- turning failures into reasons ----------------------------------------------------------------

_BY_STRERROR = {os.strerror(n): name for n, name in _errno.errorcode.items()}


def errno_name(exc: BaseException) -> str | None:
    """EPERM/ENOENT/... for an OSError or a BpfgateError whose cause is a strerror text."""
    num = getattr(exc, "errno", None)
    if isinstance(num, int) and num in _errno.errorcode:
        return _errno.errorcode[num]
    cause = getattr(exc, "cause", None)
    return _BY_STRERROR.get(cause) if isinstance(cause, str) else None


def cause(exc: BpfgateError) -> str:
    """The error's cause on one line: a verifier summary shrinks to its last line (the error), and a
    missing object keeps its hint (how to build it)."""
    lines = [ln.strip() for ln in exc.cause.splitlines() if ln.strip()]
    text = lines[0] if len(lines) <= 1 else f"{lines[0].split(':')[0]}: {lines[-1]}"
    if isinstance(exc, ObjectError) and exc.hint:
        text += f" ({exc.hint})"
    if isinstance(exc, NotSupported) and exc.min_kernel:  # the version that has it: the useful part
        text += f" (needs Linux >= {exc.min_kernel})"
    return text


def reason(exc: BaseException) -> str:
    """One line saying what failed: the operation and the kernel's answer, without generic hints
    (doctor adds its own diagnosis: 'run as root' is wrong advice when root is refused)."""
    if isinstance(exc, BpfgateError):
        text = f"{exc.op}: {cause(exc)}"
    elif isinstance(exc, OSError):
        text = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    name = errno_name(exc)
    return f"{text} ({name})" if name and name not in text else text
