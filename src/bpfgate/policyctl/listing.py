"""`rules`: every rule of the running hooks, in order, with its counters. Light to import: at 100k rules
the rows come from the listing each engine saves beside its state, and the counters map."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bpfgate.errors import NotFound
from bpfgate.policy.hooks import Hook

from .backend import Backend, RuleCounters
from .common import _backend, _gc_paused, _pick, _reading, _selected, _serialised, parse_hook, target


@dataclass
class RuleRow:
    dev: str
    hook: str
    position: int | None          # None for the default
    name: str
    action: str
    match: str
    packets: int = 0
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None      # the program that added it (automation), None: a policy file or a user
    comment: str | None = None    # the rule's free-text comment

    def to_dict(self) -> dict[str, Any]:
        return {"dev": self.dev, "hook": self.hook, "position": self.position, "name": self.name,
                "action": self.action, "match": self.match, "packets": self.packets, "bytes": self.bytes,
                "owner": self.owner, "comment": self.comment, **({"options": self.extra} if self.extra else {})}


@_gc_paused
def rules(dev: str | None = None, *, netns: str | None = None, hook: str | Hook | None = None,
          backend: Backend | None = None, names: Iterable[str] | None = None, reset: bool = False) -> list[RuleRow]:
    """Every rule of every running hook (or of one interface / hook; only the rules `names` if given: "(default)"
    names the default), in order, with its counters. `reset`: those counters are zeroed as they are read
    (`nft reset counters`); the rows hold the values before."""
    backend = _backend(backend)
    hook = parse_hook(hook) if hook is not None else None
    dev = target(dev, hook) if dev is not None else None
    names = None if names is None else list(dict.fromkeys(names))
    with _serialised(netns, backend, op="reset counters") if reset else _reading(backend, netns, "list rules"):
        return _rules(backend, dev, hook, netns, names, reset)


def _listings(backend: Backend, dev: str | None, hook: Hook | None, netns: str | None,
              op: str) -> list[tuple[str, Hook, str, list[tuple], dict[str, RuleCounters] | None]]:
    """(dev, hook, default, rules as ruledata.rule_row, counters or None) of the running hooks `_pick`
    selects; from the backend's listing when it keeps one (the Rule models are then not read back)."""
    listing = getattr(backend, "listing", None)
    if listing is None:
        from bpfgate.policy.ruledata import rule_row

        return [(d, h, hp.default, [rule_row(r) for r in hp.rules], None)
                for d, h, hp in _selected(backend, dev, hook, netns, op)]
    out = []
    for d, h in _pick(backend.hooks(netns), dev, hook, op):
        found = listing(d, h, netns)
        if found is not None:   # detached meanwhile
            out.append((d, h, *found))
    return out


def _rules(backend: Backend, dev: str | None, hook: Hook | None, netns: str | None,
           names: list[str] | None = None, reset: bool = False) -> list[RuleRow]:
    selected = _listings(backend, dev, hook, netns, "reset counters" if reset else "list rules")
    if names is not None:   # every name must be somewhere, before anything is reset
        known = {row[0] for _d, _h, _default, rows, _c in selected for row in rows} | {"(default)"}
        missing = [n for n in names if n not in known]
        if missing:
            raise NotFound(f"{'reset counters' if reset else 'list rules'} of rule {missing[0]}",
                           "no such rule in the running policy" + (f" of {dev}" if dev else ""))
    out = []
    for d, h, default, rows, counts in selected:
        here = [row[0] for row in rows] + ["(default)"]
        want = set(here if names is None else names).intersection(here)   # a set: tested once per rule
        if not want:
            continue
        if reset:
            counts = backend.reset_counters(d, h, netns, None if names is None else [n for n in here if n in want])
        elif counts is None:
            counts = backend.counters(d, h, netns)
        none, hv = RuleCounters("", 0, 0), h.value
        for i, (name, action, match, extra, owner, comment) in enumerate(rows):
            if name in want:
                _n, packets, nbytes = counts.get(name, none)
                out.append(RuleRow(d, hv, i, name, action, match, packets, nbytes, extra, owner, comment))
        if "(default)" in want:
            c = counts.get("(default)", none)
            out.append(RuleRow(d, hv, None, "(default)", default, "no rule matched", c.packets, c.bytes))
    return out
