"""Carry out a Plan: every hook changes or none does.

Order: attaches and swaps first (each swap is the engine's atomic whole-policy swap: unchanged rules keep
their slots and counters), detaches last. When a step fails, the steps already done are undone in reverse
(a swapped hook is swapped back, an attached one detached, a detached one re-attached with its policy) and
the error says what failed and that the rest was rolled back.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from bpfgate.cgroups import is_cgroup
from bpfgate.cgroups import resolve as resolve_cgroup
from bpfgate.errors import BadInput, BpfgateError, PolicyError
from bpfgate.kernel import netns as _netns
from bpfgate.policy.compile import compile_hook
from bpfgate.policy.model import Hook, HookPolicy

from . import guard
from .backend import Backend
from .plan import HookPlan, Plan, live_edits


class ApplyError(BpfgateError):
    """A step of an apply failed; what had been done was rolled back (or `rollback_errors` says not)."""

    def __init__(self, op: str, cause: BaseException, undone: int, rollback_errors: list[str]):
        self.cause_error = cause
        self.rollback_errors = rollback_errors
        self.exit_code = getattr(cause, "exit_code", 1)
        if rollback_errors:
            tail = f"rollback FAILED for: {'; '.join(rollback_errors)}"
        elif undone:
            tail = f"{undone} hook change(s) already made were rolled back; nothing changed"
        else:
            tail = "nothing changed"
        super().__init__(op, f"{cause} ({tail})")


def resolver(netns: str | None) -> Callable[[str], int]:
    """ifindex of an interface in `netns` (for redirect targets), PolicyError when it does not exist."""
    from bpfgate.errors import PolicyError

    def ifindex(name: str) -> int:
        try:
            with _netns.entered(netns):
                return socket.if_nametoindex(name)
        except OSError:
            raise PolicyError(f"redirect.interface {name}", "no such interface"
                              + (f" in network namespace {netns}" if netns else "")) from None
    return ifindex


Compiled = dict[tuple, Any]   # precheck's compiled hooks, by _key(); swaps by _swap_key(): (compiled, its base)
                              # or Edits


class Edits(list):
    """A swap made as one atomic batch of live edits (plan.live_edits), nothing compiled up front."""


def _key(h: HookPlan) -> tuple:
    return h.hook, id(h.new)   # the policy file's hook policy is one object for all its interfaces


def _swap_key(h: HookPlan) -> tuple:
    return "swap", h.dev, h.hook   # compiled against that engine's running generation


def precheck(plan: Plan, *, force: bool = False, ifindex: Callable[[str], int] | None = None,
             check_interfaces: bool = False, live: Callable | None = None, batches: bool = False) -> Compiled:
    """Everything that can be refused before the kernel is touched: the interfaces to attach to exist,
    every new hook policy compiles (limits, hook-specific actions, redirect targets), and the guard.
    Returns the compiled hooks (once per hook policy, whatever the number of interfaces) for execute().
    `live(dev, hook)`: a running engine's (compiled hook, limits), when the backend has it: a swap is then
    compiled here as the engine would (other generation, unchanged rules keeping their slots), once."""
    if check_interfaces:
        from bpfgate.kernel import netlink

        for dev in sorted({h.dev for h in plan.changes() if h.action == "attach"}):
            if is_cgroup(dev):
                if plan.netns:
                    raise BpfgateError(f"cgroup {dev}", "a cgroup is in no network namespace",
                                       hint="apply cgroup policies without --netns")
                resolve_cgroup(dev)   # NotFound / not cgroup v2: refused before anything is attached
            else:
                netlink.ifindex(dev, plan.netns)   # NotFound: no such interface / namespace
    compiled: Compiled = {}
    for hp in plan.changes():
        if hp.new is None:
            continue
        kw = {"ifindex": ifindex} if ifindex else {}
        edits = live_edits(hp) if batches else None
        running = live(hp.dev, hp.hook) if live is not None and hp.action == "swap" else None
        if edits is not None:   # the engine checks each rule as it makes the edit, before any write
            compiled[_swap_key(hp)] = Edits(edits)
        elif running is not None:
            prev, limits = running
            compiled[_swap_key(hp)] = (compile_hook(hp.new, hp.hook, gen=prev.gen ^ 1, previous=prev, limits=limits,
                                                    **kw), prev)
        elif _key(hp) not in compiled:
            compiled[_key(hp)] = compile_hook(hp.new, hp.hook, **kw)
        if not force:
            why = guard.problem(hp.dev, hp.hook, hp.new)
            if why:
                raise BadInput("apply policy", why)
    return compiled



def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def execute(plan: Plan, backend: Backend, *, mode: str | None = None, op: str = "apply policy",
            compiled: Compiled | None = None) -> int:
    """Make the changes of `plan`; all or nothing. Returns the number of hooks changed. `compiled`
    (from precheck) spares attaching engines a second compile."""
    steps = [h for h in plan.changes() if h.action != "detach"] + [h for h in plan.changes()
                                                                    if h.action == "detach"]
    done: list[HookPlan] = []
    ns = plan.netns
    remember = getattr(backend, "remember", None)
    try:
        for h in steps:
            if h.action == "attach":
                backend.attach(h.dev, h.hook, ns, h.new, mode, compiled=(compiled or {}).get(_key(h)))
            elif h.action == "swap":
                pre = (compiled or {}).get(_swap_key(h))
                if isinstance(pre, Edits):
                    try:
                        backend.apply_edits(h.dev, h.hook, ns, list(pre))
                    except PolicyError:   # no room, no priority gap, no shape left: a whole swap re-plans
                        backend.swap(h.dev, h.hook, ns, h.new)   # (and names a bad rule as compile does)
                elif pre is not None:
                    backend.swap(h.dev, h.hook, ns, h.new, compiled=pre)
                else:
                    backend.swap(h.dev, h.hook, ns, h.new)
            else:
                backend.detach(h.dev, h.hook, ns)
            done.append(h)
            if h.new is not None and remember is not None:
                remember(h.dev, h.hook, ns, h.new)
    except BaseException as e:
        errors = []
        for h in reversed(done):
            try:
                if h.action == "attach":
                    backend.detach(h.dev, h.hook, ns)
                elif h.action == "swap":
                    backend.swap(h.dev, h.hook, ns, h.old)
                else:
                    backend.attach(h.dev, h.hook, ns, h.old, mode)
            except BaseException as re:  # noqa: BLE001 - keep undoing the others
                errors.append(f"{h.where}: {_describe(re)}")
        if not isinstance(e, Exception):
            raise
        raise ApplyError(op, e, len(done), errors) from e
    return len(done)


def restore_plan(previous: dict[tuple[str, Hook], HookPolicy | None], running: dict, netns: str | None) -> Plan:
    """The plan that puts the listed hooks back as they were (None: not attached)."""
    hooks = []
    for (dev, hook), old in sorted(previous.items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        cur = running.get((dev, hook))
        if old is None and cur is not None:
            hooks.append(HookPlan(dev, hook, "detach", cur, None))
        elif old is not None and cur is None:
            hooks.append(HookPlan(dev, hook, "attach", None, old))
        elif old is not None and cur != old:
            hooks.append(HookPlan(dev, hook, "swap", cur, old))
    return Plan(netns, hooks)
