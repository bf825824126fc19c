"""`bpfgate policy explain`: which rule decides a packet, per hook, and why.

A packet is described the way one writes it down:

    tcp 198.18.0.1:1234 -> 198.18.0.2:80 syn
    udp [fd00::1]:5353 -> [fd00::2]:53 vlan 100
    icmp 198.18.0.1 -> 198.18.0.2 type 8 code 0 ct established
    icmpv6 fd00::1 -> fd00::2 type 128

protocol (a name or number), source and destination (IPv6 in brackets when a port follows), then any of:
TCP flags (syn, ack, "syn,ack", ...), `type N` / `code N` (ICMP), `vlan N` (outer id), `ct STATE`,
`fragment first|later`. Without `ct`, the packet is the first of its flow, as the data plane sees it then:
`new`, or `invalid` for TCP that is not a SYN without ACK/RST (engine.bpf.c ct_track). A frame's bytes
(hex, `--frame`) are read by the Python twin of the BPF parser (engine/frames.py) instead.

The answer comes from the classifier the kernel runs: `Reference` (policy/classify.py) walks the hook's
bg_conf and bg_cls contents step by step as engine.bpf.c does (stage 0 prefix classes included), for the
running engine's live generation or for a file's compiled policy. The "why" lists the deciding rule's fields
with the packet's values. `naive()` (the rules read in order) must agree; if it ever does not, the answer
says so.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from bpfgate.errors import PacketError
from bpfgate.policy import layout as L
from bpfgate.policy.classify import Reference, naive
from bpfgate.policy.compile import DEFAULT_NAME, CompiledHook
from bpfgate.policy.model import CT_STATES, ICMP_PROTOCOLS, MATCH_FIELDS, PORT_PROTOCOLS, PROTOCOLS, TCP_FLAGS, \
    HookPolicy
from bpfgate.policy.packet import Packet
from bpfgate.policy.ruledata import rule_data

_PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}
_CT_NAMES = {v: k for k, v in CT_STATES.items()}
_ACTION_NAMES = {L.ACT_PASS: "pass", L.ACT_DROP: "drop", L.ACT_REDIRECT: "redirect", L.ACT_REJECT: "reject"}


# ---- the description --------------------------------------------------------------------------------

def _number(text: str, word: str, what: str, hi: int) -> int:
    try:
        n = int(word, 0)
    except ValueError:
        raise PacketError(text, word, f"{what} must be a number") from None
    if not 0 <= n <= hi:
        raise PacketError(text, word, f"{what} must be between 0 and {hi}")
    return n


def _endpoint(text: str, word: str, proto: int) -> tuple[Any, int | None]:
    """'198.18.0.1:80', '198.18.0.1', '[fd00::1]:80', 'fd00::1' -> (address, port or None)."""
    host, port = word, None
    if word.startswith("["):
        host, sep, rest = word[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise PacketError(text, word, "an IPv6 address with a port is written [ADDR]:PORT")
        port = rest[1:] or None
    elif word.count(":") == 1:
        host, port = word.split(":")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise PacketError(text, word, "not an IPv4 or IPv6 address") from None
    if port is None:
        return addr, None
    if proto not in PORT_PROTOCOLS:
        raise PacketError(text, word, f"{_PROTO_NAMES.get(proto, proto)} has no ports")
    return addr, _number(text, port, "a port", 65535)


def parse_packet(text: str) -> Packet:
    """A Packet from a description (see the module docstring); PacketError (one line) when it is not one."""
    words = text.replace("->", " -> ").split()
    if len(words) < 4 or words[2] != "->":
        raise PacketError(text, "", "expected PROTOCOL SRC -> DST [options], e.g. "
                          "'tcp 198.18.0.1:1234 -> 198.18.0.2:80 syn'")
    pw = words[0].lower()
    proto = PROTOCOLS[pw] if pw in PROTOCOLS else _number(text, pw, "the protocol (a name or number)", 255) \
        if pw[:1].isdigit() else None
    if proto is None:
        raise PacketError(text, words[0], f"unknown protocol (known: {', '.join(PROTOCOLS)}, or a number)")
    (src, sport), (dst, dport) = _endpoint(text, words[1], proto), _endpoint(text, words[3], proto)
    if src.version != dst.version:
        raise PacketError(text, words[3], "source and destination are of different address families")
    f: dict[str, Any] = dict(family=src.version, src=src, dst=dst, proto=proto, sport=sport, dport=dport)
    if proto in PORT_PROTOCOLS and (sport is None or dport is None):
        f["sport"], f["dport"] = sport or 0, dport or 0
    rest, flags = words[4:], None
    i = 0
    while i < len(rest):
        w = rest[i].lower()
        arg = rest[i + 1] if i + 1 < len(rest) else None
        if w in ("type", "code", "vlan", "ct", "fragment") and arg is None:
            raise PacketError(text, rest[i], f"{w} needs a value")
        if w in ("type", "code"):
            if proto not in ICMP_PROTOCOLS:
                raise PacketError(text, rest[i], f"{w} is for icmp or icmpv6")
            f[f"icmp_{w}"] = _number(text, arg, f"the ICMP {w}", 255)
        elif w == "vlan":
            f["vlan"] = _number(text, arg, "the VLAN id", 4094)
        elif w == "ct":
            if arg.lower() not in CT_STATES:
                raise PacketError(text, arg, f"unknown ct state (known: {', '.join(CT_STATES)})")
            f["ct"] = CT_STATES[arg.lower()]
        elif w == "fragment":
            if arg.lower() not in ("first", "later"):
                raise PacketError(text, arg, "fragment is first or later")
            f["fragment"] = arg.lower()
        elif all(x in TCP_FLAGS for x in w.split(",") if x) and w.strip(","):
            if proto != 6:
                raise PacketError(text, rest[i], "TCP flags are for tcp")
            flags = (flags or 0) | sum(TCP_FLAGS[x] for x in set(w.split(",")) if x)
            i += 1
            continue
        else:
            raise PacketError(text, rest[i], "unknown word (known: TCP flags, type, code, vlan, ct, fragment)")
        i += 2
    if proto == 6:
        f["tcp_flags"] = flags or 0
    if proto in ICMP_PROTOCOLS:
        f.setdefault("icmp_type", 0)
        f.setdefault("icmp_code", 0)
    pkt = Packet(**f)
    return pkt if "ct" in f else _first_of_flow(pkt)


def parse_frame(hex_text: str) -> Packet:
    """A Packet from an Ethernet frame in hex (a capture's bytes), read as the data plane's parser reads it
    (engine/frames.py, the twin of the BPF parser); ct as for a description without `ct`."""
    from bpfgate.engine import frames

    text = "".join(hex_text.split()).removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise PacketError(hex_text[:40], "", "a frame is given as hex digits (an even number of them)") from None
    if frames.is_arp(raw):
        raise PacketError(hex_text[:40], "", "an ARP frame: the engine passes ARP without classifying it")
    return _first_of_flow(frames.parse(raw))


def _first_of_flow(p: Packet) -> Packet:
    """The ct state the data plane gives a packet of no known flow (ct_track)."""
    e = p.effective()
    if e.family is None or p.fragment == "later":
        return p
    if e.proto == 6 and (e.tcp_flags or 0) & 0x16 != 0x02:   # SYN without ACK/RST starts a TCP flow
        return replace(p, ct=CT_STATES["invalid"])
    return replace(p, ct=CT_STATES["new"])


def describe(p: Packet) -> dict[str, Any]:
    """The packet as the classifier sees it (Packet.effective()), as plain data."""
    e = p.effective()
    d: dict[str, Any] = {"family": e.family, "src": str(e.src) if e.src else None,
                         "dst": str(e.dst) if e.dst else None,
                         "protocol": _PROTO_NAMES.get(e.proto, e.proto)}
    for k in ("sport", "dport", "icmp_type", "icmp_code", "vlan"):
        if getattr(e, k) is not None:
            d[k] = getattr(e, k)
    if e.tcp_flags is not None:
        d["tcp_flags"] = ",".join(n for n, b in TCP_FLAGS.items() if e.tcp_flags & b) or "none"
    if e.ct is not None:
        d["ct"] = _CT_NAMES[e.ct]
    if p.fragment != "none":
        d["fragment"] = p.fragment
    return d


# ---- the answer ---------------------------------------------------------------------------------------

@dataclass
class Explanation:
    dev: str
    hook: str
    rule: str                       # the deciding rule's name, or "(default)"
    position: int | None            # its index in the hook's rules (None: the default)
    action: str                     # pass | drop | redirect
    matched: list[dict[str, Any]] = field(default_factory=list)   # {field, rule, packet} of the deciding rule
    disagreement: str | None = None   # naive()'s answer when it differs (a bug to report)

    def to_dict(self) -> dict[str, Any]:
        return {"dev": self.dev, "hook": self.hook, "rule": self.rule, "position": self.position,
                "action": self.action, "matched": self.matched,
                **({"disagreement": self.disagreement} if self.disagreement else {})}

    def line(self) -> str:
        head = f"{self.dev} {self.hook}: {self.rule}"
        head += f" (rule {self.position})" if self.position is not None else " (no rule matched)"
        why = ", ".join(f"{m['field']} {m['rule']} ~ {m['packet']}" for m in self.matched)
        out = f"{head} -> {self.action}" + (f"; matched {why}" if why else "")
        if self.position is not None and not self.matched:
            out += "; the rule matches every packet"
        if self.disagreement:
            out += f" [the rules read in order say {self.disagreement}: please report this]"
        return out


_PACKET_FIELD = {"src": "src", "dst": "dst", "protocol": "protocol", "src_port": "sport", "dst_port": "dport",
                 "tcp_flags": "tcp_flags", "icmp_type": "icmp_type", "icmp_code": "icmp_code", "vlan": "vlan",
                 "ct": "ct"}


LIST_SHOWN = 8   # a rule's address list longer than this is shown by the networks holding the packet's address


def _holding(nets, addr, listed: int) -> str | None:
    """The networks of a long address list that hold `addr` (None: the field names a set)."""
    if type(nets) is not tuple or addr is None:
        return None
    hold = [str(n) for n in nets if n.version == addr.version and addr in n]
    return ",".join(hold[:LIST_SHOWN]) + f" (of the {listed} listed)"


def explain_hook(dev: str, hook: str, hp: HookPolicy, compiled: CompiledHook, conf: L.Conf,
                 pkt: Packet) -> Explanation:
    """What the hook's classifier (its map contents: conf, bg_cls, stage 0) decides for pkt, and why."""
    ref = Reference(conf, compiled.cls, compiled.rules, compiled.names, compiled.classes)
    rid = ref.lookup(pkt.key())
    name = DEFAULT_NAME if rid == conf.default_rule else compiled.names.get(rid, str(rid))
    action = _ACTION_NAMES.get(compiled.rules[rid].action, str(compiled.rules[rid].action))
    by_name = {r.name: i for i, r in enumerate(hp.rules)}
    pos = by_name.get(name)
    matched = []
    if pos is not None:
        seen = describe(pkt)
        data = rule_data(hp.rules[pos])
        for f in MATCH_FIELDS:
            if f in data:
                want = data[f]
                text = ",".join(map(str, want)) if isinstance(want, list) else str(want)
                if f in ("src", "dst") and isinstance(want, list) and len(want) > LIST_SHOWN \
                        and f not in hp.rules[pos].negated:
                    text = _holding(getattr(hp.rules[pos], f), getattr(pkt.effective(), f), len(want)) or text
                matched.append({"field": f, "rule": text, "packet": str(seen.get(_PACKET_FIELD[f]))})
    other = naive(hp, pkt).name
    return Explanation(dev, hook, name, pos, action, matched, None if other == name else other)


__all__ = ["Explanation", "describe", "explain_hook", "parse_frame", "parse_packet"]
