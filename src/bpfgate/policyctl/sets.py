"""`bpfgate set list|add|del`: the named sets of the running policy, read and edited live.

A set lives in every running hook whose policy document defines it (each engine has its own maps); an edit
goes to all of them, checked first against each, so a refusal changes nothing anywhere. Each engine's edit is
live and journaled (engine.Engine.edit_set): `status`, `policy export` and the next `apply` see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bpfgate.agent import client as _agent
from bpfgate.errors import NotFound, PolicyError
from bpfgate.policy.model import Hook, element_text, parse_element
from bpfgate.policy.sets import SetState, element_reason

from .backend import Backend


@dataclass
class SetRow:
    name: str
    type: str
    elements: list[Any]
    targets: list[str] = field(default_factory=list)   # "dev hook" of each running hook that has the set
    comment: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "elements": self.elements, "count": len(self.elements),
                "targets": self.targets, **({"comment": self.comment} if self.comment else {})}


def _hook_sets(backend: Backend, netns: str | None) -> dict[tuple[str, Hook], dict[str, SetState]]:
    return {(dev, hook): backend.sets(dev, hook, netns) for dev, hook in backend.attached(netns)}


def list_sets(backend: Backend, netns: str | None, name: str | None = None) -> list[SetRow]:
    rows: dict[str, SetRow] = {}
    for (dev, hook), sets in _hook_sets(backend, netns).items():
        for n, sd in sets.items():
            if name is not None and n != name:
                continue
            row = rows.get(n)
            if row is None:
                row = rows[n] = SetRow(n, sd.type, [element_text(e) for e in sd.elements], comment=sd.comment)
            row.targets.append(f"{dev} {Hook(hook).value}")
    if name is not None and name not in rows:
        raise NotFound(f"set {name}", "no running policy has a set of that name")
    return sorted(rows.values(), key=lambda r: r.name)


def edit_set(backend: Backend, netns: str | None, name: str, elements: list, add: bool) -> list[str]:
    """Add (or delete) elements in every running hook that has set `name`; returns those hooks."""
    what = "add to" if add else "delete from"
    if not elements:
        raise PolicyError(f"{what} set {name}", "no element given")
    holders = {k: sets[name] for k, sets in _hook_sets(backend, netns).items() if name in sets}
    if not holders:
        raise NotFound(f"{what} set {name}", "no running policy has a set of that name")
    seen = []
    for text in elements:   # checked against every holder before anything changes
        try:
            e = parse_element(text)
        except ValueError as err:
            raise PolicyError(f"{what} set {name}", str(err)) from None
        for (dev, hook), sd in holders.items():
            reason = element_reason(e, sd.type)
            if reason:
                raise PolicyError(f"{what} set {name}", reason)
            if (e in sd) == add:
                state = "already in" if add else "not in"
                raise PolicyError(f"{what} set {name}", f"{element_text(e)!r} is {state} the set (on {dev} "
                                  f"{Hook(hook).value})")
        if e in seen:
            raise PolicyError(f"{what} set {name}", f"{element_text(e)!r} is named twice")
        seen.append(e)
    for dev, hook in holders:
        backend.edit_set(dev, hook, netns, name, [element_text(e) for e in seen], add)
    return [f"{dev} {Hook(hook).value}" for dev, hook in holders]


def via_agent(netns: str | None, op: str, **kw):
    return _agent.call(netns, op, **kw)
