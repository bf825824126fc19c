"""Binary records of the engine's data-plane state maps (counters, conntrack, buckets, log events).

The classifier's records are in bpfgate.policy.layout. Layouts and constants are read from the engine
object's BTF (bpfgate.contract; the C side is bpf/include/engine.h).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple

from bpfgate import contract
from bpfgate.policy.ctstates import CT_STATES

C = contract.constants("engine")
COUNTER = contract.record("engine", "bg_counter", "packets bytes")
CT_KEY = contract.record("engine", "bg_ct_key", "family proto sport dport src dst")
# conntrack.h, shared with flow accounting; arrays (per direction) and the reserved ext area unpack as bytes
CT_VALUE = contract.record("engine", "bg_ct_value", "first_ns last_ns packets bytes ended flags ifindex tcp_flags "
                                                    "created_dir ext")
RULE_LOG = contract.record("engine", "bg_rule_log_event", "hdr rule_id ifindex pkt_len action hook family proto "
                                                          "sport dport ct_state tcp_flags src dst")
EVENT_HDR = contract.record("engine", "bg_event_hdr", "type len cpu ts_ns")
CTF_REPLY, CTF_MIDSTREAM = C.BG_CTF_REPLY, C.BG_CTF_MIDSTREAM
EV_RULE_LOG = C.BG_EV_RULE_LOG
CT_NAMES = {value: word for word, value in CT_STATES.items()}
_PER_DIR = struct.Struct("=QQ")   # a __u64[2] of bg_ct_value: [BG_CT_ORIG], [BG_CT_REPLY]


def _addr(family: int, raw: bytes):
    if family == 4:
        return ipaddress.IPv4Address(raw[:4])
    if family == 6:
        return ipaddress.IPv6Address(raw)
    return None


class Counter(NamedTuple):   # a tuple: 100k of them are made per read of the counters
    name: str
    packets: int
    bytes: int


@dataclass(frozen=True)
class Flow:
    """One conntrack entry (conntrack.h: bg_ct_key + bg_ct_value): the originator's direction, counters per
    direction. Engines and flow accounting read the same entries."""

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
    tcp_flags_orig: int = 0
    tcp_flags_reply: int = 0
    ifindex: int = 0             # interface of the hook that created it
    created_dir: int = 0         # enum bg_dir of that hook (0 ingress: the peer opened the flow)
    ended: int = 0               # enum bg_flow_end_reason, once the kernel reported its end
    midstream: bool = False      # picked up by flow accounting mid-connection (no state for `ct:` rules)

    @classmethod
    def decode(cls, key: bytes, val: bytes) -> Flow:
        fam, proto, sport, dport, src, dst = CT_KEY.unpack(key)
        first, last, packets, nbytes, ended, flags, ifindex, (tfo, tfr), cdir, _ext = CT_VALUE.unpack(val)
        po, pr = _PER_DIR.unpack(packets)
        bo, br = _PER_DIR.unpack(nbytes)
        return cls(fam, proto, _addr(fam, src), _addr(fam, dst), sport, dport, first, last, po, bo, pr, br,
                   bool(flags & CTF_REPLY), tfo | tfr, tfo, tfr, ifindex, cdir, ended, bool(flags & CTF_MIDSTREAM))


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
