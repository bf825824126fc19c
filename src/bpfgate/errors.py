"""Typed errors. Each names the operation that failed and the cause; the CLI maps them to one line."""

from __future__ import annotations

import errno as _errno
import os


class BpfgateError(Exception):
    """Base of every error bpfgate raises on purpose. `op` is what we were doing, `cause` why it failed."""

    exit_code = 1

    def __init__(self, op: str, cause: str, *, hint: str | None = None):
        self.op = op
        self.cause = cause
        self.hint = hint
        super().__init__(f"{op}: {cause}" + (f" ({hint})" if hint else ""))


class NotSupported(BpfgateError):
    """The kernel (or libbpf) lacks a feature."""

    exit_code = 3

    def __init__(self, feature: str, cause: str, *, min_kernel: str | None = None, hint: str | None = None,
                 errno: int | None = None):
        self.feature = feature
        self.min_kernel = min_kernel
        self.errno = errno  # the kernel's answer, when it gave one
        if min_kernel and not hint:
            hint = f"needs Linux >= {min_kernel}"
        super().__init__(feature, cause, hint=hint)


class PermissionDenied(BpfgateError):
    exit_code = 4

    def __init__(self, op: str, cause: str = "operation not permitted"):
        super().__init__(op, cause, hint="run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN")


class VerifierError(BpfgateError):
    """The verifier rejected a program. `log` is the full log; `summary` the useful tail; the cause is
    one line: the program's name (libbpf's "prog 'X': failed") and the verifier's error lines."""

    exit_code = 5

    def __init__(self, op: str, summary: str, log: str, *, prog: str | None = None):
        self.summary = summary
        self.log = log
        self.prog = prog
        who = f"program {prog!r}" if prog else "the program"
        super().__init__(op, f"verifier rejected {who}: {verifier_headline(summary)}")


# a line of the verifier's trace: "12: (bf) r1 = r6", "; source line", "from 4 to 9: ..."
_VERIFIER_INSN = r"^(\d+: |; |from \d+ to \d+)"   # compiled on use: `re` is ~3 ms of a command's start


def verifier_headline(summary: str) -> str:
    """The verifier's error: the lines after the last instruction it printed (at most two, joined)."""
    import re

    lines = [ln.strip() for ln in summary.splitlines() if ln.strip()]
    tail: list[str] = []
    for ln in reversed(lines):
        if re.match(_VERIFIER_INSN, ln) or len(tail) == 2:
            break
        tail.insert(0, ln)
    return "; ".join(tail) or (lines[-1] if lines else "no log")


class ObjectError(BpfgateError):
    """A BPF object file is missing, corrupt, or lacks an expected program/map."""


class AttachError(BpfgateError):
    def __init__(self, op: str, err: int | str, *, hint: str | None = None):
        self.errno = err if isinstance(err, int) else None
        cause = os.strerror(err) if isinstance(err, int) else err
        super().__init__(op, cause, hint=hint)


class BadInput(BpfgateError):
    """A value the user gave that cannot be used (an option out of range, options that exclude each other,
    a policy the guard refuses): nothing was changed."""

    exit_code = 2


class NotFound(BpfgateError):
    """An interface, namespace, pin, map key, ... that does not exist."""

    exit_code = 2


class PolicyError(BpfgateError):
    """A policy that does not validate. `path` points at the field (and line, where known)."""

    exit_code = 2

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"policy {path}", reason)


class PacketError(BpfgateError):
    """A packet description (`bpfgate policy explain`) that does not parse: `word` is where it went wrong."""

    exit_code = 2

    def __init__(self, text: str, word: str, reason: str):
        self.text, self.word = text, word
        super().__init__(f"packet {text!r}", f"{reason}" + (f" (at {word!r})" if word else ""))


def from_errno(op: str, err: int, *, hint: str | None = None) -> BpfgateError:
    """The typed error for a failed syscall/libbpf call (err > 0)."""
    if err in (_errno.EPERM, _errno.EACCES):
        return PermissionDenied(op, os.strerror(err))
    if err in (_errno.ENOENT, _errno.ENODEV):
        return NotFound(op, os.strerror(err), hint=hint)
    if err in (_errno.EISDIR, _errno.ENOTDIR, _errno.ENAMETOOLONG, _errno.ELOOP):   # a path the user gave
        return BadInput(op, os.strerror(err), hint=hint)
    if err in (_errno.EOPNOTSUPP, _errno.ENOTSUP, _errno.ENOSYS):
        return NotSupported(op, os.strerror(err), hint=hint)
    return AttachError(op, err, hint=hint)
