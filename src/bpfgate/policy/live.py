"""Live edits of a compiled hook: one rule added, deleted or replaced becomes the minimal set of map writes.

Apply a Diff in this order (docs/policy-engine.md, 'live updates'): rules_update; conf_before (write the
inactive bg_conf slot, flip bg_active); cls_update; cls_delete; conf_after (same flip); then, after the
programs' RCU grace period, forget rules_free. Each step alone leaves a consistent classifier.
"""

from __future__ import annotations

import array
import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter
from typing import Callable

from ..errors import PolicyError
from . import layout as L
from .atoms import address_list, atom_count, atoms_of
from .compile import CompiledHook, Limits, ShapeSpec, _ifindex, atom_keys, compile_hook, rule_action
from .model import HookPolicy, Rule, SetRef, element_text, parse_element
from .parse import rule_problem
from .prefixes import StageEdit
from .sets import element_reason, ref_problem, uses_sets, with_ports
from .shapes import expansion


Edit = tuple   # ("delete", name) | ("replace", name, Rule) | ("add", Rule, position or None)


_PRIO_RULE = attrgetter("prio", "rule_id")


def _pack_cls(cls: dict[bytes, L.ClsValue]) -> tuple[list[bytes], array.array]:
    """bg_cls as its keys and their values' (prio, rule_id) pairs: pickled without an object (and a reduce's
    tuple) per value, ~160k fewer entries in the memo at 100k rules."""
    return list(cls), array.array("I", chain.from_iterable(map(_PRIO_RULE, cls.values())))


def _unpack_cls(keys: list[bytes], pairs: array.array) -> dict[bytes, L.ClsValue]:
    # the values made without ClsValue's __init__ (a frozen dataclass's sets each field through
    # object.__setattr__): their slots set through the slots' descriptors in C loops, ~3x faster at 100k
    vals = list(map(object.__new__, repeat(L.ClsValue, len(keys))))
    deque(map(L.ClsValue.prio.__set__, vals, pairs[0::2]), maxlen=0)
    deque(map(L.ClsValue.rule_id.__set__, vals, pairs[1::2]), maxlen=0)
    return dict(zip(keys, vals))


@dataclass
class Diff:
    rules_update: dict[int, L.RuleAction] = field(default_factory=dict)
    conf_before: L.Conf | None = None
    cls_update: dict[bytes, L.ClsValue] = field(default_factory=dict)
    cls_delete: list[bytes] = field(default_factory=list)
    conf_after: L.Conf | None = None
    rules_free: list[int] = field(default_factory=list)
    stage: StageEdit | None = None   # a set element's stage 0 writes (before everything else: see StageEdit)

    def writes(self) -> int:
        return (len(self.rules_update) + len(self.cls_update) + len(self.cls_delete)
                + (self.conf_before is not None) + (self.conf_after is not None)
                + (self.stage.writes() if self.stage else 0))


class RuleNames(Sequence):
    """The live rules' names in order, read-only: membership, length and a name's index without building
    the list (a one-rule edit's checks at 100k rules: O(1) and O(log n) instead of ~30 ms each)."""

    def __init__(self, live: "LiveHook"):
        self._live = live

    def __len__(self) -> int:
        return len(self._live.order)

    def __contains__(self, name) -> bool:
        return name in self._live.by_name

    def __getitem__(self, i):
        names, order = self._live.c.names, self._live.order
        if isinstance(i, slice):
            return [names[rid] for _p, rid in order[i]]
        return names[order[i][1]]

    def __iter__(self):
        names = self._live.c.names
        return (names[rid] for _p, rid in self._live.order)

    def index(self, name, start: int = 0, stop: int | None = None) -> int:
        rid = self._live.by_name.get(name)
        if rid is None:
            raise ValueError(f"{name!r} is not a rule")
        i = bisect.bisect_left(self._live.order, (self._live.c.prios[rid], rid))
        if i < start or (stop is not None and i >= stop):
            raise ValueError(f"{name!r} is not in that range")
        return i


class LiveHook:
    """A compiled hook kept in step with the kernel maps. It owns `compiled` and mutates it."""

    def __init__(self, compiled: CompiledHook, limits: Limits = Limits(),
                 ifindex: Callable[[str], int] = _ifindex):
        self.c, self.limits, self.ifindex = compiled, limits, ifindex
        # key -> {rule_id: prio} of every rule producing it, for the keys several rules produce or an edit
        # touched; any other key's only owner is its bg_cls value (_owners()). Taken over from the compiler.
        self.owners: dict[bytes, dict[int, int]] = compiled.contested
        self.conf = compiled.conf()
        compiled._conf = None   # edits change bg_cls from here on: conf() computes it afresh
        self.best = {s.id: s.best_prio for s in self.conf.shapes}  # a lower bound of each shape's best
        self.count = {s.id: s.entries for s in self.conf.shapes}
        # shape id -> [fmask, bits] of its filter: a key added sets its bit; one removed leaves it (a stale bit
        # costs a lookup, never a match); a shape made during edits has none
        self.filters = {s.id: [s.fmask, s.filter] for s in self.conf.shapes if any(s.fmask)}
        self.tree_protos = list(self.conf.tree_protos)   # widened by added keys, never narrowed
        self.quarantine: set[int] = set()
        self.fresh: dict[int, ShapeSpec | None] = {}   # shape ids handed out during the current edit -> the
                                                         # unused spec they replaced (restored on a refusal)
        self.order = compiled.order   # (prio, rule_id) sorted
        self.by_name = compiled.by_name   # live rules only: O(1) lookups
        self.low_free = compiled.low_free   # every slot below it is taken: the free-slot search starts here

    # ---- saving --------------------------------------------------------------------------------
    def parts_apart(self) -> tuple[LiveHook, tuple]:
        """A copy of this state without its largest parts, and those parts, to pickle one after the other
        (rejoin() puts them back once loaded): a pickler's memo holds an entry for every object it wrote until
        it ends, and its table doubles past ~350k of them (8 -> 16 MB, both held meanwhile). Apart, no pickle
        of 100k rules passes that, and the rules' and prefix classes' own pickles are never held at once."""
        c = self.c
        copy = object.__new__(CompiledHook)
        copy.__dict__.update(c.__dict__, classes=None, source=None, cls=None, rule_keys=None, contested=None)
        live = object.__new__(LiveHook)
        live.__dict__.update(self.__dict__, c=copy)
        if self.owners is c.contested:   # the compiler's table, taken over: saved once, with the keys
            live.owners = None
        return live, (c.classes, c.source, (*_pack_cls(c.cls), c.rule_keys, c.contested))

    def rejoin(self, parts: tuple) -> None:
        c = self.c
        c.classes, c.source, (keys, pairs, c.rule_keys, c.contested) = parts
        c.cls = _unpack_cls(keys, pairs)
        if self.owners is None:
            self.owners = c.contested

    # ---- queries -------------------------------------------------------------------------------
    def names(self) -> RuleNames:
        return RuleNames(self)

    def rule_id(self, name: str) -> int:
        rid = self.by_name.get(name)
        if rid is None:
            raise PolicyError(f"rule {name}", "no such rule")
        return rid

    def _prio_at(self, position: int | None) -> int:
        """A free priority so the new rule sits at `position` (0 = first; None = last)."""
        n = len(self.order)
        position = n if position is None else max(0, min(position, n))
        lo = self.order[position - 1][0] if position > 0 else 0
        hi = self.order[position][0] if position < n else lo + 2 * 1024
        if hi - lo < 2:
            raise PolicyError(f"rule position {position}",
                              "no priority gap left there; apply the whole policy (atomic swap) to renumber")
        return (lo + hi) // 2

    # ---- edits ---------------------------------------------------------------------------------
    def add(self, rule: Rule, position: int | None = None) -> Diff:
        diff, before = Diff(), {}
        self._add(rule, position, diff, before)
        return self._finish(diff, before)

    def delete(self, name: str) -> Diff:
        diff, before = Diff(), {}
        self._remove(self.rule_id(name), diff, before)
        return self._finish(diff, before)

    def replace(self, name: str, rule: Rule) -> Diff:
        """Same position. The new version keeps the slot (and counters) when its action is unchanged, else
        gets a fresh slot, so no packet ever combines the old match with the new action's record."""
        diff, before = Diff(), {}
        self._replace(name, rule, diff, before)
        return self._finish(diff, before)

    def batch(self, edits: Sequence[Edit]) -> Diff:
        """Several edits as one Diff (the engine writes it as one atomic step: Engine.apply_edits). Edits
        run in order: ("delete", name), ("replace", name, rule), ("add", rule, position). A refusal part-way
        leaves this LiveHook with the earlier edits made (nothing written): its owner reloads it."""
        diff, before = Diff(), {}
        for e in edits:
            if e[0] == "delete":
                self._remove(self.rule_id(e[1]), diff, before)
            elif e[0] == "replace":
                self._replace(e[1], e[2], diff, before)
            elif e[0] == "add":
                self._add(e[1], e[2], diff, before)
            else:
                raise ValueError(f"not an edit: {e[0]!r}")
        return self._finish(diff, before)

    def _add(self, rule: Rule, position: int | None, diff: Diff, before: dict) -> None:
        if self._exists(rule.name):
            raise PolicyError(f"rule {rule.name}", "a rule of that name exists; replace it or delete it first")
        prio = self._prio_at(position)
        keys = self._prepare(rule)
        self._insert(rule, keys, prio, diff, before)

    def _replace(self, name: str, rule: Rule, diff: Diff, before: dict) -> None:
        old = self.rule_id(name)
        if rule.name != name and self._exists(rule.name):
            raise PolicyError(f"rule {rule.name}", "a rule of that name exists")
        keys = self._prepare(rule)   # may refuse: nothing has changed yet
        keep = rule_action(rule, self.ifindex) == self.c.rules[old]
        prio = self.c.prios[old]
        self._remove(old, diff, before, keep_slot=keep)
        self._insert(rule, keys, prio, diff, before, slot=old if keep else None)

    def set_edit(self, name: str, elements, add: bool) -> list[Diff]:
        """Add (or delete) elements of a named set: one Diff per element, each complete on its own. An address
        element is stage 0 writes only (its entries and its bucket's level-0 entry: the rules naming the set
        keep their one class-bit entry); a port element rewrites the entries of the rules naming the set.
        Every element is checked first: a refusal changes nothing."""
        st = self.c.sets.get(name)
        what = "add to" if add else "delete from"
        if st is None:
            known = ", ".join(sorted(self.c.sets)) or "none"
            raise PolicyError(f"set {name}", f"no such set (sets of the running policy: {known})")
        parsed = []
        for text in elements:
            try:
                e = parse_element(text)
            except ValueError as err:
                raise PolicyError(f"{what} set {name}", str(err)) from None
            reason = element_reason(e, st.type)
            if reason:
                raise PolicyError(f"{what} set {name}", reason)
            if (e in st) == add or e in parsed:
                state = "already in the set" if add else "not in the set"
                raise PolicyError(f"{what} set {name}", f"{element_text(e)!r} is {state}"
                                  + (" (named twice)" if e in parsed else ""))
            parsed.append(e)
        if st.type == "port":
            return self._port_set_edit(name, st, parsed, add)
        diffs = []
        for e in parsed:
            if add:
                st.add(e)
            else:
                st.remove(e)
            diffs.append(Diff(stage=self.c.classes.edit_element(name, e, add)))
        return diffs

    def _port_set_edit(self, name: str, st, parsed: list, add: bool) -> list[Diff]:
        users = [self.c.source[rid] for _p, rid in self.order
                 if any(isinstance(getattr(self.c.source[rid], f), SetRef)
                        and getattr(self.c.source[rid], f).name == name for f in ("src_port", "dst_port"))]
        before = dict(st.keys)
        for e in parsed:
            if add:
                st.add(e)
            else:
                st.remove(e)
        diffs = []
        try:
            for rule in users:
                diffs.append(self.replace(rule.name, rule))   # its keys from the set's new ranges
        except PolicyError:
            st.keys = before
            for rule in users[:len(diffs)]:
                self.replace(rule.name, rule)   # back to the old ranges (the refused edit wrote nothing)
            raise
        return diffs

    # ---- mechanics -----------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        return name in self.by_name

    def _prepare(self, rule: Rule) -> list[bytes]:
        """Validate and place the rule's atoms; returns its keys. Changes nothing but may add shape specs
        (ids reserved in self.fresh until the edit finishes)."""
        problem = rule_problem(rule, self.c.hook) or (ref_problem(rule, self.c.sets) if uses_sets(rule) else None)
        if problem:
            raise PolicyError(f"rule {rule.name}" + (f".{problem[0]}" if problem[0] else ""), problem[1])
        for f in ("src", "dst"):
            ref = getattr(rule, f)
            if isinstance(ref, SetRef) and self.c.classes.set_bit(f, ref.name) is None:
                raise PolicyError(f"rule {rule.name}.{f}", f"no rule of the running policy names set {ref.name!r} "
                                  f"in {f}: apply the whole policy to name it there")
        rule = with_ports(rule, self.c.sets)
        listed = address_list(rule)   # an atom per address, as many one-address rules make: not held here
        if atom_count(rule) > self.limits.max_rule_entries and not listed:
            raise PolicyError(f"rule {rule.name}", f"expands to {atom_count(rule)} entries (limit "
                              f"{self.limits.max_rule_entries})")
        keys: list[bytes] = []
        try:  # place every atom first: a refusal leaves everything unchanged
            placed, chosen = [], set()   # chosen: shapes this rule's atoms take (unused ones too: not reused)
            for atom in atoms_of(rule, self.c.classes):
                shape = self._place(atom, chosen)
                chosen.add(shape.id)
                placed.append((atom, shape))
            n = sum(expansion(shape.mask, atom.mask, atom.zero) for atom, shape in placed)
            if n > self.limits.rule_entries(len(placed), listed):
                raise PolicyError(f"rule {rule.name}", f"expands to {n} entries in the current shapes (limit "
                                  f"{self.limits.max_rule_entries}); apply the whole policy to re-plan the shapes")
            for atom, shape in placed:
                keys.extend(atom_keys(atom, shape, self.c.gen))
        except PolicyError:
            for sid, replaced in self.fresh.items():
                if replaced is None:
                    self.c.shapes.pop(sid, None)
                else:
                    self.c.shapes[sid] = replaced
            self.fresh.clear()
            raise
        return list(dict.fromkeys(keys))   # overlapping lists in one rule produce a key once

    def _insert(self, rule: Rule, keys: list[bytes], prio: int, diff: Diff, before: dict,
                slot: int | None = None) -> None:
        action = rule_action(rule, self.ifindex)
        if slot is None:
            slot = self._new_slot()
            diff.rules_update[slot] = action
        self.c.rules[slot], self.c.names[slot], self.c.prios[slot], self.c.source[slot] = action, rule.name, prio, rule
        bisect.insort(self.order, (prio, slot))
        self.by_name[rule.name] = slot
        self.c.rule_keys[slot] = keys
        val = L.ClsValue(prio, slot)
        for k in keys:
            before.setdefault(k, self.c.cls.get(k))
            self._owners(k)[slot] = prio
            cur = self.c.cls.get(k)
            if cur is None:
                self.count[k[0]] = self.count.get(k[0], 0) + 1
                f = self.filters.get(k[0])
                if f is not None and not L.in_direct(k):   # the filter holds a direct shape's hashed keys
                    f[1] |= 1 << L.filter_bit(k, f[0])
                for i, p in enumerate(L.tree_protos(self.c.shapes[k[0]].mask_bytes, L.proto_bit(k))):
                    self.tree_protos[i] |= p
            if cur is None or prio <= cur.prio:
                self.c.cls[k] = val
                self.best[k[0]] = min(prio, self.best.get(k[0], 1 << 32))  # only ever lowered: a safe bound

    def _remove(self, rid: int, diff: Diff, before: dict, keep_slot: bool = False) -> None:
        for k in self.c.rule_keys.pop(rid, []):
            before.setdefault(k, self.c.cls.get(k))
            owners = self._owners(k)
            owners.pop(rid, None)
            if self.c.cls[k].rule_id != rid:
                continue
            if owners:
                nr = min(owners, key=lambda r: (owners[r], r))
                self.c.cls[k] = L.ClsValue(owners[nr], nr)
            else:
                del self.owners[k], self.c.cls[k]
                self.count[k[0]] -= 1
        entry = (self.c.prios.pop(rid), rid)
        del self.order[bisect.bisect_left(self.order, entry)]
        if self.by_name.get(self.c.names.get(rid)) == rid:
            del self.by_name[self.c.names[rid]]
        self.c.source.discard(rid)
        if not keep_slot:
            diff.rules_free.append(rid)
            self.quarantine.add(rid)   # in-flight packets may still hold it: not reusable until released
            del self.c.rules[rid], self.c.names[rid]

    def _owners(self, k: bytes) -> dict[int, int]:
        owners = self.owners.get(k)
        if owners is None:
            cur = self.c.cls.get(k)
            owners = self.owners[k] = {cur.rule_id: cur.prio} if cur is not None else {}
        return owners

    def _finish(self, diff: Diff, before: dict) -> Diff:
        for k, old in before.items():
            new = self.c.cls.get(k)
            if new == old:
                continue
            if new is None:
                diff.cls_delete.append(k)
            else:
                diff.cls_update[k] = new
        listed = {s.id for s in self.conf.shapes}
        present = {sid for sid, n in self.count.items() if n > 0}
        widened = self._conf(listed | present)   # new shapes join before their entries are written ...
        final = self._conf(present)              # ... emptied ones leave after their entries are gone
        if widened != self.conf:
            diff.conf_before = widened
        if final != widened:
            diff.conf_after = final
        self.conf = final
        self.fresh.clear()
        return diff

    def _new_slot(self) -> int:
        """The lowest free slot (O(1) amortised: compiled slots are dense, so a scan from 0 would be O(n))."""
        i = self.low_free
        while i in self.c.rules or i in self.quarantine:
            i += 1
        self.low_free = i
        return i

    def release(self, slots) -> None:
        """The kernel layer calls this once freed slots are past the programs' RCU grace period."""
        self.quarantine.difference_update(slots)
        self.low_free = min([self.low_free, *slots])

    def _place(self, atom, chosen: set[int]) -> ShapeSpec:
        """The existing shape that takes the atom with the fewest entries, else a new shape (never in the
        place of a shape in `chosen`, which the edit's other atoms are in though no key of theirs is written
        yet: their keys would be of the old shape's mask)."""
        fits = [s for s in self.c.shapes.values() if s.mask & atom.mask == atom.mask]
        best = min(fits, key=lambda s: expansion(s.mask, atom.mask, atom.zero)) if fits else None
        if best is not None and expansion(best.mask, atom.mask, atom.zero) <= max(self.limits.cheap_merge, 1):
            return best
        for spec in self.c.shapes.values():   # an unused shape of exactly this mask
            if spec.mask == atom.mask:
                return spec
        in_use = {L.shape_index(sid) for sid in ({s.id for s in self.conf.shapes}
                                                 | {sid for sid, n in self.count.items() if n > 0} | set(self.fresh)
                                                 | chosen)}
        free = [i for i in range(self.limits.max_shapes) if i not in in_use]
        if not free:
            if best is not None:
                return best
            raise PolicyError("shapes", f"the rule needs a new shape and all {self.limits.max_shapes} are in "
                              f"use; apply the whole policy (atomic swap) to re-plan the shapes")
        spec = ShapeSpec(L.shape_id(free[0], atom.mask), atom.mask)
        self.fresh[spec.id] = self.c.shapes.get(spec.id)   # its keys are written after every atom is placed
        self.filters.pop(spec.id, None)
        if spec.id & L.SHAPE_DIRECT:   # its filter starts empty: keys it gets in the hash set their bits
            self.filters[spec.id] = list(L.shape_filter(spec.mask_bytes, None, set()))
        self.c.shapes[spec.id] = spec
        return spec

    def _conf(self, sids) -> L.Conf:
        shapes = [L.Shape(sid, self.c.shapes[sid].mask_bytes, self.best[sid], self.count.get(sid, 0),
                          *self.filters.get(sid, (bytes(L.KEY_SIZE), 0))) for sid in sids]
        shapes.sort(key=lambda s: (s.best_prio, s.id))
        return L.Conf(self.c.gen, self.c.default_rule, tuple(shapes), self.c.classes.bits, tuple(self.tree_protos))


def swap(previous: CompiledHook, hp: HookPolicy, **kw) -> CompiledHook:
    """Whole-policy swap: compile into the other generation, keeping the slots of unchanged rules.
    Load: write rules, write all new bg_cls entries (key.gen differs, so nothing live changes), write the
    inactive bg_conf slot, flip bg_active, then delete the old generation's entries."""
    return compile_hook(hp, previous.hook, gen=previous.gen ^ 1, previous=previous, **kw)
