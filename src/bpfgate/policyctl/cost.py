"""What classifying one packet costs on a hook, as `bpfgate policy classifier` reports it: the shapes in
visit order (one hash lookup each, worst case all), their entries, and the stage 0 prefix-class trees."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bpfgate.policy import layout as L
from bpfgate.policy.compile import CompiledHook
from bpfgate.policy.model import SetRef
from bpfgate.policy.prefixes import PRESENT

TREE_NAMES = {L.TREE_SRC4: "src4", L.TREE_SRC6: "src6", L.TREE_DST4: "dst4", L.TREE_DST6: "dst6"}
# key fields named by their mask alone (ports and addresses also say how many leading bits they match)
PLAIN_FIELDS = ("family", "proto", "tcp_flags", "icmp_type", "icmp_code", "ct_state", "vlan")


@dataclass(frozen=True)
class ShapeCost:
    id: int
    fields: str        # the key fields the shape's mask keeps, e.g. "family proto dport", "family src/24"
    entries: int       # its bg_cls entries


@dataclass(frozen=True)
class TreeCost:
    tree: str          # src4, src6, dst4, dst6
    classes: int       # class prefixes (one class each)
    buckets: int       # level-0 array entries in use
    probe_entries: int  # bg_pfx hash entries
    max_probes: int    # hash probes per packet in this tree, at most


@dataclass(frozen=True)
class NegationCost:
    """What a negated field costs: the complement it expands to (no lookup more per packet: its values sit in
    the same shapes; more entries, and short prefixes of an address complement may need a shape of their own)."""

    rule: str
    field: str
    written: int       # values written after the "!"
    expands_to: int    # prefixes / port ranges / protocols of the complement
    entries: int       # the rule's bg_cls entries (all its fields together)

    def line(self) -> str:
        unit = {"src": "prefixes", "dst": "prefixes", "protocol": "protocols"}.get(self.field, "port ranges")
        return (f"rule {self.rule}: {self.field} negated ({self.written} written) = {self.expands_to} {unit}; "
                f"the rule holds {_count(self.entries, 'entry', 'entries')}")


@dataclass
class ClassifierReport:
    """What classifying one packet costs on one hook: one hash lookup per shape, worst case all of them,
    after stage 0 has mapped the addresses to prefix classes."""

    dev: str
    hook: str
    rules: int
    entries: int       # bg_cls entries of the live generation
    shapes: list[ShapeCost]   # visit order
    stage0: list[TreeCost]
    negations: list[NegationCost] = field(default_factory=list)

    @property
    def lookups_worst(self) -> int:
        return len(self.shapes)

    def summary(self) -> str:
        n = self.lookups_worst
        text = (f"{self.dev} {self.hook}: {_count(self.rules, 'rule')}, {_count(self.entries, 'entry', 'entries')}, "
                f"{_count(n, 'shape')} = at most {_count(n, 'hash lookup')} per packet")
        trees = [f"{t.tree} {_count(t.classes, 'class', 'classes')} (max {_count(t.max_probes, 'probe')})"
                 for t in self.stage0]
        return text + (f"; stage 0: {', '.join(trees)}" if trees else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lookups_worst"] = self.lookups_worst
        return d


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _prefix(name: str, mask: int, bits: int) -> str:
    """name/N for a mask of N leading one bits (any other mask in hex)."""
    full = (1 << bits) - 1
    ones = bits - (full & ~mask).bit_length()
    return f"{name}/{ones}" if mask == full ^ (full >> ones) else f"{name}/{mask:#x}"


_CLASS_BITS = PRESENT - 1   # the class id's bits below the PRESENT and set bits (prefixes.py)


def shape_fields(mask: bytes) -> str:
    """The key fields a shape's mask (struct bg_cls_key layout) matches on, in key order."""
    m = L.ClsKey.unpack(mask)
    out = [f for f in PLAIN_FIELDS if getattr(m, f)]
    out += [f if getattr(m, f) == 0xFFFF else _prefix(f, getattr(m, f), 16) for f in ("sport", "dport")
            if getattr(m, f)]
    out += [_prefix(f, int.from_bytes(getattr(m, f), "big"), 128) for f in ("src", "dst") if any(getattr(m, f))]
    # a mask of a class's set bits only (a rule naming a set, "@name"), or of the class itself
    out += [f"{f} {'set' if getattr(m, f'{f}_cls') & _CLASS_BITS == 0 else 'class'}" for f in ("src", "dst")
            if getattr(m, f"{f}_cls")]
    return " ".join(out) or "any"


def _stage0(compiled: CompiledHook, conf: L.Conf) -> list[TreeCost]:
    return [TreeCost(TREE_NAMES[t], len(tr.prefixes), len(tr.top), len(tr.pfx),
                     max((len(lens) for _cls, _sub, lens in tr.top.values()), default=0))
            for t, tr in sorted(compiled.classes.trees.items()) if conf.trees >> t & 1]


def _negations(compiled: CompiledHook) -> list[NegationCost]:
    out = []
    for _prio, rid in sorted(compiled.order):
        rule = compiled.source.get(rid)
        for f in rule.negated if rule is not None else ():
            if isinstance(getattr(rule, f), SetRef):
                continue   # "!@set": one class bit clear, nothing expanded
            out.append(NegationCost(rule.name, f, len(getattr(rule, f)), len(rule.matching(f)),
                                    len(compiled.rule_keys.get(rid, ()))))
    return out


def report(dev: str, hook: str, rules: int, compiled: CompiledHook, conf: L.Conf) -> ClassifierReport:
    shapes = [ShapeCost(s.id, shape_fields(s.mask), s.entries) for s in conf.shapes]
    return ClassifierReport(dev, hook, rules, len(compiled.cls), shapes, _stage0(compiled, conf), _negations(compiled))
