"""A rule as a set of atoms: the cross product of its lists, with port ranges split into aligned prefix blocks.

An atom is one (mask, value) over the classifier key, held as one integer (layout.key_int) so that
shape fitting is plain bit arithmetic: an atom fits any shape whose mask covers its own.
"""

from __future__ import annotations

import itertools
import struct
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
class Atom:
    """One (mask, value) over the key as an integer (layout.key_int). `zero` are bits the packet is known
    to have zero whenever the atom's mask matches (an IPv4 address's bits past 32), never worth expanding."""

    mask: int
    value: int
    zero: int


def _pack(have, family, proto, tcp, it, ic, ct, vlan, sport, dport, src, dst) -> int:
    return L.key_int(struct.pack(L.KEY_FMT, 0, 0, have, family, proto, tcp, it, ic, ct, 0, vlan, sport, dport,
                                 src.to_bytes(16, "big"), dst.to_bytes(16, "big")))


def prefix_mask(length: int, bits: int) -> int:
    return ((1 << length) - 1) << (bits - length)


V4_ZERO = _pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (1 << 96) - 1, (1 << 96) - 1)


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
    """How many atoms rule_atoms() will yield (before shape fitting), without building them."""
    n = 1
    for f in ("src", "dst", "protocol", "vlan", "ct"):
        n *= len(getattr(rule, f) or (None,))
    for f in ("src_port", "dst_port"):
        ranges = getattr(rule, f)
        n *= sum(len(port_blocks(lo, hi)) for lo, hi in ranges) if ranges else 1
    return n


ANY = (0, 0, ADDR_BITS)


def rule_atoms(rule: Rule):
    """Yield the rule's atoms. Address pairs of different families are skipped (they match nothing)."""
    have = _have(rule)
    tmask, tval = rule.tcp_flags or (0, 0)
    srcs = [net_prefix(n) for n in rule.src] if rule.src else [None]
    dsts = [net_prefix(n) for n in rule.dst] if rule.dst else [None]
    sports = [b for lo, hi in rule.src_port for b in port_blocks(lo, hi)] if rule.src_port else [(0, 0)]
    dports = [b for lo, hi in rule.dst_port for b in port_blocks(lo, hi)] if rule.dst_port else [(0, 0)]
    it, ic = rule.icmp_type, rule.icmp_code
    for s, d in itertools.product(srcs, dsts):
        widths = {p[2] for p in (s, d) if p is not None}
        if len(widths) > 1:
            continue
        family = {32: 4, 128: 6}[widths.pop()] if widths else 0
        s, d = s or ANY, d or ANY
        zero = V4_ZERO if family == 4 else 0
        for proto, vlan, ct in itertools.product(rule.protocol or (None,), rule.vlan or (None,), rule.ct or (None,)):
            for (sp, spl), (dp, dpl) in itertools.product(sports, dports):
                mask = _pack(have, 0xFF if family else 0, 0 if proto is None else 0xFF, tmask,
                             0 if it is None else 0xFF, 0 if ic is None else 0xFF, 0 if ct is None else CT_MASK,
                             0 if vlan is None else VLAN_MASK, prefix_mask(spl, 16), prefix_mask(dpl, 16),
                             prefix_mask(s[1], ADDR_BITS), prefix_mask(d[1], ADDR_BITS))
                value = _pack(have, family, proto or 0, tval, it or 0, ic or 0, ct or 0, vlan or 0, sp, dp, s[0], d[0])
                yield Atom(mask, value, zero)


CT_MASK = 0x07     # ct states are 1..4: three bits, so a shape that adds ct costs 8x, not 256x
VLAN_MASK = 0x0FFF
