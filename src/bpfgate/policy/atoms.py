"""A rule as a set of atoms: the cross product of its lists, with port ranges split into aligned prefix blocks.

An atom is one (mask, value) over the classifier key, except that the four prefix fields (src, dst,
sport, dport) keep their own prefix length, so the shape quantiser can later widen them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from . import layout as L
from .model import Rule

ADDR_BITS = 128  # src/dst fields are 16 bytes; IPv4 sits in the top 32 bits, the rest is zero


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Inclusive range -> the fewest aligned (value, prefix_len) blocks over 16 bits that cover it exactly."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16   # largest block aligned at lo ...
        while size > hi - lo + 1:             # ... that does not pass hi
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


def net_prefix(net) -> tuple[int, int, int]:
    """Network -> (value over the 128-bit key field, prefix length, address width)."""
    width = net.max_prefixlen
    return int(net.network_address) << (ADDR_BITS - width), net.prefixlen, width


@dataclass(frozen=True, slots=True)
class Fixed:
    """The exact-match part of an atom (masks + values); equal masks are a necessary part of one shape."""

    have: int = 0
    family: int = 0          # value; mask is 0xff when nonzero
    proto: int | None = None
    tcp: tuple[int, int] = (0, 0)    # (mask, value)
    icmp_type: int | None = None
    icmp_code: int | None = None
    ct: int | None = None
    vlan: int | None = None

    def sig(self) -> tuple:
        """The masks alone: atoms with the same sig can share a shape."""
        return (self.have, bool(self.family), self.proto is not None, self.tcp[0], self.icmp_type is not None,
                self.icmp_code is not None, self.ct is not None, self.vlan is not None)


@dataclass(frozen=True, slots=True)
class Atom:
    fixed: Fixed
    src: tuple[int, int, int]      # (value, len, width); len 0 = any
    dst: tuple[int, int, int]
    sport: tuple[int, int]         # (value, len) over 16 bits
    dport: tuple[int, int]

    def lengths(self) -> tuple[int, int, int, int]:
        return self.src[1], self.dst[1], self.sport[1], self.dport[1]

    def widths(self) -> tuple[int, int]:
        return self.src[2], self.dst[2]


ANY_PORT = (0, 0)


def _have(rule: Rule) -> int:
    have = 0
    if rule.src or rule.dst:
        have |= L.HAVE_L3
    if rule.protocol:
        have |= L.HAVE_PROTO
    if rule.src_port or rule.dst_port:
        have |= L.HAVE_PORTS
    if rule.tcp_flags:
        have |= L.HAVE_TCPFLAGS
    if rule.icmp_type is not None or rule.icmp_code is not None:
        have |= L.HAVE_ICMP
    if rule.vlan is not None:
        have |= L.HAVE_VLAN
    if rule.ct is not None:
        have |= L.HAVE_CT
    return have


def atom_count(rule: Rule) -> int:
    """How many atoms rule_atoms() will yield (before shape quantisation), without building them."""
    n = 1
    for f in ("src", "dst", "protocol", "vlan", "ct"):
        n *= len(getattr(rule, f) or (None,))
    for f in ("src_port", "dst_port"):
        ranges = getattr(rule, f)
        n *= sum(len(port_blocks(lo, hi)) for lo, hi in ranges) if ranges else 1
    return n


def rule_atoms(rule: Rule):
    """Yield the rule's atoms. Address pairs of different families are skipped (they match nothing)."""
    have = _have(rule)
    srcs = [net_prefix(n) for n in rule.src] if rule.src else [None]
    dsts = [net_prefix(n) for n in rule.dst] if rule.dst else [None]
    sports = [b for lo, hi in rule.src_port for b in port_blocks(lo, hi)] if rule.src_port else [ANY_PORT]
    dports = [b for lo, hi in rule.dst_port for b in port_blocks(lo, hi)] if rule.dst_port else [ANY_PORT]
    for s, d in itertools.product(srcs, dsts):
        fams = {p[2] for p in (s, d) if p is not None}
        if len(fams) > 1:
            continue
        width = fams.pop() if fams else ADDR_BITS
        family = {32: 4, 128: 6}[width] if (s or d) else 0
        any_addr = (0, 0, width)  # a wildcard beside a known family widens only over that family's bits
        for proto, vlan, ct in itertools.product(rule.protocol or (None,), rule.vlan or (None,),
                                                 rule.ct or (None,)):
            fixed = Fixed(have, family, proto, rule.tcp_flags or (0, 0), rule.icmp_type, rule.icmp_code, ct, vlan)
            for sp, dp in itertools.product(sports, dports):
                yield Atom(fixed, s or any_addr, d or any_addr, sp, dp)
