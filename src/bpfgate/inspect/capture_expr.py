"""`bpfgate capture EXPRESSION`: the common subset of tcpdump's filter language (pcap-filter(7)), compiled to
the capture program's postfix terms (struct bg_capture_term, bpf/capture.bpf.c).

    [ip|ip6] [src|dst|src or dst|src and dst] host ADDR | net CIDR
    [tcp|udp|sctp] [src|dst|src or dst|src and dst] port N|NAME | portrange N-M
    tcp | udp | sctp | icmp | icmp6 | ip | ip6
    not / !   and / &&   or / ||   ( )

As in tcpdump: `not` binds tightest, `and` and `or` bind equally and left to right (`a or b and c` is
`(a or b) and c`); a bare value takes the qualifiers of the test before it (`port 80 or 443`,
`host A or B`); `host`/`net` without ip/ip6 also match ARP and RARP sender and target addresses; `port`
without a protocol is TCP, UDP or SCTP. Anything else (vlan, ether, arp, len, byte offsets such as
tcp[13], names to resolve, ...) is refused with a one-line error naming it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
from dataclasses import dataclass

from bpfgate import contract
from bpfgate.errors import BadInput

C = contract.constants("capture")
EXPR_MAX = C.BG_CAPTURE_EXPR_MAX
OP = {"family": C.BG_CF_FAMILY, "proto": C.BG_CF_PROTO, "addr": C.BG_CF_ADDR, "port": C.BG_CF_PORT,
      "and": C.BG_CF_AND, "or": C.BG_CF_OR, "not": C.BG_CF_NOT}
# which end of the packet: the words of a rule (any, src, dst) and of tcpdump (src or dst, src and dst)
SIDES = {word: value for value, word in C.names("bg_capture_side", {
    "BG_SIDE_ANY": "any", "BG_SIDE_SRC": "src", "BG_SIDE_DST": "dst", "BG_SIDE_BOTH": "src and dst"}).items()}
SIDES["src or dst"] = SIDES["any"]
PROTOS = {"tcp": 6, "udp": 17, "sctp": 132}                  # these may qualify port / portrange
ALONE = {"tcp": (6, 0), "udp": (17, 0), "sctp": (132, 0), "icmp": (1, 4), "icmp6": (58, 6)}  # proto, family
FAMILIES = {"ip": 4, "ip6": 6}
TYPES = ("host", "net", "port", "portrange")
OUTSIDE = {  # tcpdump words bpfgate's capture does not take, and what to use instead
    "ether": "link-layer tests", "vlan": "VLAN tests", "mpls": "MPLS tests", "arp": "ARP tests (host/net "
    "without ip/ip6 match ARP addresses)", "rarp": "RARP tests", "len": "length tests", "less": "length tests",
    "greater": "length tests", "gateway": "gateway", "broadcast": "broadcast", "multicast": "multicast",
    "proto": "protocol numbers (use tcp/udp/sctp/icmp/icmp6)", "protochain": "protochain", "mask": "net A mask "
    "M (write net A/LEN)", "igmp": "igmp", "pim": "pim", "vrrp": "vrrp", "ah": "ah", "esp": "esp",
    "decnet": "decnet", "atalk": "atalk", "ipx": "ipx", "iso": "iso", "stp": "stp", "inbound": "inbound",
    "outbound": "outbound (use --direction)", "ifname": "ifname", "on": "pflog", "wlan": "wlan", "type": "wlan",
    "llc": "llc", "ra": "wlan", "ta": "wlan", "addr1": "wlan", "addr2": "wlan", "addr3": "wlan", "addr4": "wlan",
    "geneve": "geneve", "pppoed": "pppoe", "pppoes": "pppoe", "icmp6[": "byte offsets",
}
TOKEN = re.compile(r"\s*(?:(&&|\|\||!=|[!()])|([^\s!()&|]+)|(\S))")


def _bad(what: str, hint: str | None = None) -> BadInput:
    return BadInput("capture filter", what, hint=hint or "the subset: host, net, port, portrange, src/dst, "
                    "tcp/udp/sctp/icmp/icmp6, ip/ip6, and/or/not, parentheses")


def _outside(word: str) -> BadInput:
    return _bad(f"{word!r} ({OUTSIDE[word.lower()]}) is outside the subset bpfgate's capture takes")


def _unexpected(word: str) -> BadInput:
    if word.lower() in OUTSIDE:
        return _outside(word)
    return _bad(f"unexpected {word!r}" + (" (no '(' before it)" if word == ")" else "") +
                ("" if word in ("(", ")", "and", "or", "not") else "; join tests with and/or"))


def tokens(text: str) -> list[str]:
    out = []
    for m in TOKEN.finditer(text):
        op, word, other = m.groups()
        if other is not None:
            raise _bad(f"unexpected {other!r} in the expression")
        tok = op or word
        if tok is None:
            continue
        if "[" in tok:
            raise _bad(f"byte offsets ({tok!r}) are outside the subset bpfgate's capture takes")
        out.append({"&&": "and", "||": "or", "!": "not"}.get(tok, tok))
    return out


@dataclass
class _Quals:
    proto: str | None = None     # ip, ip6, tcp, udp, sctp
    side: str = "src or dst"
    type: str = "host"


class _Parser:
    def __init__(self, words: list[str]):
        self.w, self.i = words, 0
        self.last: _Quals | None = None        # qualifiers a bare value takes (tcpdump)

    def peek(self, k: int = 0) -> str | None:
        return self.w[self.i + k] if self.i + k < len(self.w) else None

    def take(self) -> str:
        if self.i >= len(self.w):
            raise _bad("the expression ends too early")
        self.i += 1
        return self.w[self.i - 1]

    def expr(self) -> list[dict]:
        out = self.unary()
        while self.peek() in ("and", "or"):
            op = self.take()
            out = out + self.unary() + [{"op": OP[op]}]
        return out

    def unary(self) -> list[dict]:
        w = self.peek()
        if w == "not":
            self.take()
            return self.unary() + [{"op": OP["not"]}]
        if w == "(":
            self.take()
            inner = self.expr()
            if self.peek() != ")":
                raise _bad("missing ')'") if self.peek() is None else _unexpected(self.peek())
            self.take()
            return inner
        if w is None:
            raise _bad("the expression ends too early")
        if w in (")", "and", "or"):
            raise _unexpected(w)
        return self.primitive()

    def primitive(self) -> list[dict]:
        start = self.i
        w = self.take().lower()
        q = _Quals()
        qualified = False
        if w in FAMILIES or w in PROTOS or w in ALONE:
            if self.peek() not in ("src", "dst") + TYPES:      # a protocol alone: tcp, icmp, ip6, ...
                return [_alone(w)]
            if w in ALONE and w not in PROTOS:
                raise _bad(f"{w} takes no host/port qualifier in this subset")
            q.proto, qualified, w = w, True, self.take().lower()
        if w in ("src", "dst"):
            q.side, qualified = w, True
            if self.peek() in ("or", "and") and self.peek(1) in ("src", "dst") and self.peek(1) != w:
                q.side = f"src {self.take()} dst"
                self.take()
            w = self.take().lower() if self.peek() in TYPES else "host"   # `src 1.2.3.4`: host by default
        if w in TYPES:
            q.type, qualified = w, True
            value = self.take()
        elif qualified:
            value = self.w[self.i - 1]
        else:
            word = self.w[start]
            if word.lower() in OUTSIDE:
                raise _outside(word)
            if self.last is not None:                        # a bare value: the qualifiers before it
                q, value = self.last, word
            elif _is_address(word):
                q.type, value = "host", word
            else:
                raise _bad(f"unknown word {word!r}")
        self.last = q
        return [_test(q, value)]


def _is_address(word: str) -> bool:
    try:
        ipaddress.ip_address(word)
        return True
    except ValueError:
        return False


def _alone(word: str) -> dict:
    if word in FAMILIES:
        return {"op": OP["family"], "family": FAMILIES[word]}
    proto, family = ALONE[word]
    return {"op": OP["proto"], "proto": proto, "family": family}


def _mapped(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[list[int], list[int]]:
    if net.version == 4:
        addr = b"\0" * 10 + b"\xff\xff" + net.network_address.packed
        mask = b"\xff" * 12 + net.netmask.packed
    else:
        addr, mask = net.network_address.packed, net.netmask.packed
    return list(struct.unpack("=4I", addr)), list(struct.unpack("=4I", mask))


def _test(q: _Quals, value: str) -> dict:
    side = SIDES[q.side]
    if q.type in ("host", "net"):
        if q.proto in PROTOS:
            raise _bad(f"'{q.proto} {q.type}' is outside the subset: write '{q.proto} and {q.type} {value}'")
        net = _network(q.type, value)
        if q.proto and FAMILIES[q.proto] != net.version:
            raise _bad(f"{q.proto} {q.type} {value}: {value} is an IPv{net.version} address")
        addr, mask = _mapped(net)
        return {"op": OP["addr"], "side": side, "family": net.version, "arp": int(q.proto is None and net.version == 4),
                "addr": addr, "mask": mask}
    if q.proto in FAMILIES:
        raise _bad(f"'{q.proto} {q.type}' is outside the subset: write '{q.proto} and {q.type} {value}'")
    lo, hi = _ports(q, value)
    return {"op": OP["port"], "side": side, "proto": PROTOS.get(q.proto or "", 0), "lo": lo, "hi": hi}


def _network(kind: str, value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if kind == "host":
        if "/" in value:
            raise _bad(f"host {value}: a host is one address; write net {value}")
        if not _is_address(value):
            raise _bad(f"host {value}: not an IPv4/IPv6 address (bpfgate's capture resolves no names)")
        return ipaddress.ip_network(value)
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            raise _bad(f"net {value}: the address has bits set beyond the prefix length") from None
        raise _bad(f"net {value}: not a CIDR such as 198.18.0.0/15 or fd00::/8") from None


def _port(q: _Quals, word: str) -> int:
    if word.isdigit():
        n = int(word)
        if n > 65535:
            raise _bad(f"port {word} out of range 0-65535")
        return n
    protos = [q.proto] if q.proto in PROTOS else ["tcp", "udp"]
    for proto in protos:
        try:
            return socket.getservbyname(word, proto)
        except OSError:
            continue
    raise _bad(f"unknown port {word!r} (not a number, nor a service name for {'/'.join(protos)})")


def _ports(q: _Quals, value: str) -> tuple[int, int]:
    if q.type == "port":
        n = _port(q, value)
        return n, n
    lo, sep, hi = value.partition("-")
    if not sep or not lo or not hi:
        raise _bad(f"portrange {value}: write portrange LOW-HIGH")
    a, b = _port(q, lo), _port(q, hi)
    return min(a, b), max(a, b)


def compile_expression(text: str) -> list[dict]:
    """The postfix terms of a tcpdump-style expression (BadInput for anything outside the subset)."""
    words = tokens(text)
    if not words:
        return []
    p = _Parser(words)
    out = p.expr()
    if p.peek() is not None:
        raise _unexpected(p.peek())
    if len(out) > EXPR_MAX:
        raise _bad(f"the expression has {len(out)} terms; the kernel filter takes at most {EXPR_MAX}")
    return out
