"""The `steer:` section of a policy file, and making the running steering match it (`bpfgate apply`).

    steer:
      interfaces: [pri0, sec0]        # attached at ingress + egress (the namespace's steering)
      symmetric: [sec0]               # replies of connections that arrived here go back out here
      method: auto                    # auto | tc | tcx
      rules:
        - {from: 198.18.250.1, protocol: tcp, port: 80, dev: sec0, via: 198.18.2.1}

A file with a steer section owns the namespace's steering: interfaces it does not list are detached, rules
it does not list are deleted. A file without one leaves steering alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bpfgate.errors import BpfgateError

from . import rules


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SteerRule(_Strict):
    source: str = Field(alias="from")
    dev: str
    via: str
    protocol: Literal["tcp", "udp", "sctp"] | None = None
    port: int | None = None

    @model_validator(mode="after")
    def _valid(self):
        try:
            self.rule()
        except BpfgateError as e:
            raise ValueError(e.cause) from None
        return self

    def rule(self) -> rules.Rule:
        return rules.make(self.source, self.dev, self.via, self.protocol, self.port, op="steer rule")


class SteerPolicy(_Strict):
    interfaces: tuple[str, ...] = Field(min_length=1)
    symmetric: tuple[str, ...] = ()
    method: Literal["auto", "tc", "tcx"] = "auto"
    rules: tuple[SteerRule, ...] = ()

    @field_validator("interfaces", "symmetric", mode="before")
    @classmethod
    def _list(cls, v):
        return tuple(v) if isinstance(v, (list, tuple)) else (v,)

    @model_validator(mode="after")
    def _consistent(self):
        if set(self.symmetric) - set(self.interfaces):
            raise ValueError(f"symmetric {sorted(set(self.symmetric) - set(self.interfaces))}: not in interfaces")
        seen = set()
        for r in self.rules:
            rule = r.rule()
            if rule.dev not in self.interfaces:
                raise ValueError(f"rule from {rule.source}: dev {rule.dev} is not in interfaces")
            if rule.match in seen:
                raise ValueError(f"two rules from {rule.source}{' ' + rule.proto if rule.proto else ''}"
                                 f"{' port ' + str(rule.port) if rule.port else ''}")
            seen.add(rule.match)
        return self

    def desired_rules(self) -> dict[tuple[str, str, int], rules.Rule]:
        return {r.rule().match: r.rule() for r in self.rules}


def plan(sp: SteerPolicy, netns: str | None) -> list[str]:
    """What applying `sp` would change, one line each (empty: steering already matches)."""
    from bpfgate import attach

    from .steering import FAMILY, Steering, _pinned

    attached = {a.dev for a in attach.find(None, None, netns, owner=FAMILY)}
    lines = [f"steer: attach {d}" for d in sp.interfaces if d not in attached]
    lines += [f"steer: detach {d}" for d in sorted(attached - set(sp.interfaces))]
    running_rules: dict = {}
    symmetric: set[str] = set()
    if _pinned(netns):
        with Steering.open(netns) as s:
            running_rules = {r.rule.match: r.rule for r in s.rules()}
            symmetric = {i.dev for i in s.interfaces() if i.symmetric}
    for d in sp.interfaces:
        if (d in sp.symmetric) != (d in symmetric):
            lines.append(f"steer: symmetric return {'on' if d in sp.symmetric else 'off'} on {d}")
    want = sp.desired_rules()
    lines += [f"steer: delete rule {r.describe()}" for m, r in running_rules.items() if m not in want]
    lines += [f"steer: {'replace' if m in running_rules else 'add'} rule {r.describe()}"
              for m, r in want.items() if running_rules.get(m) != r]
    return lines


def apply(sp: SteerPolicy, netns: str | None) -> None:
    """Make the namespace's steering match `sp` (call plan() first to know whether anything differs)."""
    from bpfgate import attach

    from .steering import FAMILY, Steering, detach

    for att in attach.find(None, None, netns, owner=FAMILY):
        if att.dev not in sp.interfaces:
            detach(att)
    with Steering.attach(sp.interfaces, netns, symmetric=sp.symmetric, method=sp.method) as s:
        want = sp.desired_rules()
        for r in s.rules():
            if r.rule.match not in want:
                s.delete(r.rule.source, r.rule.proto or None, r.rule.port or None)
        running = {r.rule.match: r.rule for r in s.rules()}
        for m, rule in want.items():
            if running.get(m) != rule:
                s.add(rule)


def running_section(netns: str | None) -> dict | None:
    """The namespace's running steering as the `steer:` section that apply turns back into it (None: no
    steering attached). `method` is left at auto: apply does not change how an attached interface is hooked."""
    from bpfgate import attach

    from .steering import FAMILY, Steering, _pinned

    devs = sorted({a.dev for a in attach.find(None, None, netns, owner=FAMILY)})
    if not devs or not _pinned(netns):
        return None
    with Steering.open(netns) as s:
        symmetric = sorted(i.dev for i in s.interfaces() if i.symmetric and i.dev in devs)
        found = sorted((r.rule for r in s.rules()), key=lambda r: r.match)
    out: dict = {"interfaces": devs}
    if symmetric:
        out["symmetric"] = symmetric
    if found:
        out["rules"] = [{"from": r.source, **({"protocol": r.proto} if r.proto else {}),
                         **({"port": r.port} if r.port else {}), "dev": r.dev, "via": r.via} for r in found]
    return out
