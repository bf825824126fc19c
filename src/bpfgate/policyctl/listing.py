"""`rules`: every rule of the running hooks, in order, with its counters. Light to import: at 100k rules
the rows come from the listing each engine saves beside its state, and the counters map."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bpfgate.engine.listing import Listing
from bpfgate.errors import NotFound
from bpfgate.policy.hooks import DEFAULT_NAME, Hook

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
    return [row for t in rule_tables(dev, netns=netns, hook=hook, backend=backend, names=names, reset=reset)
            for row in t.rows()]


@_gc_paused
def rule_tables(dev: str | None = None, *, netns: str | None = None, hook: str | Hook | None = None,
                backend: Backend | None = None, names: Iterable[str] | None = None,
                reset: bool = False) -> list[HookRules]:
    """What `rules` returns, per running hook as columns (HookRules): at 100k rules a RuleRow per rule is
    most of a listing's time, and `rules --json` prints the columns without making any (HookRules.json_items)."""
    backend = _backend(backend)
    hook = parse_hook(hook) if hook is not None else None
    dev = target(dev, hook) if dev is not None else None
    names = None if names is None else list(dict.fromkeys(names))
    with _serialised(netns, backend, op="reset counters") if reset else _reading(backend, netns, "list rules"):
        return _tables(backend, dev, hook, netns, names, reset)


class HookRules:
    """The rules of one running hook, in order, with their counters: `listing` (engine.listing.Listing, its
    columns), `packets`/`bytes` per position (the default's last), `shown` the positions listed (the
    default's is len(listing))."""

    def __init__(self, dev: str, hook: str, listing: Listing, packets: list[int], nbytes: list[int],
                 shown: list[int] | None = None):
        self.dev, self.hook, self.listing, self.packets, self.bytes = dev, hook, listing, packets, nbytes
        self.shown = list(range(len(listing) + 1)) if shown is None else shown

    def row(self, i: int) -> RuleRow:
        ls = self.listing
        if i == len(ls):
            return RuleRow(self.dev, self.hook, None, DEFAULT_NAME, ls.default, "no rule matched",
                           self.packets[i], self.bytes[i])
        name, action, match, extra, owner, comment = ls.row(i)
        return RuleRow(self.dev, self.hook, i, name, action, match, self.packets[i], self.bytes[i], extra, owner, comment)

    def rows(self) -> list[RuleRow]:
        return [self.row(i) for i in self.shown]

    def json_items(self, indent: bool = False) -> list[str]:
        """Each row's to_dict() as JSON, as json.dumps writes it in a list (compact, or `indent`: indent=2),
        written straight from the columns for the rules with no options, owner or comment (at 100k rules
        ~10x faster than dumps of dicts)."""
        import json
        from json.encoder import encode_basestring_ascii as text   # what json.dumps writes a str with

        ls, pk, nb = self.listing, self.packets, self.bytes
        names, actions, matches, rids, more, n = ls.names, ls.actions, ls.matches, ls.rids, ls.more, len(ls)
        sep, end = (",\n    ", "\n  }") if indent else (", ", "}")
        head = f'{{{sep[1:] if indent else ""}"dev": {text(self.dev)}{sep}"hook": {text(self.hook)}{sep}"position": '
        if indent:
            head = "  " + head
        out = []
        for i in self.shown:
            if i == n or rids[i] in more:
                item = json.dumps(self.row(i).to_dict(), default=str, indent=2 if indent else None)
                out.append("  " + item.replace("\n", "\n  ") if indent else item)
            else:
                out.append(f'{head}{i}{sep}"name": {text(names[i])}{sep}"action": {text(actions[i])}{sep}"match": '
                           f'{text(matches[i])}{sep}"packets": {pk[i]}{sep}"bytes": {nb[i]}{sep}"owner": null{sep}'
                           f'"comment": null{end}')
        return out


def rules_json(tables: list[HookRules], indent: bool = False) -> str:
    """json.dumps([row.to_dict() for every row of the tables]): compact, or `indent`: with indent=2."""
    items = [item for t in tables for item in t.json_items(indent)]
    if not indent:
        return "[" + ", ".join(items) + "]"
    return "[\n" + ",\n".join(items) + "\n]" if items else "[]"


def _listings(backend: Backend, dev: str | None, hook: Hook | None, netns: str | None,
              op: str) -> list[tuple[str, Hook, Listing, tuple[list[int], list[int]] | None]]:
    """(dev, hook, rules, (packets, bytes) per position or None) of the running hooks `_pick` selects; from
    the backend's listing when it keeps one (the Rule models are then not read back)."""
    listing = getattr(backend, "listing", None)
    if listing is None:
        from bpfgate.policy.ruledata import rule_row

        out = []
        for d, h, hp in _selected(backend, dev, hook, netns, op):
            rows = [rule_row(r) for r in hp.rules]
            out.append((d, h, Listing.of_rows(hp.default, -1, list(range(len(rows))), rows), None))
        return out
    out = []
    for d, h in _pick(backend.hooks(netns), dev, hook, op):
        found = listing(d, h, netns)
        if found is not None:   # detached meanwhile
            ls, packets, nbytes = found
            slots = ls.rids + [ls.default_rid]
            out.append((d, h, ls, ([packets[r] for r in slots], [nbytes[r] for r in slots])))
    return out


def _tables(backend: Backend, dev: str | None, hook: Hook | None, netns: str | None,
            names: list[str] | None = None, reset: bool = False) -> list[HookRules]:
    selected = _listings(backend, dev, hook, netns, "reset counters" if reset else "list rules")
    if names is not None:   # every name must be somewhere, before anything is reset
        known = {n for _d, _h, ls, _c in selected for n in ls.names} | {DEFAULT_NAME}
        missing = [n for n in names if n not in known]
        if missing:
            raise NotFound(f"{'reset counters' if reset else 'list rules'} of rule {missing[0]}",
                           "no such rule in the running policy" + (f" of {dev}" if dev else ""))
    out = []
    for d, h, ls, counts in selected:
        if names is None:
            shown = list(range(len(ls) + 1))
        else:
            want = set(names)   # a set: tested once per rule
            shown = [i for i, n in enumerate(ls.names) if n in want] + ([len(ls)] if DEFAULT_NAME in want else [])
            if not shown:
                continue
        if reset or counts is None:
            here = ls.names + [DEFAULT_NAME]
            by_name = (backend.reset_counters(d, h, netns, None if names is None else [here[i] for i in shown])
                       if reset else backend.counters(d, h, netns))
            none = RuleCounters("", 0, 0)
            got = [by_name.get(n, none) for n in here]
            counts = [c.packets for c in got], [c.bytes for c in got]
        out.append(HookRules(d, h.value, ls, *counts, shown))
    return out
