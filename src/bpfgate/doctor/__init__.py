"""What this kernel can and cannot do for bpfgate, checked for real (`bpfgate doctor`).

    from bpfgate import doctor

    checks = doctor.run_checks()                 # every check, in report order
    doctor.exit_code(checks)                     # 0 when the core (tc, XDP, maps, ring buffer, BTF) works
    if doctor.feature_available("kprobes"):      # one probe, run once per process and cached
        ...                                      # else pick the tracepoint backend

System checks read facts (kernel, BTF, JIT, capabilities, mounts, libbpf, sysctls); probes load and
attach a tiny program per feature (bpf/probes.bpf.c); object checks load bpfgate's real objects (engine,
capture, flows, syn, attempts, tracers) as its commands do, so a stricter verifier shows here. A missing
feature is a result, never an exception.
"""

from __future__ import annotations

import threading

from bpfgate.doctor.model import (ESSENTIAL, EXIT_CORE_MISSING, EXIT_OK, MISSING, OK, WARN, Check, core_ok,
                                  document, exit_code, reason)
from bpfgate.doctor.objects import OBJECT_CHECKS
from bpfgate.doctor.probes import PROBES
from bpfgate.doctor.system import FIXABLE, SYSTEM_CHECKS
from bpfgate.errors import NotFound

__all__ = ["Check", "run_checks", "run_check", "feature_available", "check", "names", "core_ok", "exit_code",
           "document", "clear_cache", "ESSENTIAL", "EXIT_OK", "EXIT_CORE_MISSING", "OK", "MISSING", "WARN"]


def names() -> list[str]:
    """Every check name, in report order (system facts, probes, then bpfgate's own objects)."""
    return [*SYSTEM_CHECKS, *PROBES, *OBJECT_CHECKS]


def run_check(name: str, *, fix: bool = False) -> Check:
    """Run one check. `fix` lets the bpffs/tracefs checks mount what is missing."""
    if name in SYSTEM_CHECKS:
        fn = SYSTEM_CHECKS[name]
        try:
            return fn(fix=fix) if name in FIXABLE else fn()
        except Exception as e:  # an odd host must not take the whole report down
            return Check(name, "system", WARN, f"check failed: {reason(e)}", impact="unknown")
    if name in PROBES:
        from bpfgate.doctor import probes

        return probes.run(name)
    if name in OBJECT_CHECKS:
        from bpfgate.doctor import objects

        return objects.run(name)
    raise NotFound(f"run check {name!r}", "no such check", hint="one of: " + ", ".join(names()))


def run_checks(*, fix: bool = False, only: list[str] | None = None) -> list[Check]:
    """Run every check (or those in `only`), system facts first so `fix` mounts tracefs before the
    tracepoint probe runs. Results also refresh feature_available()'s cache."""
    selected = names() if only is None else [n for n in names() if n in only]
    for n in only or ():
        if n not in names():
            raise NotFound(f"run check {n!r}", "no such check", hint="one of: " + ", ".join(names()))
    checks = [run_check(n, fix=fix) for n in selected]
    with _lock:
        _cache.update({c.name: c for c in checks})
    return checks


_cache: dict[str, Check] = {}
_lock = threading.Lock()


def feature_available(name: str) -> bool:
    """Whether check `name` ("kprobes", "fentry", "tracepoints", "tp_btf", "tcx", ...) is OK here.
    Runs only that check, once per process; other modules use it to choose a backend."""
    return check(name).ok


def check(name: str) -> Check:
    """Check `name`, run once per process (cached): its status and, when not OK, doctor's reason."""
    with _lock:
        hit = _cache.get(name)
    if hit is None:
        hit = run_check(name)  # outside the lock: a probe takes milliseconds, a second one is harmless
        with _lock:
            hit = _cache.setdefault(name, hit)
    return hit


def clear_cache() -> None:
    """Forget cached results (after mounting tracefs, say)."""
    with _lock:
        _cache.clear()
