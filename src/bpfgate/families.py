"""bpfgate's program families, registered once.

A family is one `bpf/<object>.bpf.c` + its header in bpf/include, one Python module, one CLI module.
Its entry here is the only registration: the attach layer takes its run order at a shared device hook and
how its records are undone, `status`/`detach` its state under /run/bpfgate, `doctor` the objects it loads,
the CLI its command modules. docs/families.md says how to add one.

This module imports nothing of bpfgate's, so every layer can read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RUN_ROOT = "/run/bpfgate"   # state that outlives a process; a family's under state_root(family)


def state_root(family: str) -> str:
    return os.path.join(RUN_ROOT, family)


@dataclass(frozen=True)
class Slot:
    """A family's place at one device and direction: a clsact filter priority + handle, a TCX place."""

    owner: str  # the owner name the records of attachments at this slot carry
    priority: int  # clsact filter priority: lower runs first
    handle: int  # the filter's own handle, so two families never collide at one priority
    tcx_first: bool  # TCX: first in the chain (observers see what a gate later drops), else appended
    why: str


@dataclass(frozen=True)
class Family:
    name: str
    objects: tuple[tuple[str, str], ...] = ()  # (object under src/bpfgate/objects, what is lost without it)
    cli: tuple[str, ...] = ()  # modules under bpfgate.cli, each exposing register(app)
    slots: tuple[Slot, ...] = ()  # its places at tc/TCX device hooks (XDP: one program per device)
    state: bool = False  # keeps per-attach-point state under /run/bpfgate/<name>/<netns>/<target>/<hook>/
    detach: str = ""  # a module whose detach(att) undoes its records (when its attach points share pieces)


FAMILIES = (
    Family("engine",
           objects=(("engine", "no policy engine: apply (interfaces, cgroups: packets and connect/bind), the demo, "
                               "engine capture/events/metrics"),),
           cli=("policy_cmd", "demo_cmd"),
           slots=(Slot("engine-ct", 99, 0xB9E, False, "the engine's egress conntrack tracker: before egress filters"),
                  Slot("engine", 100, 0xB9F, False, "the policy engine (also the default slot of attach_tc)")),
           state=True, detach="bpfgate.engine.teardown"),
    Family("flows", objects=(("flows", "no `flows` / `top`"),), cli=("flows_cmd", "top_cmd"),
           slots=(Slot("flows", 1, 0xB9F5, True, "flow accounting: counts every packet before anything decides"),)),
    Family("capture", objects=(("capture", "no `capture`"),), cli=("capture_cmd",),
           slots=(Slot("capture", 2, 0xB9F6, True, "packet capture: sees every packet before anything decides"),)),
    Family("syn", objects=(("syn", "no `syn` (SYN counting and blocking at XDP)"),), cli=("syn_cmd",)),
    Family("attempts", objects=(("attempts", "no `events` connection attempts"),), cli=("events_cmd",),
           slots=(Slot("attempts", 0xB6A7, 0xB6A7, False, "connection attempts: only what the policy let through"),)),
    Family("steer", objects=(("steer", "no `steer` (egress steering: explicit next hops, symmetric return)"),),
           cli=("steer_cmd",),
           slots=(Slot("steer", 40, 0xB5E7, True,
                       "egress steering: before the policy engine, which ends the chain; a steered packet "
                       "meets the policy of the interface it leaves by"),),
           detach="bpfgate.steer"),
    Family("nat", objects=(("nat", "no `nat` (DNAT/SNAT) and no `lb` (load balancing)"),), cli=("nat_cmd", "lb_cmd"),
           slots=(Slot("nat", 50, 0xB9A7, False, "DNAT/LB and SNAT replies at ingress: the engine sees translated packets"),
                  Slot("nat-out", 150, 0xB9A8, False, "SNAT and DNAT replies at egress: after the engine decided")),
           state=True),
    Family("tune", objects=(("tune", "no `tune` (TCP tuning per cgroup: congestion control, buffers, no-delay)"),),
           cli=("tune_cmd",)),
    Family("accel", objects=(("accel", "no `accel` (sockmap acceleration of local TCP between opted-in sockets)"),),
           cli=("accel_cmd",), detach="bpfgate.accel"),
    Family("proxy", objects=(("proxy", "no `proxy` (kernel splice proxy: sk_skb stream verdicts on a sockhash)"),),
           cli=("proxy_cmd",)),
    Family("trace", objects=(("trace_tcp", "no `trace tcp`, and `trace drops` without PIDs"),
                             ("trace_drops", "no `trace drops`")),
           cli=("trace_cmd",)),
)

# commands over every family: what is attached, the kernel, metrics of all inspection families
CORE_CLI = ("status_cmd", "doctor_cmd", "metrics_cmd", "agent_cmd")


def cli_modules() -> list[str]:
    return [*CORE_CLI, *(m for f in FAMILIES for m in f.cli)]


def objects() -> list[tuple[str, str]]:
    """(object, what is lost without it) for every family, in registration order."""
    return [o for f in FAMILIES for o in f.objects]


def slots() -> tuple[Slot, ...]:
    """Every family's slots in the order they run at one device and direction."""
    return tuple(sorted((s for f in FAMILIES for s in f.slots), key=lambda s: s.priority))


def with_state() -> tuple[str, ...]:
    return tuple(f.name for f in FAMILIES if f.state)


def detachers() -> dict[str, str]:
    """family (the owner its records carry) -> module whose detach(att) undoes such a record."""
    return {f.name: f.detach for f in FAMILIES if f.detach}
