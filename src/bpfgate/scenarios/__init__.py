"""`bpfgate demo --scenario NAME`: one feature family end to end in throwaway namespaces, with real traffic,
every expectation checked (the same Check rows as the engine demo, bpfgate.demo).

    steer  egress steering in the MetalLB topology: a TCP connection to a service on the server's lo fails,
           then works with symmetric return and with an explicit rule (IPv4, IPv6); the steering counters
    lb     a VIP with 3 weighted backends: many UDP flows spread by weight; a live add, drain and remove,
           the share of table slots each moved, existing flows kept on their backends
    nat    an HTTP GET through DNAT (to the VIP) and SNAT (the server has no route back), both families,
           with the stacks' checksum-error counters unchanged

Each scenario builds its own Sandbox and removes what it attached (pins, qdiscs, /run/bpfgate state) in a
`finally`, before the sandbox's teardown removes the namespaces: a failure or Ctrl-C leaves nothing."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bpfgate.demo import Check

NAMES = ("steer", "lb", "nat")


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class ScenarioResult:
    name: str
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)   # the scenario's figures, for --json
    tables: list[Table] = field(default_factory=list)    # the same, for people
    report: Callable[[Check], None] = field(default=lambda c: None, repr=False)   # sees each check as made

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, step: str, expected: str, observed: str, ok: bool) -> bool:
        c = Check(step, expected, observed, bool(ok))
        self.checks.append(c)
        self.report(c)
        return c.ok

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "scenario": self.name, "checks": [c.__dict__ for c in self.checks], **self.data}


def describe(name: str) -> str:
    """The scenario's one-line topology, for the CLI's header."""
    return importlib.import_module(f"bpfgate.scenarios.{name}").TOPOLOGY


def run(name: str, report: Callable[[Check], None] = lambda c: None, timeout: float = 1.0) -> ScenarioResult:
    """Run scenario `name`; `report` sees each check as it is made; `timeout`: seconds a request expected to
    fail is given (one expected to succeed gets more, scaled for slow machines)."""
    if name not in NAMES:
        raise ValueError(f"no scenario {name!r} (one of {', '.join(NAMES)})")
    res = ScenarioResult(name, report=report)
    importlib.import_module(f"bpfgate.scenarios.{name}").run(res, timeout)
    return res
