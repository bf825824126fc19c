"""Binary records of the engine's data-plane state maps (counters, conntrack, buckets, log events).

The classifier's records are in bpfgate.policy.layout. Layouts and constants are read from the engine
object's BTF (bpfgate.contract; the C side is bpf/include/engine.h).
"""

from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass

from bpfgate import contract
from bpfgate.policy.model import CT_STATES

C = contract.constants("engine")
COUNTER = contract.record("engine", "bg_counter", "packets bytes")
CT_KEY = contract.record("engine", "bg_ct_key", "family proto sport dport src dst")
CT_ENTRY = contract.record("engine", "bg_ct_entry", "first_ns last_ns packets_orig bytes_orig packets_reply "
                                                    "bytes_reply flags tcp_flags_seen")
RULE_LOG = contract.record("engine", "bg_rule_log_event", "hdr rule_id ifindex pkt_len action hook family proto "
                                                          "sport dport ct_state tcp_flags src dst")
EVENT_HDR = contract.record("engine", "bg_event_hdr", "type len cpu ts_ns")
BUCKET_SIZE = ctypes.sizeof(contract.struct("engine", "bg_bucket"))
LOG_BUCKET_SIZE = ctypes.sizeof(contract.struct("engine", "bg_log_bucket"))
CTF_REPLY = C.BG_CTF_REPLY
EV_RULE_LOG = C.BG_EV_RULE_LOG
CT_NAMES = {value: word for word, value in CT_STATES.items()}


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
        fam, proto, sport, dport, src, dst = CT_KEY.unpack(key)
        first, last, po, bo, pr, br, flags, tf = CT_ENTRY.unpack(val)
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
        hdr, rid, ifindex, plen, action, hook, fam, proto, sport, dport, ct, tf, src, dst = RULE_LOG.unpack_from(raw)
        ts = EVENT_HDR.unpack(hdr)[3]
        return cls(rid, names.get(rid, str(rid)), ifindex, plen, action, hook, fam, proto, sport, dport, ct, tf,
                   _addr(fam, src), _addr(fam, dst), ts)
