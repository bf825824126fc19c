"""Binary layout of the policy engine's maps: one dataclass per map record, each with pack().

The C structs are in bpf/include/engine.h (docs/policy-engine.md section 5); a layout test compares these
formats with the objects' BTF. Native byte order (the BPF target is the
host's); ports and VLAN ids are host order, addresses network order. No bitfields, explicit padding.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

MAX_SHAPES = 32          # size of bg_conf.shapes[]; the compiler's default limit is lower
CONF_SLOTS = 2           # bg_conf is double-buffered; bg_active[0] names the live slot

# key.have: which parts the parser found. A rule sets the bits of the fields it needs, and the shape mask
# keeps them, so a packet missing a field (truncated, non-first fragment, not IP) never matches that rule.
HAVE_L3 = 0x01        # family, src, dst valid
HAVE_PROTO = 0x02     # L4 protocol known (IPv6: the extension header walk ended)
HAVE_PORTS = 0x04     # TCP/UDP/SCTP ports read (never on a non-first fragment)
HAVE_TCPFLAGS = 0x08  # TCP header flags read
HAVE_ICMP = 0x10      # ICMP/ICMPv6 type and code read
HAVE_VLAN = 0x20      # at least one VLAN tag (vlan = outer tag's id)
HAVE_CT = 0x40        # conntrack state looked up

ACT_PASS, ACT_DROP, ACT_REDIRECT = 1, 2, 3
ACTIONS = {"pass": ACT_PASS, "allow": ACT_PASS, "drop": ACT_DROP, "deny": ACT_DROP, "redirect": ACT_REDIRECT}

RF_COUNT = 0x0001          # update bg_counters[rule_id]
RF_LOG = 0x0002            # emit an event, at most log_rate per second
RF_MARK = 0x0004           # skb->mark = mark (TC only)
RF_RATE = 0x0008           # token bucket: rate tokens/s, burst tokens
RF_RATE_BYTES = 0x0010     # tokens are bytes (else packets)
RF_RATE_PER_SRC = 0x0020   # one bucket per source address (else per rule)
RF_REDIR_INGRESS = 0x0040  # redirect to the interface's ingress (else egress)

KEY_FMT = "=BBBBBBBBBBHHH16s16sII"   # struct bg_cls_key, 56 bytes
VAL_FMT = "=II"                    # struct bg_cls_val, 8 bytes
RULE_FMT = "=BBHIIIQQ"             # struct bg_rule, 32 bytes
SHAPE_FMT = "=56sIBBBBII"          # struct bg_shape, 72 bytes
CONF_HDR_FMT = "=IIBB6x"           # head of struct bg_conf, 16 bytes; then MAX_SHAPES x bg_shape
PFX_TOP_FMT = "=IIB7B"             # struct bg_pfx_top, 16 bytes
PFX_KEY_FMT = "=16sBBB5x"          # struct bg_pfx_key, 24 bytes
KEY_SIZE = struct.calcsize(KEY_FMT)
assert KEY_SIZE == 56 and struct.calcsize(VAL_FMT) == 8 and struct.calcsize(RULE_FMT) == 32
assert struct.calcsize(SHAPE_FMT) == 72 and struct.calcsize(CONF_HDR_FMT) == 16
assert struct.calcsize(PFX_TOP_FMT) == 16 and struct.calcsize(PFX_KEY_FMT) == 24

# stage 0 (prefix classes): trees by field and family, bg_conf.trees bits, level-0 geometry
TREE_SRC4, TREE_SRC6, TREE_DST4, TREE_DST6 = 0, 1, 2, 3
PFX_LENS = 7           # longer lengths probed per level-0 bucket, at most
PFX_TOP_BITS = 16      # level 0 is indexed by the address's top 16 bits
PFX_SUB_BITS = 5       # and says which of the bucket's 32 sub-ranges (bits 16..20) hold a longer prefix


@dataclass(frozen=True, slots=True)
class ClsKey:
    """Key of the hash map bg_cls: a packet's fields ANDed with a shape mask, plus shape id and generation."""

    shape: int = 0
    gen: int = 0
    have: int = 0
    family: int = 0        # 0 (not IP), 4, 6
    proto: int = 0
    tcp_flags: int = 0
    icmp_type: int = 0
    icmp_code: int = 0
    ct_state: int = 0      # model.CT_STATES value
    vlan: int = 0
    sport: int = 0
    dport: int = 0
    src: bytes = bytes(16)  # IPv4 in the first 4 bytes, the rest zero
    dst: bytes = bytes(16)
    src_cls: int = 0        # prefix class (stage 0); 0 in a packet key until the classifier sets it
    dst_cls: int = 0

    def pack(self) -> bytes:
        return struct.pack(KEY_FMT, self.shape, self.gen, self.have, self.family, self.proto, self.tcp_flags,
                           self.icmp_type, self.icmp_code, self.ct_state, 0, self.vlan, self.sport,
                           self.dport, self.src, self.dst, self.src_cls, self.dst_cls)

    @classmethod
    def unpack(cls, raw: bytes) -> "ClsKey":
        (shape, gen, have, family, proto, flags, it, ic, ct, _pad, vlan, sport, dport, src,
         dst, src_cls, dst_cls) = struct.unpack(KEY_FMT, raw)
        return cls(shape, gen, have, family, proto, flags, it, ic, ct, vlan, sport, dport, src, dst, src_cls, dst_cls)


# byte offsets of the key fields (for building masks as one integer over the 56 bytes)
KEY_SHAPE_OFF, KEY_GEN_OFF = 0, 1


def key_int(raw: bytes) -> int:
    """The key as one opaque integer, so masking a key is a single AND (bytewise, so endianness-safe)."""
    return int.from_bytes(raw, "big")


def int_key(value: int) -> bytes:
    return value.to_bytes(KEY_SIZE, "big")


@functools.lru_cache(maxsize=1024)
def shape_gen_bits(shape: int, gen: int) -> int:
    """The shape and gen bytes as they sit in key_int() of a key."""
    return key_int(bytes([shape, gen]) + bytes(KEY_SIZE - 2))


@dataclass(frozen=True, slots=True)
class ClsValue:
    """Value of bg_cls: the best (lowest) priority among the rules that produced this key, and its slot."""

    prio: int
    rule_id: int

    def pack(self) -> bytes:
        return struct.pack(VAL_FMT, self.prio, self.rule_id)

    def __reduce__(self):   # a snapshot holds one per bg_cls entry: 2x faster (un)pickling than slots' default
        return ClsValue, (self.prio, self.rule_id)


@dataclass(frozen=True, slots=True)
class RuleAction:
    """Value of the array bg_rules[rule_id]: what a matching packet gets. Counters and rate/log state live
    in maps indexed by the same rule_id (bg_counters per-CPU, bg_rate_rule, bg_rate_src LRU)."""

    action: int
    over_action: int = 0
    flags: int = 0
    redirect_ifindex: int = 0
    mark: int = 0
    log_rate: int = 0
    rate: int = 0
    burst: int = 0

    def pack(self) -> bytes:
        return struct.pack(RULE_FMT, self.action, self.over_action, self.flags, self.redirect_ifindex,
                           self.mark, self.log_rate, self.rate, self.burst)


@dataclass(frozen=True, slots=True)
class Shape:
    """One entry of bg_conf.shapes[]: the mask applied to the packet key, the shape id written into it, and
    the best priority among its entries (the early-stop bound)."""

    id: int
    mask: bytes            # 56 bytes, bg_cls_key layout; shape and gen bytes are zero
    best_prio: int
    entries: int = field(default=0, compare=False)   # informational: not a reason to rewrite bg_conf

    def pack(self) -> bytes:
        return struct.pack(SHAPE_FMT, self.mask, self.best_prio, self.id, 0, 0, 0, self.entries, 0)


@dataclass(frozen=True, slots=True)
class Conf:
    """Value of bg_conf[slot]: everything one generation of the classifier reads besides bg_cls."""

    gen: int                      # key.gen of this generation's bg_cls entries
    default_rule: int             # rule_id applied when no entry matches
    shapes: tuple[Shape, ...] = field(default=())   # visit order: best_prio ascending
    trees: int = 0                # 1 << TREE_*: prefix-class trees in use (stage 0)

    def pack(self) -> bytes:
        if len(self.shapes) > MAX_SHAPES:
            raise ValueError(f"{len(self.shapes)} shapes > {MAX_SHAPES}")
        empty = Shape(0, bytes(KEY_SIZE), 0xFFFFFFFF).pack()
        body = b"".join(s.pack() for s in self.shapes) + empty * (MAX_SHAPES - len(self.shapes))
        return struct.pack(CONF_HDR_FMT, len(self.shapes), self.default_rule, self.gen, self.trees) + body
