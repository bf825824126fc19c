"""A rule as a set of atoms: the cross product of its lists, with port ranges split into aligned prefix blocks.

An atom is one (mask, value) over the classifier key, held as one integer (layout.key_int) so that
shape fitting is plain bit arithmetic: an atom fits any shape whose mask covers its own.
"""

from __future__ import annotations

import functools
import itertools
import sys
from typing import NamedTuple

from . import layout as L
from .model import CT_STATES, Rule, SetRef
from .prefixes import PAIR_CAP, tree_of

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


class Atom(NamedTuple):
    """One (mask, value) over the key as an integer (layout.key_int). `zero` are bits the packet is known
    to have zero whenever the atom's mask matches (an IPv4 address's bits past 32), never worth expanding.
    A tuple: a compile makes one per rule at least, and a frozen dataclass's __init__ costs ~4x more."""

    mask: int
    value: int
    zero: int


# src and dst are 16 big-endian bytes each in the key: in key_int() they are the address shifted into place,
# so only the other fields are packed (once per distinct combination: a blocklist has a handful)
_SRC_SHIFT = 8 * (L.KEY_SIZE - L.KEY_OFF["src"] - 16)
_DST_SHIFT = 8 * (L.KEY_SIZE - L.KEY_OFF["dst"] - 16)
_NO_ADDR = bytes(16)


@functools.lru_cache(maxsize=1 << 14)
def _fields(have, family, proto, tcp, it, ic, ct, vlan, sport, dport, src_cls, dst_cls) -> int:
    return L.key_int(L.KEY.pack(0, 0, have, family, proto, tcp, it, ic, ct, vlan, sport, dport,
                                _NO_ADDR, _NO_ADDR, src_cls, dst_cls))


def _pack(have, family, proto, tcp, it, ic, ct, vlan, sport, dport, src, dst, src_cls=0, dst_cls=0) -> int:
    return (_fields(have, family, proto, tcp, it, ic, ct, vlan, sport, dport, src_cls, dst_cls)
            | src << _SRC_SHIFT | dst << _DST_SHIFT)


def prefix_mask(length: int, bits: int) -> int:
    return ((1 << length) - 1) << (bits - length)


V4_ZERO = _pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (1 << 96) - 1, (1 << 96) - 1)


def _have(rule: Rule) -> int:
    have = 0
    if rule.src is not None or rule.dst is not None:
        have |= L.HAVE_L3
    if rule.protocol is not None:
        have |= L.HAVE_PROTO
    if rule.src_port is not None or rule.dst_port is not None:
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
    one = one_address(rule)
    if one is not None:
        return len(one[1])
    src, dst, protos, sport, dport = rule.matching_negatable()
    n = 1
    for v in (src, dst, protos, rule.vlan, rule.ct):
        if v is not None and not isinstance(v, SetRef):
            n *= len(v)
    for ranges in (sport, dport):
        if ranges is not None:
            n *= sum(len(port_blocks(lo, hi)) for lo, hi in ranges)
    return n


def entries_estimate(rules, enough: int) -> int:
    """At least how many classifier entries `rules` make (their atoms; a rule naming a set counts one, as
    does one whose address list compiles as a set), counted until `enough`: read before compiling, to tell a
    policy with large tables."""
    from .sets import set_list

    n = 0
    for rule in rules:
        d = rule.__dict__
        if not any(isinstance(d[f], SetRef) for f in ("src", "dst", "src_port", "dst_port")):
            n += atom_count(rule) if set_list(rule) is None else 1
        else:
            n += 1
        if n >= enough:
            break
    return n


ANY = (0, 0, ADDR_BITS)
CLS_ALL = 0xFFFFFFFF
NO_CLASS = (None,)   # the address stays a raw prefix


def _cls_bits(c: int) -> int:
    """A class id as it sits in key_int() (u32 in native byte order in the last 8 key bytes)."""
    return int.from_bytes(c.to_bytes(4, sys.byteorder), "big")


def _classes(classes, field_name: str, version: int, value: int, plen: int) -> range | tuple:
    tr = classes.trees.get(tree_of(field_name, version)) if classes is not None else None
    found = tr.classes_in(value, plen) if tr is not None else None
    return NO_CLASS if found is None else found


def _prefix(net) -> tuple[int, int, int, int, int]:
    """(value over the 128-bit key field, prefix length, address width, value over the address width,
    IP version)."""
    width, v = net.max_prefixlen, int(net.network_address)
    return v << (ADDR_BITS - width), net.prefixlen, width, v, net.version


def _set_bits(rule: Rule, classes, field_name: str, ref) -> tuple[int, int]:
    """(mask, value) over the field's class id for a set reference: the set's bit, set (or clear: negated)."""
    bit = classes.set_bit(field_name, ref.name) if classes is not None else None
    if bit is None:
        raise ValueError(f"{field_name}: set {ref.name!r} has no class bit in this compile")
    return bit, 0 if field_name in rule.negated else bit


# a rule's fields that _address_atoms() reads as rule_atoms() would: the others must hold their defaults
_ADDRESS_FIELDS = frozenset({"name", "src", "dst", "action", "comment", "count", "log", "mark", "rate_limit",
                             "redirect", "reject", "owner"})


def atoms_of(rule: Rule, classes=None) -> list[Atom]:
    """list(rule_atoms(rule, classes)), for a rule matching on one address field alone (a blocklist's rule:
    most of a large policy) ~4x faster."""
    one = one_address(rule)
    return _address_atoms(*one, classes) if one is not None else list(rule_atoms(rule, classes))


def address_list(rule: Rule) -> bool:
    """Whether the rule matches one address field's list alone: one atom per address listed (as many
    one-address rules make), no cross product."""
    return one_address(rule) is not None


def one_address(rule: Rule) -> tuple[str, tuple] | None:
    """(field, networks) of a rule matching that address field alone, its networks as written; else None."""
    d = rule.__dict__
    src, dst = d["src"], d["dst"]
    if (src is None) != (dst is None) and rule.__pydantic_fields_set__ <= _ADDRESS_FIELDS and not d["negated"] \
            and type(src or dst) is tuple:
        return ("src", src) if dst is None else ("dst", dst)
    return None


@functools.lru_cache(maxsize=1 << 10)
def _address_key(field_name: str, family: int, plen: int | None, kmask: int) -> tuple[int, int]:
    """(mask, value without the address or class) of an atom matching one address field alone: a class
    (plen None; its class bits go in the field's class id) or a raw prefix of plen bits."""
    cls_mask, raw_mask = (kmask, 0) if plen is None else (0, prefix_mask(plen, ADDR_BITS))
    if field_name == "src":
        mask = _pack(L.HAVE_L3, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, raw_mask, 0, cls_mask, 0)
    else:
        mask = _pack(L.HAVE_L3, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, raw_mask, 0, cls_mask)
    return mask, _pack(L.HAVE_L3, family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _address_atoms(field_name: str, nets: tuple, classes) -> list[Atom]:
    kmask = classes.kmask(field_name) if classes is not None and classes.set_bits else CLS_ALL
    src = field_name == "src"
    out = []
    for net in nets:
        family, plen, value = net.version, net.prefixlen, int(net.network_address)
        zero = V4_ZERO if family == 4 else 0
        found = _classes(classes, field_name, family, value, plen)
        if found is NO_CLASS:
            mask, base = _address_key(field_name, family, plen, kmask)
            shifted = value << (ADDR_BITS - net.max_prefixlen)
            out.append(Atom(mask, base | shifted << (_SRC_SHIFT if src else _DST_SHIFT), zero))
            continue
        mask, base = _address_key(field_name, family, None, kmask)
        for c in found:
            out.append(Atom(mask, base | (_cls_bits(c) << 32 if src else _cls_bits(c)), zero))
    return out


def rule_atoms(rule: Rule, classes=None):
    """Yield the rule's atoms. Address pairs of different families are skipped (they match nothing).
    With `classes` (prefixes.Classes), an address prefix that is a class prefix becomes one atom per class
    nested in it (an exact class id: no prefix length in the mask), others stay raw prefixes. A field naming
    an address set is one atom: the set's bit of the field's class id (any family: the set holds both)."""
    have = _have(rule)
    d = rule.__dict__
    tmask, tval = d["tcp_flags"] or (0, 0)
    src, dst, protos, sport, dport = rule.matching_negatable()
    smask = sval = dmask = dval = 0   # set bits over src_cls / dst_cls
    if isinstance(src, SetRef):
        smask, sval = _set_bits(rule, classes, "src", src)
        src = None
    if isinstance(dst, SetRef):
        dmask, dval = _set_bits(rule, classes, "dst", dst)
        dst = None
    # a negated field may match nothing: no atoms then
    srcs = [_prefix(n) for n in src] if src is not None else [None]
    dsts = [_prefix(n) for n in dst] if dst is not None else [None]
    sports = [b for lo, hi in sport for b in port_blocks(lo, hi)] if sport is not None else [(0, 0)]
    dports = [b for lo, hi in dport for b in port_blocks(lo, hi)] if dport is not None else [(0, 0)]
    it, ic = d["icmp_type"], d["icmp_code"]
    with_sets = classes is not None and classes.set_bits
    skmask = classes.kmask("src") if with_sets else CLS_ALL
    dkmask = classes.kmask("dst") if with_sets else CLS_ALL
    inner = list(itertools.product(protos if protos is not None else (None,), d["vlan"] or (None,), d["ct"] or (None,),
                                   sports, dports))
    for sn, dn in ((srcs[0], dsts[0]),) if len(srcs) == len(dsts) == 1 else itertools.product(srcs, dsts):
        if sn is not None and dn is not None and sn[4] != dn[4]:
            continue
        scls = NO_CLASS if sn is None else _classes(classes, "src", sn[4], sn[3], sn[1])
        dcls = NO_CLASS if dn is None else _classes(classes, "dst", dn[4], dn[3], dn[1])
        if scls is not NO_CLASS and dcls is not NO_CLASS and len(scls) * len(dcls) > PAIR_CAP:
            if len(scls) >= len(dcls):
                scls = NO_CLASS
            else:
                dcls = NO_CLASS
        s = ANY if sn is None else sn
        dd = ANY if dn is None else dn
        family = 0 if sn is None and dn is None else (sn if sn is not None else dn)[4]
        zero = V4_ZERO if family == 4 else 0
        s_cls, d_cls = scls is not NO_CLASS, dcls is not NO_CLASS
        pairs = [(sc, dc) for sc in scls for dc in dcls]   # one atom per class pair (one, unless classes)
        for proto, vlan, ct, (sp, spl), (dp, dpl) in inner:
            mask = _pack(have, 0xFF if family else 0, 0 if proto is None else 0xFF, tmask,
                         0 if it is None else 0xFF, 0 if ic is None else 0xFF,
                         0 if ct is None else CT_MASK, 0 if vlan is None else VLAN_MASK,
                         prefix_mask(spl, 16), prefix_mask(dpl, 16),
                         0 if s_cls else prefix_mask(s[1], ADDR_BITS), 0 if d_cls else prefix_mask(dd[1], ADDR_BITS),
                         skmask if s_cls else smask, dkmask if d_cls else dmask)
            base = _pack(have, family, proto or 0, tval, it or 0, ic or 0, ct or 0, vlan or 0, sp, dp,
                         0 if s_cls else s[0], 0 if d_cls else dd[0], sval, dval)
            for sc, dc in pairs:
                yield Atom(mask, base | (_cls_bits(sc) << 32 if sc else 0) | (_cls_bits(dc) if dc else 0), zero)


# the bits that hold a ct state (1..4: three), so a shape that adds ct costs 8x, not 256x
CT_MASK = (1 << max(CT_STATES.values()).bit_length()) - 1
VLAN_MASK = 0x0FFF
