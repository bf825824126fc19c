"""Binary records of the engine's data-plane state maps (counters, conntrack, buckets, log events).

The classifier's records are in bpfgate.policy.layout. Formats here are native order, checked against
the object's BTF by tests/unit/test_engine_layout.py.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

COUNTER_FMT = "=QQ"                     # struct bg_counter
CT_KEY_FMT = "=BBHHH16s16s"             # struct bg_ct_key, 40 bytes
CT_ENTRY_FMT = "=QQQQQQIB3x"            # struct bg_ct_entry, 56 bytes
BUCKET_SIZE = 24                        # struct bg_bucket (u64 credit, u64 last_ns, spin lock, pad)
LOG_BUCKET_SIZE = 16                    # struct bg_log_bucket
RULE_LOG_FMT = "=HHIQIIIBBBBHHBB2x16s16s"  # struct bg_rule_log_event, 72 bytes
CTF_REPLY = 0x01
EV_RULE_LOG = 40
CT_NAMES = {1: "new", 2: "established", 3: "related", 4: "invalid"}


def _addr(family: int, raw: bytes):
    if family == 4:
        return ipaddress.IPv4Address(raw[:4])
    if family == 6:
        return ipaddress.IPv6Address(raw)
    return None


@dataclass(frozen=True)
class Counter:
    name: str
    packets: int
    bytes: int


@dataclass(frozen=True)
class Flow:
    """One conntrack entry: the originator's direction, counters per direction."""

    family: int
    proto: int
    src: object
    dst: object
    sport: int
    dport: int
    first_ns: int
    last_ns: int
    packets_orig: int
    bytes_orig: int
    packets_reply: int
    bytes_reply: int
    replied: bool
    tcp_flags_seen: int

    @classmethod
    def decode(cls, key: bytes, val: bytes) -> Flow:
        fam, proto, sport, dport, _pad, src, dst = struct.unpack(CT_KEY_FMT, key)
        first, last, po, bo, pr, br, flags, tf = struct.unpack(CT_ENTRY_FMT, val)
        return cls(fam, proto, _addr(fam, src), _addr(fam, dst), sport, dport, first, last, po, bo, pr, br,
                   bool(flags & CTF_REPLY), tf)


@dataclass(frozen=True)
class RuleLogEvent:
    rule_id: int
    name: str
    ifindex: int
    pkt_len: int
    action: int
    hook: int
    family: int
    proto: int
    sport: int
    dport: int
    ct_state: int
    tcp_flags: int
    src: object
    dst: object
    ts_ns: int

    @classmethod
    def decode(cls, raw: bytes, names: dict[int, str]) -> RuleLogEvent:
        (_t, _l, _cpu, ts, rid, ifindex, plen, action, hook, fam, proto, sport, dport, ct, tf, src,
         dst) = struct.unpack(RULE_LOG_FMT, raw[:struct.calcsize(RULE_LOG_FMT)])
        return cls(rid, names.get(rid, str(rid)), ifindex, plen, action, hook, fam, proto, sport, dport, ct, tf,
                   _addr(fam, src), _addr(fam, dst), ts)
