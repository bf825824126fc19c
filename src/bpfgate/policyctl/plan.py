"""What `apply` would change: the desired hooks against the running ones, rule by rule. Pure.

Scope: the interfaces the policy file names. Every (interface, hook) of the file is attached or swapped;
a hook that runs on one of those interfaces but is no longer in the file is detached. Interfaces the file
does not name are left alone (another file may own them).

Rules added by automation (Rule.owner set, e.g. `bpfgate syn --block`'s temporary blocks) are not the
file's: a file that does not name them keeps them where they run (the plan lists them as kept), since
the program that added them deletes them when their time is up; a file rule of the same name takes the
rule over. Only detaching the whole hook removes them, and the plan warns about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bpfgate.policy.hooks import Hook
from bpfgate.policy.memo import ObjectMemo

if TYPE_CHECKING:   # a plan with no change is made and printed without the models (unchanged.py)
    from bpfgate.policy.model import HookPolicy, Rule

State = dict[tuple[str, Hook], "HookPolicy"]


@dataclass(frozen=True)
class RuleChange:
    kind: str              # added | removed | changed | moved
    name: str
    position: int | None   # index in the new rule list (old list for removed)
    fields: tuple[str, ...] = ()   # for changed: the fields that differ

    def describe(self) -> str:
        where = f" at {self.position}" if self.position is not None else ""
        if self.kind == "changed":
            return f"~ rule {self.name}: {', '.join(self.fields)} changed"
        sign = {"added": "+", "removed": "-", "moved": "~"}[self.kind]
        return f"{sign} rule {self.name} {self.kind}{where}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "position": self.position, "fields": list(self.fields)}


class AddedRules(Sequence):
    """Every rule of a list as added, each RuleChange made when read: the plan of an attach of 100k rules
    holds no 100k changes through the apply (~13 MB) that only a listing of them reads."""

    def __init__(self, rules: Sequence[Rule]):
        self._rules = rules

    def __len__(self) -> int:
        return len(self._rules)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return RuleChange("added", self._rules[i].name, range(len(self))[i])

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass
class HookPlan:
    dev: str
    hook: Hook
    action: str                        # attach | swap | detach | none
    old: HookPolicy | None
    new: HookPolicy | None
    rules: Sequence[RuleChange] = field(default_factory=list)
    default: tuple[str, str] | None = None   # (old, new) when the default changes
    kept: list[Rule] = field(default_factory=list)   # automation's rules carried over from `old`

    @property
    def changed(self) -> bool:
        return self.action != "none"

    @property
    def where(self) -> str:
        return f"{self.dev} {self.hook.value}"

    def lines(self, rules: bool = True) -> list[str]:
        """What the change does, a line each; `rules`: with a line per rule change (else only the rest)."""
        if self.action == "attach":
            head = [f"+ {self.where}: attach, default {self.new.default}, {len(self.new.rules)} rule(s)"]
        elif self.action == "detach":
            return [f"- {self.where}: detach ({len(self.old.rules)} rule(s), default {self.old.default})"] + [
                f"  - rule {r.name} (added by {r.owner}) goes with it" for r in automation(self.old)]
        elif self.action == "swap":
            head = [f"~ {self.where}: policy swap"]
        else:
            head = [f"= {self.where}: unchanged"]
        out = list(head)
        out += [f"  = rule {r.name} kept: added by {r.owner}, not by this file (`bpfgate rule del` removes it)"
                for r in self.kept]
        if self.default:
            out.append(f"  ~ default {self.default[0]} -> {self.default[1]}")
        out += [f"  {line}" for line in self.set_changes()]
        if rules:
            out += [f"  {c.describe()}" for c in self.rules]
        return out

    def set_changes(self) -> list[str]:
        """One line per named set the change adds, removes or whose elements it changes."""
        old = self.old.sets if self.old is not None and self.action != "attach" else {}
        new = self.new.sets if self.new is not None else {}
        out = []
        for name in sorted(set(old) | set(new)):
            a, b = old.get(name), new.get(name)
            if a == b:
                continue
            if a is None:
                out.append(f"+ set {name} ({b.type}, {len(b.elements)} elements)")
            elif b is None:
                out.append(f"- set {name}")
            else:
                ea, eb = set(a.elements), set(b.elements)
                out.append(f"~ set {name}: +{len(eb - ea)} -{len(ea - eb)} elements")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"dev": self.dev, "hook": self.hook.value, "action": self.action,
                "default": {"old": self.default[0], "new": self.default[1]} if self.default else None,
                "rules": [c.to_dict() for c in self.rules], "sets": self.set_changes(),
                "kept": [{"name": r.name, "owner": r.owner} for r in self.kept]}


@dataclass
class Plan:
    netns: str | None
    hooks: list[HookPlan]

    @property
    def changed(self) -> bool:
        return any(h.changed for h in self.hooks)

    def changes(self) -> list[HookPlan]:
        return [h for h in self.hooks if h.changed]

    def summary(self) -> str:
        kept = sum(len(h.kept) for h in self.hooks)
        tail = f" ({kept} rule(s) added by automation kept)" if kept else ""
        if not self.changed:
            return f"no change: {len(self.hooks)} hook(s) already run this policy{tail}"
        n = {a: sum(h.action == a for h in self.hooks) for a in ("attach", "swap", "detach")}
        parts = [f"{v} {k}" for k, v in n.items() if v]
        rules = sum(len(h.rules) for h in self.hooks)
        return f"{', '.join(parts)}; {rules} rule change(s){tail}"

    def lines(self) -> list[str]:
        return [ln for h in self.hooks for ln in h.lines()]

    def warnings(self) -> list[str]:
        if not self.changed:
            return []
        from .guard import warnings

        out = [w for h in self.changes() if h.new is not None for w in warnings(h.dev, h.hook, h.new)]
        for h in self.changes():
            gone = automation(h.old) if h.action == "detach" else ()
            if gone:
                out.append(f"{h.where}: detaching removes {len(gone)} rule(s) added by automation: "
                           + ", ".join(f"{r.name} ({r.owner})" for r in gone))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"netns": self.netns, "changed": self.changed, "summary": self.summary(),
                "warnings": self.warnings(), "hooks": [h.to_dict() for h in self.hooks]}


def rule_fields_changed(old: Rule, new: Rule) -> tuple[str, ...]:
    from bpfgate.policy.model import MATCH_FIELDS

    from .export import rule_data

    a, b = rule_data(old), rule_data(new)
    fields = ("name",) + MATCH_FIELDS + ("action", "redirect", "reject", "mark", "rate_limit", "log", "count",
                                         "comment", "owner")
    return tuple(f for f in fields if a.get(f) != b.get(f))


# what the agent's rounds ask again and again of the same hook policies, remembered: the changes between the
# last patched policies (with the policies, so an id is never another object's; few, as each may be 100k
# rules), and the automation rules of every hook policy asked about while it lives (a weak reference: the
# running policy of one round is the old one of the next, and a memo must not keep a 100k-rule one alive)
_known_changes: dict[int, tuple[HookPolicy, HookPolicy, list[RuleChange]]] = {}
_known_automation = ObjectMemo()   # hook policy -> its automation rules


def _remember(memo: dict, key: int, value: tuple, most: int) -> None:
    memo[key] = value
    for old in list(memo)[:-most]:
        memo.pop(old, None)


def remember_changes(old: HookPolicy, new: HookPolicy, changes: list[RuleChange]) -> None:
    """`new` was made from `old` by these rule changes (incremental.patched: it read only them):
    rule_changes(old, new) returns them instead of comparing every rule. The policies are held with them,
    so an id is never another object's."""
    _remember(_known_changes, id(new), (old, new, sorted(changes, key=_change_order)), 2)
    if not automation(old):   # the rules added come from a file, which can not set owner
        _known_automation.put(new, [])


def _change_order(c: RuleChange) -> tuple:
    return ({"removed": 0}.get(c.kind, 1), c.position if c.position is not None else -1, c.name)


def rule_changes(old: HookPolicy | None, new: HookPolicy | None) -> Sequence[RuleChange]:
    known = _known_changes.get(id(new))
    if known is not None and known[0] is old and known[1] is new:
        return list(known[2])
    old_rules = list(old.rules) if old else []
    new_rules = list(new.rules) if new else []
    if not old_rules:   # every rule added, in the order the sort below gives them (100k: no dicts, no sort)
        if len({r.name for r in new_rules}) == len(new_rules):
            return AddedRules(new_rules)
    by_old = {r.name: (i, r) for i, r in enumerate(old_rules)}
    by_new = {r.name: (i, r) for i, r in enumerate(new_rules)}
    out: list[RuleChange] = []
    for name, (i, r) in by_old.items():
        if name not in by_new:
            out.append(RuleChange("removed", name, i))
    for name, (i, r) in by_new.items():
        if name not in by_old:
            out.append(RuleChange("added", name, i))
        elif by_old[name][1] is not r and by_old[name][1] != r:   # (a patched policy shares unchanged rules)
            out.append(RuleChange("changed", name, i, rule_fields_changed(by_old[name][1], r)))
    # order: rules kept by both whose relative order changed (outside the longest common subsequence)
    a = [r.name for r in old_rules if r.name in by_new]
    b = [r.name for r in new_rules if r.name in by_old]
    if a != b:
        import difflib

        sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
        stay = {name for blk in sm.get_matching_blocks() for name in b[blk.b:blk.b + blk.size]}
        for name in b:
            if name not in stay:
                out.append(RuleChange("moved", name, by_new[name][0]))
    out.sort(key=_change_order)
    return out


BATCH_MAX = 1024   # rule changes applied as one atomic batch of live edits, at most (and <= 10% of the rules)


def live_edits(h: HookPlan) -> list[tuple] | None:
    """The swap of `h` as one batch of live edits (Engine.apply_edits: atomic, its cost that of the rules it
    changes), or None when a whole swap is the better tool: the default or the sets change, a rule moves,
    or more than BATCH_MAX or a tenth of the rules change (a swap re-plans the shapes; small policies swap in
    milliseconds anyway). Order: deletes, replaces, then adds by their index in the new list, which is
    where each lands once the deletes are done and the adds before it are in."""
    if h.action != "swap" or h.default or h.old.sets != h.new.sets:
        return None
    if len(h.rules) > min(BATCH_MAX, len(h.new.rules) // 10) or any(c.kind == "moved" for c in h.rules):
        return None
    new = h.new.rules
    edits: list[tuple] = [("delete", c.name) for c in h.rules if c.kind == "removed"]
    edits += [("replace", c.name, new[c.position]) for c in h.rules if c.kind == "changed"]
    edits += [("add", new[c.position], c.position)
              for c in sorted((c for c in h.rules if c.kind == "added"), key=lambda c: c.position)]
    return edits


def automation(hp: HookPolicy | None) -> list[Rule]:
    """The rules of a hook policy that automation added (owner set)."""
    if hp is None:
        return []
    known = _known_automation.get(hp)
    if known is not None:
        return list(known)
    from bpfgate.policy.parse import checked

    rules = [] if checked(hp) else [r for r in hp.rules if r.owner is not None]   # (a file sets no owner)
    _known_automation.put(hp, rules)
    return list(rules)


def keep_automation(old: HookPolicy, new: HookPolicy) -> tuple[HookPolicy, list[Rule]]:
    """`new` with the automation rules of `old` it does not name, each at its index in `old` (SYN blocks
    run first, so they stay first), and the list of those rules."""
    if not automation(old):
        return new, []
    names = {r.name for r in new.rules}
    kept = [(i, r) for i, r in enumerate(old.rules) if r.owner is not None and r.name not in names]
    if not kept:
        return new, []
    rules = list(new.rules)
    for i, r in kept:
        rules.insert(min(i, len(rules)), r)
    return new.model_copy(update={"rules": tuple(rules)}), [r for _i, r in kept]


def plan(desired: State, running: State, netns: str | None = None) -> Plan:
    """Compare per (interface, hook). `running` may hold hooks of interfaces outside the file: ignored."""
    devs = {dev for dev, _ in desired}
    keys = sorted(set(desired) | {k for k in running if k[0] in devs}, key=lambda k: (k[0], k[1].value))
    hooks = []
    for dev, hook in keys:
        old, new = running.get((dev, hook)), desired.get((dev, hook))
        kept: list[Rule] = []
        if old is not None and new is not None:
            new, kept = keep_automation(old, new)
        if old is None:
            hp = HookPlan(dev, hook, "attach", None, new, rule_changes(None, new))
        elif new is None:
            hp = HookPlan(dev, hook, "detach", old, None, rule_changes(old, None))
        elif old == new:
            hp = HookPlan(dev, hook, "none", old, new)
        else:
            hp = HookPlan(dev, hook, "swap", old, new, rule_changes(old, new),
                          (old.default, new.default) if old.default != new.default else None)
        hp.kept = kept
        hooks.append(hp)
    return Plan(netns, hooks)
