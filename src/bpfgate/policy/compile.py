"""Policy -> the exact entries of the engine's maps (bg_cls, bg_rules, bg_conf). Pure, no kernel.

See docs/policy-engine.md for the classifier; layout.py for the binary records.
"""

from __future__ import annotations

import pickle
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..errors import PolicyError
from . import layout as L
from .atoms import Atom, address_list, atom_count, atoms_of
from .hooks import DEFAULT_NAME
from .model import Hook, HookPolicy, Policy, Reject, Rule
from .parse import _fmt, checked_for, rule_problem, where_of
from .prefixes import Classes
from .sets import SetState, hook_sets, inline_sets, ref_problem, set_problem, uses_sets, with_ports
from .shapes import TooManyShapes, expand, plan_shapes
from .sources import RuleSources

PRIO_STEP = 1024          # gap between consecutive rules' priorities, so a live insert needs no renumbering
DEFAULT_MAX_SHAPES = 16   # hash lookups per packet, worst case
DEFAULT_MAX_ENTRIES = 1 << 20
DEFAULT_MAX_RULE_ENTRIES = 1 << 16


@dataclass(frozen=True)
class Limits:
    max_shapes: int = DEFAULT_MAX_SHAPES
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_rule_entries: int = DEFAULT_MAX_RULE_ENTRIES
    cheap_merge: int = 4096   # merge two shapes below max_shapes when it adds at most this many entries
    classes: bool = True      # stage 0: address prefixes as prefix classes (False: raw prefixes only)

    def rule_entries(self, atoms: int, address_list: bool) -> int:
        """The entries one rule of `atoms` atoms may make: max_rule_entries, or one per atom for a rule
        matching one address list alone (an address, or a class under it, each: as many one-address rules
        make); a shape's expansion past that is held to it as any rule's."""
        return max(self.max_rule_entries, atoms) if address_list else self.max_rule_entries


@dataclass(frozen=True)
class ShapeSpec:
    id: int
    mask: int            # layout.key_int of the mask; shape and gen bytes zero

    @property
    def mask_bytes(self) -> bytes:
        return L.int_key(self.mask)


@dataclass
class CompiledHook:
    hook: Hook
    gen: int
    default_rule: int
    shapes: dict[int, ShapeSpec]
    cls: dict[bytes, L.ClsValue]            # bg_cls: packed bg_cls_key -> value
    rules: dict[int, L.RuleAction]          # bg_rules: rule_id -> action
    names: dict[int, str]                   # rule_id -> rule name
    prios: dict[int, int]                   # rule_id -> priority (lower wins)
    rule_keys: dict[int, list[bytes]] = field(default_factory=dict)  # keys each rule produced, won or not
    source: RuleSources = field(default_factory=RuleSources)   # read from saved state when first used
    classes: Classes = field(default_factory=Classes)   # stage 0: bg_pfx_top/bg_pfx of this generation
    # for the edit index (live.LiveHook takes these over instead of rebuilding them: a first edit stays fast)
    contested: dict[bytes, dict[int, int]] = field(default_factory=dict)  # keys several rules produce -> owners
    order: list[tuple[int, int]] = field(default_factory=list)            # (prio, rule_id) of the rules, sorted
    by_name: dict[str, int] = field(default_factory=dict)                 # rule name -> rule_id (rules only)
    low_free: int = 0                                                      # every slot below it is taken
    sets: dict[str, SetState] = field(default_factory=dict)               # the named sets, as edited live
    _conf: L.Conf | None = field(default=None, repr=False, compare=False)  # conf() as compiled, until edited

    def __getstate__(self) -> dict:
        # the prefix classes as a pickle of their own: their ~2 objects a rule then stay out of the snapshot's
        # memo (an entry per object pickled, and a growth of it copies the whole table: ~30 MB at 100k rules)
        return {**self.__dict__, "classes": pickle.dumps(self.classes, protocol=pickle.HIGHEST_PROTOCOL)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, classes=pickle.loads(state["classes"]))

    def conf(self) -> L.Conf:
        """bg_conf for this generation: non-empty shapes ordered by their best priority."""
        if self._conf is not None:
            return self._conf
        best: dict[int, int] = {}
        count: Counter = Counter()
        hashed: Counter = Counter()          # its keys the filter holds (not the ones in bg_cls_direct)
        few: dict[int, list[bytes]] = {}     # a shape's (hashed) keys, while it has at most FILTER_MAX
        protos: dict[int, int] = {}          # the protocols of its keys
        word0: dict[int, set[bytes]] = {}    # the values of its keys' first words, while at most FILTER_MAX
        w0, po = L.WORD0, L.KEY_OFF["proto"]
        for key, val in self.cls.items():
            sid = key[L.KEY_SHAPE_OFF]
            n = count[sid] = count[sid] + 1
            if n == 1:
                best[sid], few[sid], word0[sid], protos[sid] = val.prio, [], set(), 1 << key[po]
            else:
                protos[sid] |= 1 << key[po]
                if val.prio < best[sid]:
                    best[sid] = val.prio
            if sid & L.SHAPE_DIRECT and L.in_direct(key):
                continue
            n = hashed[sid] = hashed[sid] + 1
            if n <= L.FILTER_MAX:
                few[sid].append(key)
            w = word0[sid]
            if w is not None:
                w.add(key[w0])
                if len(w) > L.FILTER_MAX:
                    word0[sid] = None
        shapes, sides = [], [0, 0]
        for sid in best:
            mask = self.shapes[sid].mask_bytes
            fmask, bits = L.shape_filter(mask, few[sid] if hashed[sid] <= L.FILTER_MAX else None, word0[sid])
            shapes.append(L.Shape(sid, mask, best[sid], count[sid], fmask, bits))
            for i, p in enumerate(L.tree_protos(mask, protos[sid])):
                sides[i] |= p
        shapes.sort(key=lambda s: (s.best_prio, s.id))
        return L.Conf(self.gen, self.default_rule, tuple(shapes), self.classes.bits, tuple(sides))

    def entries(self):
        """bg_cls as (ClsKey, ClsValue) records, for display and tests."""
        return [(L.ClsKey.unpack(k), v) for k, v in self.cls.items()]


def atom_keys(atom: Atom, shape: ShapeSpec, gen: int) -> list[bytes]:
    """The bg_cls keys of one atom placed in a shape: its value with every combination of free bits."""
    return _placed_keys(atom, L.shape_gen_bits(shape.id, gen), shape.mask & ~atom.mask)


def _placed_keys(atom: Atom, tag: int, extra: int) -> list[bytes]:
    """atom_keys() given the shape's gen/shape bits (`tag`) and its mask's bits beyond the atom's (`extra`)."""
    free = extra & ~atom.zero
    if not free:   # most atoms: one key
        return [L.int_key(atom.value | tag)]
    return [L.int_key(v | tag) for v in expand(atom.value, free)]


def _ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise PolicyError(f"redirect.interface {name}", "no such interface") from None


def rule_action(rule: Rule, ifindex: Callable[[str], int] = _ifindex) -> L.RuleAction:
    flags = L.RF_COUNT if rule.count else 0
    rate = burst = over = log_rate = redir = 0
    if rule.log:
        flags |= L.RF_LOG
        log_rate = rule.log.rate
    if rule.mark is not None:
        flags |= L.RF_MARK
    if rule.rate_limit:
        rl = rule.rate_limit
        flags |= L.RF_RATE | (L.RF_RATE_BYTES if rl.unit == "bytes" else 0)
        flags |= L.RF_RATE_PER_SRC if rl.per == "source" else 0
        rate, burst, over = rl.rate, rl.burst or rl.rate, L.ACTIONS[rl.over]
    if rule.redirect:
        redir = ifindex(rule.redirect.interface)
        flags |= L.RF_REDIR_INGRESS if rule.redirect.direction == "ingress" else 0
        flags |= L.RF_REDIR_GONE_DROP if rule.redirect.on_gone == "drop" else 0
    reject_with = reject_rate = 0
    if rule.action == "reject":
        rj = rule.reject or Reject()
        reject_with, reject_rate = L.REJECT_WITH[rj.with_], rj.rate
    return L.RuleAction(L.ACTIONS[rule.action], over, flags, redir, rule.mark or 0, log_rate, rate, burst,
                        reject_with, reject_rate)


class SlotAllocator:
    """rule_id allocation. A rule keeps its slot (and so its counters) across a whole-policy swap when its
    name and action are unchanged; a changed action gets a fresh slot, so packets of the old generation never
    read the new action."""

    def __init__(self, previous: CompiledHook | None = None):
        self.used: set[int] = set(previous.rules) if previous else set()
        self.keep = {(previous.names[i], a): i for i, a in previous.rules.items()} if previous else {}
        self.taken: set[int] = set()
        self.next = 0

    def get(self, name: str, action: L.RuleAction) -> int:
        rid = self.keep.get((name, action)) if self.keep else None
        if rid is not None and rid not in self.taken:
            self.taken.add(rid)
            return rid
        while self.next in self.used or self.next in self.taken:
            self.next += 1
        self.taken.add(self.next)
        return self.next


class _Refused(Exception):
    """A policy the compiler refuses: the place (a path into the policy's data) and why."""

    def __init__(self, loc: tuple, reason: str):
        super().__init__(loc, reason)
        self.loc, self.reason = loc, reason


def compile_hook(hp: HookPolicy, hook: Hook, *, gen: int = 0, limits: Limits = Limits(),
                 ifindex: Callable[[str], int] = _ifindex, previous: CompiledHook | None = None,
                 where: Callable[[tuple], str] | None = None) -> CompiledHook:
    """The hook policy compiled; PolicyError (at `where(path)`, by default `file:LINE path` for a policy
    file's) when the compiler refuses it."""
    try:
        return _compiled(hp, hook, gen, limits, ifindex, previous)
    except _Refused as e:
        loc, reason = e.loc, e.reason   # not `e`: its traceback holds the compiler's state
    # named once the compiler's state is freed: the line is found by reading the file again
    raise PolicyError((where or where_of(hp) or _fmt)(loc), reason)


def _compiled(hp: HookPolicy, hook: Hook, gen: int, limits: Limits, ifindex: Callable[[str], int],
              previous: CompiledHook | None) -> CompiledHook:
    slots = SlotAllocator(previous)
    default = L.RuleAction(L.ACTIONS[hp.default], flags=L.RF_COUNT)
    default_id = slots.get(DEFAULT_NAME, default)
    out = CompiledHook(hook, gen, default_id, {}, {}, {default_id: default}, {default_id: DEFAULT_NAME}, {})
    atoms: list[tuple[int, list[Atom]]] = []
    interned: dict[L.RuleAction, L.RuleAction] = {}
    plain_actions: dict[tuple, L.RuleAction] = {}   # (action, count, reject) -> its record
    hist: Counter = Counter()
    address_lists: set[int] = set()   # rules matching one address list alone
    checked = checked_for(hp, hook)   # a policy file's sets and rules were checked as it was read
    for name, sd in () if checked else hp.sets.items():
        problem = set_problem(sd)
        if problem:
            raise _Refused(("sets", name, "elements", problem[0]), problem[1])
    out.sets = hook_sets(hp)
    inline = inline_sets(hp.rules) if limits.classes else {}   # long address lists matched as sets
    out.classes = _classes(hp, out.sets, gen, limits, inline)
    for i, rule in enumerate(hp.rules):
        loc = ("hooks", hook.value, "rules", i)
        named = uses_sets(rule)
        problem = (None if checked else rule_problem(rule, hook)) or (ref_problem(rule, hp.sets) if named else None)
        if problem:
            raise _Refused(loc + ((problem[0],) if problem[0] else ()), problem[1])
        source = rule
        if named:
            rule = with_ports(rule, hp.sets)   # port sets: their ranges (address sets are class bits)
        elif i in inline:
            rule = inline[i][0]   # its list as a set: one atom (the set's class bit)
        n = atom_count(rule)
        listed = address_list(rule)   # an atom per address, as many one-address rules make: not held here
        if n > limits.max_rule_entries and not listed:
            raise _Refused(loc, f"rule {rule.name!r} expands to {n} entries (limit "
                              f"{limits.max_rule_entries}): split it, use wider prefixes/ranges, or put its "
                              "addresses in a named set (`sets:`)")
        d = rule.__dict__
        if d["log"] is None and d["mark"] is None and d["rate_limit"] is None and d["redirect"] is None:
            plain = (d["action"], d["count"], d["reject"])   # most rules: one of a few records
            action = plain_actions.get(plain)
            if action is None:
                action = rule_action(rule, ifindex)
                action = plain_actions[plain] = interned.setdefault(action, action)
        else:
            action = rule_action(rule, ifindex)
            action = interned.setdefault(action, action)   # one object per distinct record: packed once at load
        rid = slots.get(rule.name, action)
        out.rules[rid] = action
        out.names[rid], out.prios[rid], out.source[rid] = rule.name, (i + 1) * PRIO_STEP, source
        out.by_name[rule.name] = rid
        if listed:
            address_lists.add(rid)
        ra = atoms_of(rule, out.classes)
        atoms.append((rid, ra))
        for a in ra:
            hist[(a.mask, a.zero)] += 1
    for tree in out.classes.trees.values():   # only rule_atoms() reads it: made again if an edit needs it, as
        tree.nested = None                     # after loading the saved state (~15 MB less held at 100k rules)
    try:
        placement = plan_shapes(hist, limits.max_shapes, limits.max_entries, limits.cheap_merge)
    except TooManyShapes as e:
        raise _Refused(("hooks", hook.value), e.reason) from None
    ids: dict[int, ShapeSpec] = {}
    for mask in sorted(set(placement.values())):
        spec = ShapeSpec(L.shape_id(len(ids), mask), mask)   # SHAPE_SHORT: its entries in bg_cls_short
        ids[mask] = out.shapes[spec.id] = spec
    # per atom mask: its shape's gen/shape bits and the bits the shape has beyond the mask
    fit = {m: (L.shape_gen_bits(ids[sm].id, gen), ids[sm].mask & ~m) for m, sm in placement.items()}
    for i in range(len(atoms)):   # rules in priority order: the first writer of a key wins
        (rid, ra), atoms[i] = atoms[i], None   # freed as used: the keys made next take their memory (~50 MB)
        val = L.ClsValue(out.prios[rid], rid)
        if len(ra) == 1:   # one atom's keys are distinct
            keys = _placed_keys(ra[0], *fit[ra[0].mask])
        else:   # overlapping lists give a key once
            keys = list(dict.fromkeys(k for a in ra for k in _placed_keys(a, *fit[a.mask])))
        out.rule_keys[rid] = keys
        if len(keys) > limits.rule_entries(len(ra), rid in address_lists):
            raise _Refused(("hooks", hook.value, "rules", i),
                              f"rule {out.names[rid]!r} expands to {len(keys)} entries after shape fitting "
                              f"(limit {limits.max_rule_entries}): split it or use fewer prefix lengths")
        for k in keys:
            cur = out.cls.setdefault(k, val)
            if cur is not val:   # an earlier rule has it: remember every owner for live deletes
                out.contested.setdefault(k, {cur.rule_id: cur.prio})[rid] = val.prio
        out.order.append((val.prio, rid))
    out.low_free = slots.next
    out.classes.packed   # the stage 0 entries, packed now: loading is then only the kernel's work
    out._conf = out.conf()
    return out


def _classes(hp: HookPolicy, sets: dict[str, SetState], gen: int, limits: Limits, inline: dict) -> Classes:
    if not limits.classes:
        if any(uses_sets(r) for r in hp.rules):
            raise _Refused(("hooks",), "named sets need stage 0 prefix classes (Limits.classes)")
        return Classes(gen=gen)
    rules, named = hp.rules, {n: s.keys for n, s in sets.items() if s.type == "addr"}
    if inline:
        rules = [inline[i][0] if i in inline else r for i, r in enumerate(rules)]
        named.update((name, keys) for _rule, name, keys in inline.values())
    try:
        return Classes.of(rules, gen, named)
    except ValueError as e:
        raise _Refused(("sets",), str(e)) from None


def compile_policy(policy: Policy, *, previous: dict[Hook, CompiledHook] | None = None,
                   **kw) -> dict[Hook, CompiledHook]:
    """One CompiledHook per hook; the kernel layer loads it once per interface of the policy."""
    previous = previous or {}
    return {hook: compile_hook(hp, hook, previous=previous.get(hook), **kw) for hook, hp in policy.hooks.items()}
