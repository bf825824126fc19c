"""Named sets (`sets:` in a policy file, `src: "@blocklist"` in a rule): what checks and resolves them.

An address set is stage 0 state, not rule entries: its elements go into the prefix-class trees of every field
that names it with the set's bit in their class id (prefixes.py), and a rule naming it is one atom (that bit
in the field's class id). A port set is resolved into the rule's port ranges where the rule is compiled.
See docs/policy-engine.md, 'Named sets'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .atoms import one_address
from .model import SET_TYPES, HookPolicy, Rule, SetDef, SetRef, _network, element_text, element_type
from .prefixes import ELEMENT_OK, RUNG, SET_BITS, TOP, element_problem


def _key(e) -> tuple:
    """An element as plain integers: (lo, hi) for a port range, (version, value, length) for a network
    (a saved engine state loads 100k of these far faster than as ipaddress objects)."""
    return e if type(e) is tuple else (e.version, int(e.network_address), e.prefixlen)


def _element(k: tuple):
    return k if len(k) == 2 else _network(*k)


@dataclass
class SetState:
    """A set as the running engine holds it: its elements in order as _key()s (a dict: O(1) edits)."""

    type: str
    keys: dict = field(default_factory=dict)
    comment: str | None = None

    @classmethod
    def of(cls, sd: SetDef) -> "SetState":
        return cls(sd.type, dict.fromkeys(map(_key, sd.elements)), sd.comment)

    @property
    def elements(self) -> tuple:
        """The elements as parsed values (networks, port ranges), in order."""
        return tuple(map(_element, self.keys))

    def __contains__(self, e) -> bool:
        return _key(e) in self.keys

    def add(self, e) -> None:
        self.keys[_key(e)] = None

    def remove(self, e) -> None:
        del self.keys[_key(e)]

    def definition(self) -> SetDef:
        """As a policy file's set (no validation: the elements are parsed already)."""
        return SetDef.model_construct(type=self.type, elements=self.elements, comment=self.comment)


def set_problem(sd: SetDef) -> tuple[int, str] | None:
    """(element index, reason) when a set's element does not fit it; None when every one does."""
    port = sd.type == "port"
    for i, e in enumerate(sd.elements):
        if (type(e) is tuple) != port or not port and not ELEMENT_OK[(e.max_prefixlen, e.prefixlen)]:
            return i, element_reason(e, sd.type)
    return None


def element_reason(e, set_type: str) -> str | None:
    kind = element_type(e)
    if kind != set_type:
        what = "a port" if kind == "port" else "an address"
        return f"{element_text(e)!r} is {what}: set of type {set_type} holds {'ports' if set_type == 'port' else 'addresses'}"
    return element_problem(e) if kind == "addr" else None


def ref_problem(rule: Rule, sets: dict) -> tuple[str, str] | None:
    """(field, reason) when a rule names a set that is not there or of another type."""
    for f, want in SET_TYPES.items():
        ref = getattr(rule, f)
        if not isinstance(ref, SetRef):
            continue
        sd = sets.get(ref.name)
        if sd is None:
            known = ", ".join(sorted(sets)) or "none"
            return f, f"unknown set {ref.name!r} (sets of this policy: {known})"
        if sd.type != want:
            return f, f"set {ref.name!r} is of type {sd.type}; {f} needs a set of type {want}"
    return None


def uses_sets(rule: Rule) -> bool:
    d = rule.__dict__
    for f in SET_TYPES:   # a loop, not any(): called for every rule of a compile
        if isinstance(d[f], SetRef):
            return True
    return False


def with_ports(rule: Rule, sets: dict) -> Rule:
    """The rule with its port set references replaced by the sets' ranges (what its atoms enumerate)."""
    update = {}
    for f in ("src_port", "dst_port"):
        ref = getattr(rule, f)
        if isinstance(ref, SetRef):
            elements = tuple(_elements(sets[ref.name]))
            update[f] = elements
    return rule.model_copy(update=update) if update else rule


def _elements(s):
    return s.elements if isinstance(s, (SetDef, SetState)) else s


def in_set(sets: dict, ref: SetRef, value) -> bool:
    """Whether a packet's address (or port) is in the set: the naive classifier's test."""
    s = sets[ref.name]
    if s.type == "port":
        return any(lo <= value <= hi for lo, hi in _elements(s))
    return any(value.version == n.version and value in n for n in _elements(s))


def hook_sets(hp: HookPolicy) -> dict[str, SetState]:
    return {name: SetState.of(sd) for name, sd in hp.sets.items()}


def stage0_estimate(hp: HookPolicy) -> int:
    """About how many prefixes a policy puts in its stage 0 trees (Classes.pfx_count() once compiled): its
    rules' addresses plus, once per field naming it, each address set's elements. Read before compiling, to
    size the tables of an engine loaded meanwhile; the compile may merge or add some."""
    n, named = 0, set()
    for r in hp.rules:
        d = r.__dict__
        for f in ("src", "dst"):
            v = d[f]
            if isinstance(v, SetRef):
                named.add((f, v.name))
            elif v is not None:
                n += len(v)
    return n + sum(len(_elements(hp.sets[name])) for _, name in named if name in hp.sets)


INLINE_SET_MIN = 1024   # a rule listing this many addresses (one field, matched alone) matches them as a set


def inline_sets(rules) -> dict[int, tuple[Rule, str, dict]]:
    """The rules whose one long address list compiles as if it were a named set (nft's anonymous set):
    {rule index: (the rule naming that set, the set's name, its elements as SetState keys)}. The rule is
    then one classifier entry and its addresses stage 0 entries with the set's bit, where each address was
    an entry of its own. Only while the field has a set bit free, and when every address fits a set at
    about the stage 0 entries the list takes as it is."""
    found = [(i, rule, *one) for i, rule in enumerate(rules) if (one := set_list(rule)) is not None]
    if not found:
        return {}
    named = {"src": set(), "dst": set()}
    for rule in rules:
        d = rule.__dict__
        for f, names in named.items():
            if isinstance(d[f], SetRef):
                names.add(d[f].name)
    out = {}
    for i, rule, f, nets in found:
        if len(named[f]) < SET_BITS:
            name = f"{f} of rule {rule.name}"   # a space: no set of a policy file is named so
            named[f].add(name)
            out[i] = (rule.model_copy(update={f: SetRef(name)}), name, dict.fromkeys(map(_key, nets)))
    return out


def set_list(rule: Rule) -> tuple[str, tuple] | None:
    """(field, networks) of a rule whose one address list compiles as a set where the field has a set bit
    free (inline_sets), else None."""
    d = rule.__dict__
    if type(d["src"]) is tuple and len(d["src"]) >= INLINE_SET_MIN or \
            type(d["dst"]) is tuple and len(d["dst"]) >= INLINE_SET_MIN:
        one = one_address(rule)
        if one is not None and _fits_a_set(one[1]):
            return one
    return None


def _fits_a_set(nets) -> bool:
    """Every network can be a set element, and the elements take at most twice as many stage 0 entries as
    the networks (a set keeps an element at the ladder's next length: /17 as 8 /20 entries)."""
    cost = 0
    for net in nets:
        w, n = net.max_prefixlen, net.prefixlen
        if not ELEMENT_OK[(w, n)]:
            return False
        cost += 1 if n <= TOP else 1 << (RUNG[w][n] - n)
    return cost <= 2 * len(nets)
