"""Object checks: bpfgate's own BPF objects loaded the way its commands load them, one check each.

A probe shows that a feature exists; these show that bpfgate's real programs pass this kernel's
verifier and CO-RE relocations (an older kernel's verifier is stricter: Debian 12's 6.1 rejected the
engine while every probe passed). Nothing is attached; each object closes before the next loads.
A tracer that loads but lacks what an older kernel's tracepoints do not give is `warn`, saying what.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bpfgate import families
from bpfgate.doctor.model import MISSING, OK, WARN, Check, errno_name, reason
from bpfgate.errors import BpfgateError


def _engine() -> tuple[str, list[str]]:
    from bpfgate.engine.engine import Engine

    # one object holds the TC and XDP programs (the hook only labels their events); a cgroup hook loads only
    # its own programs: cgroup_skb (ingress, egress), and the socket calls' (connect4/6, sendmsg4/6; bind4/6)
    for hook in ("tc-ingress", "cgroup-ingress", "cgroup-egress", "cgroup-connect", "cgroup-bind"):
        Engine.load(hook).close()
    return "policy engine: TC, XDP, cgroup_skb and socket (connect, sendmsg, bind) programs loaded", []


def _plain(name: str) -> Callable[[], tuple[str, list[str]]]:
    def load() -> tuple[str, list[str]]:
        from bpfgate.kernel.objects import BpfObject

        with BpfObject.open(name) as obj:
            obj.load()
            progs = obj.program_names()
        return f"{name}.o loaded: {', '.join(progs)}", []
    return load


def _tracer(module: str) -> Callable[[], tuple[str, list[str]]]:
    def load() -> tuple[str, list[str]]:
        import importlib

        from bpfgate.trace import backend

        tracer = importlib.import_module(f"bpfgate.trace.{module}")
        if hasattr(tracer, "require"):   # what the tracer needs of the kernel beyond its hooks
            tracer.require()
        hooks = tracer.HOOKS
        obj_name = f"trace_{module}"
        choices = backend.load_only(obj_name, hooks)
        used = [c.backend for c in choices if c.backend]
        lost = [f"{c.hook.gives}: {c.note}" for c in choices if c.backend is None]
        lost += [line for c in choices if c.backend for line in c.lost]
        return f"{obj_name}.o loaded: {len(used)} of {len(choices)} tracepoints ({', '.join(sorted(set(used)))})", lost
    return load


def _tune() -> tuple[str, list[str]]:
    from bpfgate import tune
    from bpfgate.doctor.probes import _older_than

    detail, _ = _plain("tune")()
    # the sock_ops callbacks `tune --samples` asks for, by the Linux that added them (bpf_sock_ops_cb_flags_set
    # refuses unknown ones: counted as refused settings, and the samples never come)
    lost = [f"tune --samples: no {what} samples (BPF_SOCK_OPS_{cb}_CB: Linux {v[0]}.{v[1]})"
            for what, cb, v in (("RTT", "RTT", (5, 3)), ("retransmit", "RETRANS", (4, 18)),
                                ("end-of-connection", "STATE", (4, 18))) if _older_than(*v)]
    why = tune.nodelay_refused()   # tried on a scratch connection: refused at run time, not at load
    if why:
        lost.append(f"tune --nodelay: refused ({why}; Linux {tune.NODELAY_SINCE})")
    return detail, lost


def _proxy() -> tuple[str, list[str]]:
    from bpfgate import proxy

    detail, _ = _plain("proxy")()
    why = proxy.kernel_path_refused()
    return detail, [f"proxy --mode kernel: refused ({why}); --mode auto relays in user space"] if why else []


@dataclass(frozen=True)
class ObjectCheck:
    name: str
    fn: Callable[[], tuple[str, list[str]]]
    impact: str  # what is lost when the object does not load


# objects whose commands load them in a way of their own; the others load whole
_LOADERS = {"engine": _engine, "tune": _tune, "proxy": _proxy, "trace_tcp": _tracer("tcp"),
            "trace_drops": _tracer("drops")}

# one check per object of every registered family (bpfgate.families)
OBJECT_CHECKS = {name: ObjectCheck(name, _LOADERS.get(name) or _plain(name), lost)
                 for name, lost in families.objects()}


def run(name: str) -> Check:
    o = OBJECT_CHECKS[name]
    try:
        detail, lost = o.fn()
    except (BpfgateError, OSError) as e:
        return Check(name, "object", MISSING, reason(e), impact=o.impact, errno=errno_name(e))
    except Exception as e:  # a bug here must not take the report down
        return Check(name, "object", MISSING, f"check crashed: {reason(e)}", impact=o.impact)
    if lost:
        return Check(name, "object", WARN, detail, impact="; ".join(lost))
    return Check(name, "object", OK, detail)
