"""Explicit steering rules, pure: what a rule says, checked, and the map entry it becomes (no kernel here).

A rule: traffic from `source` (an address or prefix, IPv4 or IPv6), optionally only protocol `proto` and
source port `port`, leaves by interface `dev` to next hop `via` (an address on that link; the neighbour
subsystem resolves its MAC). The key layout is steer.h's struct bg_steer_key (LPM: 32 bits of family,
protocol and port, then the prefix), read from the object's BTF.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from bpfgate import contract
from bpfgate.errors import BpfgateError

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}
KEY_FIXED_BITS = 32  # family, proto, port: always matched exactly


@dataclass(frozen=True)
class Rule:
    source: str      # normalised prefix: "198.18.200.1/32", "fd00:200::/64"
    dev: str
    via: str         # the next hop's address
    proto: str = ""  # "" (any), tcp, udp, sctp
    port: int = 0    # source port (0: any); needs proto

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.source)

    @property
    def match(self) -> tuple[str, str, int]:
        """What identifies a rule: two rules with the same match are one (the later replaces it)."""
        return self.source, self.proto, self.port

    def describe(self) -> str:
        what = self.source + (f" {self.proto}" if self.proto else "") + (f" port {self.port}" if self.port else "")
        return f"from {what} via {self.via} dev {self.dev}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make(source: str, dev: str, via: str, proto: str | None = None, port: int | None = None,
         *, op: str = "steer add") -> Rule:
    """A checked Rule, or a BpfgateError naming the bad part (nothing is changed by a bad rule)."""
    try:
        net = ipaddress.ip_network(str(source).strip(), strict=False)
    except ValueError:
        raise BpfgateError(op, f"source {source!r} is not an address or prefix") from None
    try:
        nh = ipaddress.ip_address(str(via).strip())
    except ValueError:
        raise BpfgateError(op, f"next hop {via!r} is not an address") from None
    if nh.is_multicast or nh.is_unspecified or nh.is_loopback:
        raise BpfgateError(op, f"next hop {via} is not a unicast neighbour address")
    if not dev:
        raise BpfgateError(op, "no interface to leave by (dev)")
    proto = (proto or "").lower()
    if proto and proto not in PROTOCOLS:
        raise BpfgateError(op, f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    port = port or 0
    if not 0 <= port <= 65535:
        raise BpfgateError(op, f"port {port} is out of range 0-65535")
    if port and not proto:
        raise BpfgateError(op, "a port needs a protocol (tcp, udp or sctp)")
    return Rule(source=str(net), dev=dev, via=str(nh), proto=proto, port=port)


# ---- map entries -----------------------------------------------------------------------------------------

def key_type() -> Any:
    return contract.struct("steer", "bg_steer_key")


def rule_type() -> Any:
    return contract.struct("steer", "bg_steer_rule")


def key_of(rule: Rule) -> Any:
    net = rule.network
    k = key_type()()
    k.prefixlen = KEY_FIXED_BITS + net.prefixlen
    k.family = net.version
    k.proto = PROTOCOLS.get(rule.proto, 0)
    k.port = rule.port
    raw = net.network_address.packed
    k.addr[:len(raw)] = list(raw)
    return k


def value_of(rule: Rule, rule_id: int, ifindex: int) -> Any:
    nh = ipaddress.ip_address(rule.via)
    v = rule_type()()
    v.id = rule_id
    v.ifindex = ifindex
    v.family = nh.version
    v.nexthop[:len(nh.packed)] = list(nh.packed)
    return v


def decode(key: Any, value: Any, ifname: str) -> tuple[Rule, int, int]:
    """(Rule, rule id, ifindex) of a map entry."""
    n = 4 if key.family == 4 else 16
    addr = ipaddress.ip_address(bytes(key.addr[:n]))
    net = ipaddress.ip_network(f"{addr}/{key.prefixlen - KEY_FIXED_BITS}")
    nh = ipaddress.ip_address(bytes(value.nexthop[:4 if value.family == 4 else 16]))
    rule = Rule(source=str(net), dev=ifname, via=str(nh), proto=PROTO_NAMES.get(key.proto, ""), port=key.port)
    return rule, value.id, value.ifindex
