"""Binary layout of the policy engine's maps: one dataclass per map record, each with pack().

Layouts and constants are read from the engine object's BTF (bpfgate.contract; the C side is
bpf/include/engine.h): a record packs the fields it names, in C order, with BTF's offsets and padding.
Native byte order (the BPF target is the host's); ports and VLAN ids are host order, addresses network
order.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from bpfgate import contract

C = contract.constants("engine")

MAX_SHAPES = C.BG_MAX_SHAPES    # size of bg_conf.shapes[]; the compiler's default limit is lower
CONF_SLOTS = C.BG_CONF_SLOTS    # bg_conf is double-buffered; bg_active[0] names the live slot
GEN_OVERLAY = C.BG_GEN_OVERLAY  # key.gen bit of a batch's overlay entries, read while bg_conf.overlay is set
PRIO_NONE = C.BG_PRIO_NONE & 0xFFFFFFFF   # an overlay entry hiding its key (BTF keeps the enum signed)

# key.have: which parts the parser found. A rule sets the bits of the fields it needs, and the shape mask
# keeps them, so a packet missing a field (truncated, non-first fragment, not IP) never matches that rule.
HAVE_L3 = C.BG_HAVE_L3              # family, src, dst valid
HAVE_PROTO = C.BG_HAVE_PROTO        # L4 protocol known (IPv6: the extension header walk ended)
HAVE_PORTS = C.BG_HAVE_PORTS        # TCP/UDP/SCTP ports read (never on a non-first fragment)
HAVE_TCPFLAGS = C.BG_HAVE_TCPFLAGS  # TCP header flags read
HAVE_ICMP = C.BG_HAVE_ICMP          # ICMP/ICMPv6 type and code read
HAVE_VLAN = C.BG_HAVE_VLAN          # at least one VLAN tag (vlan = outer tag's id)
HAVE_CT = C.BG_HAVE_CT              # conntrack state looked up

ACT_PASS, ACT_DROP, ACT_REDIRECT, ACT_REJECT = C.BG_ACT_PASS, C.BG_ACT_DROP, C.BG_ACT_REDIRECT, C.BG_ACT_REJECT
ACTIONS = {"pass": ACT_PASS, "allow": ACT_PASS, "drop": ACT_DROP, "deny": ACT_DROP, "redirect": ACT_REDIRECT,
           "reject": ACT_REJECT}
# what a reject sends for anything but TCP (TCP gets a RST): enum bg_reject_with
REJECT_WITH = {word: value for value, word in C.names("bg_reject_with", {
    "BG_REJECT_PORT_UNREACHABLE": "port-unreachable", "BG_REJECT_ADMIN_PROHIBITED": "admin-prohibited"}).items()}

RF_COUNT = C.BG_RF_COUNT                  # update bg_counters[rule_id]
RF_LOG = C.BG_RF_LOG                      # emit an event, at most log_rate per second
RF_MARK = C.BG_RF_MARK                    # skb->mark = mark (TC only)
RF_RATE = C.BG_RF_RATE                    # token bucket: rate tokens/s, burst tokens
RF_RATE_BYTES = C.BG_RF_RATE_BYTES        # tokens are bytes (else packets)
RF_RATE_PER_SRC = C.BG_RF_RATE_PER_SRC    # one bucket per source address (else per rule)
RF_REDIR_INGRESS = C.BG_RF_REDIR_INGRESS  # redirect to the interface's ingress (else egress)
RF_REDIR_GONE_DROP = C.BG_RF_REDIR_GONE_DROP  # the redirect target is gone: drop (else pass)

KEY = contract.record("engine", "bg_cls_key", "shape gen have family proto tcp_flags icmp_type icmp_code ct_state "
                                              "vlan sport dport src dst src_cls dst_cls")
VAL = contract.record("engine", "bg_cls_val", "prio rule_id")
RULE = contract.record("engine", "bg_rule", "action over_action flags redirect_ifindex mark log_rate rate burst "
                                           "reject_with reject_rate")
SHAPE = contract.record("engine", "bg_shape", "mask best_prio id filtered entries fmask filter")
CONF = contract.record("engine", "bg_conf", "nshapes default_rule gen trees overlay direct tree_protos shapes")
CONF_DIRECT_OFF = contract.struct("engine", "bg_conf").direct.offset
PFX_TOP = contract.record("engine", "bg_pfx_top", "cls sub nlens lens")
PFX_KEY = contract.record("engine", "bg_pfx_key", "addr gen tree len")
KEY_SIZE = KEY.size
# byte offsets of the key's fields (a key is also handled as bytes and as one integer over its bytes)
_KEY_CTYPE = contract.struct("engine", "bg_cls_key")
KEY_OFF = {f: getattr(_KEY_CTYPE, f).offset for f, *_ in _KEY_CTYPE._fields_}
KEY_SHAPE_OFF, KEY_GEN_OFF = KEY_OFF["shape"], KEY_OFF["gen"]
SHAPE_SIZE = SHAPE.size

# A shape whose mask has no address bits past src[0..3] and dst[0..3] (every IPv4 shape) keeps its entries in
# bg_cls_short under a 32-byte key (a shorter hash per lookup); its id carries SHAPE_SHORT, so a key says
# which map it lives in. The control plane handles every key in the 56-byte form; short_key() converts.
SHAPE_SHORT = C.BG_SHAPE_SHORT
CLS_MAPS = ("bg_cls", "bg_cls_short")
SHORT_KEY_SIZE = ctypes.sizeof(contract.struct("engine", "bg_cls_short_key"))
_SRC, _DST = KEY_OFF["src"], KEY_OFF["dst"]
_WIDE_ADDR = int.from_bytes(bytes(_SRC + 4) + b"\xff" * 12 + bytes(4) + b"\xff" * 12 + bytes(KEY_SIZE - _DST - 16),
                            "big")   # key_int() bits of src[4..15] and dst[4..15]


# The shape "protocol P, destination port N" (exactly this mask; one per generation) carries SHAPE_DIRECT
# too: its keys of a packet with both have bits and a protocol with ports live in the array bg_cls_direct,
# read without a hash (engine.h); its other keys, and every overlay key, in bg_cls_short, and its filter
# holds only those (in_direct() keys are left out of it).
SHAPE_DIRECT = C.BG_SHAPE_DIRECT
DIRECT_PROTOS = C.BG_DIRECT_PROTOS
DIRECT_SLOTS = C.BG_DIRECT_SLOTS
_DIRECT_PROTO = {132: 0, 17: 1, 6: 2}   # sctp, udp, tcp: slot proto & 3 (direct_index() in engine.bpf.c)
assert len(_DIRECT_PROTO) == DIRECT_PROTOS and all(p & 3 == s for p, s in _DIRECT_PROTO.items())
_HAVE, _PROTO, _DPORT = KEY_OFF["have"], KEY_OFF["proto"], KEY_OFF["dport"]
_DIRECT_HAVE = HAVE_PROTO | HAVE_PORTS
DIRECT_MASK = bytes(_HAVE) + bytes((_DIRECT_HAVE,)) + bytes(_PROTO - _HAVE - 1) + b"\xff" + \
    bytes(_DPORT - _PROTO - 1) + b"\xff\xff" + bytes(KEY_SIZE - _DPORT - 2)
_DIRECT_MASK_INT = int.from_bytes(DIRECT_MASK, "big")
_DIRECT_EMPTY = bytes(VAL.size)   # prio 0: no entry
_U32 = struct.Struct("=I")


def shape_id(index: int, mask: int) -> int:
    """The id of shape number `index` (below 64) with this mask (key_int form): SHAPE_SHORT set when no
    address bit past the first 4 bytes of src and dst is in it; SHAPE_DIRECT too for the direct mask."""
    return index | (0 if mask & _WIDE_ADDR else SHAPE_SHORT) | (SHAPE_DIRECT if mask == _DIRECT_MASK_INT else 0)


def shape_index(sid: int) -> int:
    return sid & ~(SHAPE_SHORT | SHAPE_DIRECT)


def short_key(key: bytes) -> bytes:
    """A key of a SHAPE_SHORT shape in bg_cls_short's form: words 0 and 1, src[0..3], dst[0..3], classes."""
    return key[:_SRC + 4] + key[_DST:_DST + 4] + key[_DST + 16:]


def direct_index(key: bytes) -> int | None:
    """The index in bg_cls_direct of a key (56-byte form) that lives there, else None."""
    if not key[KEY_SHAPE_OFF] & SHAPE_DIRECT or key[KEY_GEN_OFF] & GEN_OVERLAY or key[_HAVE] != _DIRECT_HAVE:
        return None
    slot = _DIRECT_PROTO.get(key[_PROTO])
    if slot is None:
        return None
    port = int.from_bytes(key[_DPORT:_DPORT + 2], sys.byteorder)
    return ((key[KEY_GEN_OFF] & 1) * DIRECT_PROTOS + slot) << 16 | port


def in_direct(key: bytes) -> bool:
    """Whether a key (56-byte form) lives in bg_cls_direct."""
    return bool(key[KEY_SHAPE_OFF] & SHAPE_DIRECT) and direct_index(key) is not None


def cls_map_key(key: bytes) -> tuple[str, bytes]:
    """The classifier map a key (56-byte form) lives in, and the key as that map holds it."""
    if key[KEY_SHAPE_OFF] & SHAPE_DIRECT:
        i = direct_index(key)
        if i is not None:
            return "bg_cls_direct", _U32.pack(i)
    return ("bg_cls_short", short_key(key)) if key[KEY_SHAPE_OFF] & SHAPE_SHORT else ("bg_cls", key)


def split_keys(keys) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Keys (56-byte form) by the map they live in (CLS_MAPS): bg_cls keys, bg_cls_short keys in its form,
    bg_cls_direct indexes (u32)."""
    wide, short, direct = [], [], []
    for k in keys:
        sid = k[KEY_SHAPE_OFF]
        if sid & SHAPE_DIRECT and (i := direct_index(k)) is not None:
            direct.append(_U32.pack(i))
        elif sid & SHAPE_SHORT:
            short.append(short_key(k))
        else:
            wide.append(k)
    return wide, short, direct


def direct_empty(n: int) -> bytes:
    """n bg_cls_direct values of no entry (an array's delete)."""
    return _DIRECT_EMPTY * n

# stage 0 (prefix classes): trees by field and family, bg_conf.trees bits, level-0 geometry
TREE_SRC4, TREE_SRC6, TREE_DST4, TREE_DST6 = C.BG_TREE_SRC4, C.BG_TREE_SRC6, C.BG_TREE_DST4, C.BG_TREE_DST6
PFX_LENS = C.BG_PFX_LENS            # longer lengths probed per level-0 bucket, at most
PFX_TOP_BITS = C.BG_PFX_TOP_BITS    # level 0 is indexed by the address's top 16 bits
PFX_SUB_BITS = C.BG_PFX_SUB_BITS    # and says which of the bucket's 32 sub-ranges (bits 16..20) hold a longer prefix


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
        return KEY.pack(self.shape, self.gen, self.have, self.family, self.proto, self.tcp_flags, self.icmp_type,
                        self.icmp_code, self.ct_state, self.vlan, self.sport, self.dport, self.src, self.dst,
                        self.src_cls, self.dst_cls)

    @classmethod
    def unpack(cls, raw: bytes) -> "ClsKey":
        return cls(*KEY.unpack(raw))



def overlay_key(raw: bytes) -> bytes:
    """The overlay entry's key of a bg_cls key: its gen byte with GEN_OVERLAY set."""
    g = KEY_GEN_OFF
    return raw[:g] + bytes((raw[g] | GEN_OVERLAY,)) + raw[g + 1:]


def key_int(raw: bytes) -> int:
    """The key as one opaque integer, so masking a key is a single AND (bytewise, so endianness-safe)."""
    return int.from_bytes(raw, "big")


def int_key(value: int) -> bytes:
    return value.to_bytes(KEY_SIZE, "big")


@functools.lru_cache(maxsize=1024)
def shape_gen_bits(shape: int, gen: int) -> int:
    """The shape and gen bytes as they sit in key_int() of a key."""
    return key_int(KEY.pack(shape, gen, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"", b"", 0, 0))


@dataclass(frozen=True, slots=True)
class ClsValue:
    """Value of bg_cls: the best (lowest) priority among the rules that produced this key, and its slot."""

    prio: int
    rule_id: int

    def pack(self) -> bytes:
        return VAL.pack(self.prio, self.rule_id)

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
    reject_with: int = 0    # REJECT_WITH value (action reject)
    reject_rate: int = 0    # replies per second at most (action reject)

    def pack(self) -> bytes:
        return RULE.pack(self.action, self.over_action, self.flags, self.redirect_ifindex, self.mark, self.log_rate,
                         self.rate, self.burst, self.reject_with, self.reject_rate)


# A shape's filter (bg_shape.filter): one bit per entry, so a packet whose bit is clear skips the shape's hash
# lookup. Over the mask (without words 3 and 5, the IPv6 addresses' tails, which the program does not hash)
# when the shape has few entries, else over the fields of the key's first word (have, family, proto, tcp
# flags, icmp) when those take few values (a TCP-only shape for a UDP packet), else none (all ones).
# FILTER_MAX values at most: 64 bits stay mostly clear (a miss passes the filter <= ~22% of the time).
FILTER_BITS = C.BG_FILTER_BITS
FILTER_MAX = 16
_FILTER_WORDS = (0, 1, 2, 4, 6)
_FILTER_SHIFT = 64 - (FILTER_BITS - 1).bit_length()   # the top bits, one per filter bit's index
_FILTER_K = tuple(getattr(C, f"BG_FILTER_K{i}") & 0xFFFFFFFF for i in _FILTER_WORDS)
_FILTER_MIX = C.BG_FILTER_MIX & 0xFFFFFFFF
_M64 = (1 << 64) - 1
_WORDS = struct.Struct(f"={KEY_SIZE // 8}Q")
_HASHED = b"".join((b"\xff" if i in _FILTER_WORDS else b"\0") * 8 for i in range(KEY_SIZE // 8))
WORD0 = slice(KEY_OFF["have"], 8)   # the key's first word past shape and gen (engine.bpf.c asserts the offsets)
_WORD0_MASK = bytes(WORD0.start) + b"\xff" * (WORD0.stop - WORD0.start) + bytes(KEY_SIZE - WORD0.stop)


def filter_bit(key: bytes, fmask: bytes) -> int:
    """The filter bit of `key` (any shape and gen bytes: fmask has none) under `fmask`: engine.bpf.c's
    filter_has() computes the same from the packet key."""
    h = 0
    words, fwords = _WORDS.unpack(key), _WORDS.unpack(fmask)
    for i, k in zip(_FILTER_WORDS, _FILTER_K):
        h ^= (words[i] & fwords[i]) * k
    h &= _M64
    h = ((h ^ (h >> 29)) * _FILTER_MIX) & _M64
    return h >> _FILTER_SHIFT


def shape_filter(mask: bytes, keys: Sequence[bytes] | None, word0: set[bytes] | None) -> tuple[bytes, int]:
    """(fmask, filter bits) of a shape with entry keys `keys` (None: more than FILTER_MAX) whose keys' first
    words past shape and gen take the values `word0` (None: more than FILTER_MAX); (zero mask, 0): no filter."""
    if keys is not None:
        fmask = bytes(a & b for a, b in zip(mask, _HASHED))
    else:
        fmask = bytes(a & b for a, b in zip(mask, _WORD0_MASK))
        if word0 is None or not any(fmask):
            return bytes(KEY_SIZE), 0
        keys = [bytes(WORD0.start) + w + bytes(KEY_SIZE - WORD0.stop) for w in word0]
    if not any(fmask):
        return bytes(KEY_SIZE), 0
    bits = 0
    for k in keys:
        bits |= 1 << filter_bit(k, fmask)
    return fmask, bits


ALL_PROTOS = (1 << 256) - 1
_CLS_OFF = (KEY_OFF["src_cls"], KEY_OFF["dst_cls"])
_PROTO_OFF = KEY_OFF["proto"]


def tree_protos(mask: bytes, protos: int) -> tuple[int, int]:
    """What entries of a shape with `mask` whose protocols are the bits of `protos` add to Conf.tree_protos:
    per side whose class the mask keys on, those bits (every protocol when the mask leaves it out)."""
    p = protos if mask[_PROTO_OFF] == 0xFF else ALL_PROTOS
    return tuple(p if any(mask[off:off + 4]) else 0 for off in _CLS_OFF)


def proto_bit(key: bytes) -> int:
    return 1 << key[_PROTO_OFF]


def unclassed(key: bytes, protos: tuple[int, int]) -> bytes:
    """A packet key (classes stamped) with class 0 on each side whose walk tree_protos skips for its protocol,
    as engine.bpf.c's classify() does."""
    p = key[_PROTO_OFF]
    for off, side in zip(_CLS_OFF, protos):
        if not side >> p & 1:
            key = key[:off] + bytes(4) + key[off + 4:]
    return key


def _bits256(bits: int) -> bytes:
    return b"".join(((bits >> (64 * i)) & _M64).to_bytes(8, sys.byteorder) for i in range(4))


@dataclass(frozen=True, slots=True)
class Shape:
    """One entry of bg_conf.shapes[]: the mask applied to the packet key, the shape id written into it, the
    best priority among its entries (the early-stop bound), and its filter (shape_filter())."""

    id: int
    mask: bytes            # 56 bytes, bg_cls_key layout; shape and gen bytes are zero
    best_prio: int
    entries: int = field(default=0, compare=False)   # informational: not a reason to rewrite bg_conf
    fmask: bytes = bytes(KEY_SIZE)   # zero: no filter (packed as all ones)
    filter: int = 0                  # FILTER_BITS bits: every entry's filter_bit() is set (more may be)

    def pack(self) -> bytes:
        on = any(self.fmask)
        bits = self.filter if on else (1 << FILTER_BITS) - 1
        return SHAPE.pack(self.mask, self.best_prio, self.id, int(on), self.entries, self.fmask,
                          bits.to_bytes(FILTER_BITS // 8, sys.byteorder))


@dataclass(frozen=True, slots=True)
class Conf:
    """Value of bg_conf[slot]: everything one generation of the classifier reads besides bg_cls."""

    gen: int                      # key.gen of this generation's bg_cls entries
    default_rule: int             # rule_id applied when no entry matches
    shapes: tuple[Shape, ...] = field(default=())   # visit order: best_prio ascending
    trees: int = 0                # 1 << TREE_*: prefix-class trees in use (stage 0)
    # (src, dst): bit p set when an entry keyed on that side's class may match key.proto p (tree_protos())
    tree_protos: tuple[int, int] = (ALL_PROTOS, ALL_PROTOS)

    def pack(self, overlay: bool = False) -> bytes:
        """overlay: a batch's overlay entries (key.gen | GEN_OVERLAY) decide first (Engine.apply_edits)."""
        if len(self.shapes) > MAX_SHAPES:
            raise ValueError(f"{len(self.shapes)} shapes > {MAX_SHAPES}")
        empty = Shape(0, bytes(KEY_SIZE), 0xFFFFFFFF).pack()
        body = b"".join(s.pack() for s in self.shapes) + empty * (MAX_SHAPES - len(self.shapes))
        direct = next((s.id for s in self.shapes if s.id & SHAPE_DIRECT), 0)
        return CONF.pack(len(self.shapes), self.default_rule, self.gen, self.trees, int(overlay), direct,
                         b"".join(_bits256(p) for p in self.tree_protos), body)
