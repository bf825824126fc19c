"""Two classifiers that must always agree.

- `Reference` reads only the compiled map contents (bg_conf, bg_cls, bg_rules) and does what the BPF
  program does, step by step: the oracle of the kernel differential test.
- `naive()` walks the policy's rules in order and tests each field directly: the oracle of the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layout as L
from .compile import DEFAULT_NAME, CompiledHook
from .model import HookPolicy, Rule, SetRef
from .packet import Packet
from .prefixes import Classes
from .sets import in_set

NO_MATCH = 0xFFFFFFFF


@dataclass(frozen=True)
class Verdict:
    rule_id: int | None      # None from naive(); the slot from Reference
    name: str                # rule name, or "(default)"
    action: int              # layout.ACT_*


class Reference:
    """Classify from map contents exactly as the data plane does (see docs/policy-engine.md, 'lookup')."""

    def __init__(self, conf: L.Conf, cls: dict[bytes, L.ClsValue], rules: dict[int, L.RuleAction],
                 names: dict[int, str] | None = None, classes: Classes | None = None):
        self.conf, self.cls, self.rules, self.names = conf, cls, rules, names or {}
        self.classes = classes or Classes()
        self.shapes = [(s.best_prio, L.key_int(s.mask), L.shape_gen_bits(s.id, conf.gen),
                        s.fmask if any(s.fmask) else None, s.filter) for s in conf.shapes]
        self.lookups = 0  # hash lookups done, for tests of the early stop
        # the SHAPE_DIRECT shape (mask, tag): its keys that fit bg_cls_direct are read before the loop, whose
        # filter for it holds only its other keys
        self.direct = next(((L.key_int(s.mask), L.shape_gen_bits(s.id, conf.gen)) for s in conf.shapes
                            if s.id & L.SHAPE_DIRECT), None)

    @classmethod
    def of(cls, compiled: CompiledHook) -> "Reference":
        return cls(compiled.conf(), compiled.cls, compiled.rules, compiled.names, compiled.classes)

    def lookup(self, key: bytes) -> int:
        """The rule_id for a packed packet key."""
        if self.conf.trees:   # stage 0: prefix classes, of the sides some shape may look up for the protocol
            key = L.unclassed(self.classes.stamp(key), self.conf.tree_protos)
        k = L.key_int(key)
        best_prio, best_rule = NO_MATCH, self.conf.default_rule
        if self.direct is not None:   # BPF: the array, before the loop (a hit only lowers best_prio)
            dkey = L.int_key((k & self.direct[0]) | self.direct[1])
            hit = self.cls.get(dkey) if L.in_direct(dkey) else None
            if hit is not None:
                best_prio, best_rule = hit.prio, hit.rule_id
        for shape_best, mask, tag, fmask, bits in self.shapes:   # BPF: bounded loop over MAX_SHAPES
            if shape_best >= best_prio:                # no later shape can hold a better rule
                break
            if fmask is not None and not bits >> L.filter_bit(key, fmask) & 1:
                continue   # the filter says no entry: skipped as in BPF (a bit missing shows as a miss)
            self.lookups += 1
            hit = self.cls.get(L.int_key((k & mask) | tag))
            if hit is not None and hit.prio < best_prio:
                best_prio, best_rule = hit.prio, hit.rule_id
        return best_rule

    def classify(self, pkt: Packet) -> Verdict:
        rid = self.lookup(pkt.key())
        return Verdict(rid, self.names.get(rid, str(rid)), self.rules[rid].action)


def _holds(rule: Rule, field: str, hit: bool) -> bool:
    """A field's test as written: `hit` (the packet's value is among the listed), or its negation."""
    return not hit if field in rule.negated else hit


def rule_matches(rule: Rule, p: Packet, sets: dict | None = None) -> bool:
    """The rule's meaning, written directly (p must be Packet.effective()); a negated field still needs the
    packet to have that field (and an address of a family written; a set: of either family)."""
    for f, value in (("src", p.src), ("dst", p.dst), ("src_port", p.sport), ("dst_port", p.dport)):
        ref = getattr(rule, f)
        if isinstance(ref, SetRef) and (value is None or not _holds(rule, f, in_set(sets or {}, ref, value))):
            return False
    for f, addr in (("src", p.src), ("dst", p.dst)):
        nets = getattr(rule, f)
        if isinstance(nets, SetRef):
            continue
        if nets is not None and (addr is None or not _holds(rule, f, any(addr in n for n in nets))
                                 or (f in rule.negated and addr.version not in {n.version for n in nets})):
            return False
    if rule.protocol is not None and (p.proto is None or not _holds(rule, "protocol", p.proto in rule.protocol)):
        return False
    for f, port in (("src_port", p.sport), ("dst_port", p.dport)):
        ranges = getattr(rule, f)
        if ranges is not None and not isinstance(ranges, SetRef) and (port is None or not _holds(rule, f, any(lo <= port <= hi for lo, hi in ranges))):
            return False
    if rule.tcp_flags is not None:
        mask, value = rule.tcp_flags
        if p.tcp_flags is None or p.tcp_flags & mask != value:
            return False
    for want, got in ((rule.icmp_type, p.icmp_type), (rule.icmp_code, p.icmp_code)):
        if want is not None and got != want:
            return False
    if rule.vlan is not None and p.vlan not in rule.vlan:
        return False
    if rule.ct is not None and p.ct not in rule.ct:
        return False
    return True


def naive(hp: HookPolicy, pkt: Packet) -> Verdict:
    """First matching rule in order, else the hook default."""
    p = pkt.effective()
    for rule in hp.rules:
        if rule_matches(rule, p, hp.sets):
            return Verdict(None, rule.name, L.ACTIONS[rule.action])
    return Verdict(None, DEFAULT_NAME, L.ACTIONS[hp.default])
