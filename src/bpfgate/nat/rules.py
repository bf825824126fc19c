"""NAT rules and load-balanced services as data: parsed and checked here (pure, no kernel), so bad input is
one PolicyError naming the field before anything is changed.

    dnat("web", "tcp", "198.18.0.100:80", "198.18.1.2:8080")        # stateful: replies translated back
    dnat("web", "tcp", "198.18.0.100:80", "198.18.1.2:8080", stateless=True)
    snat("out", "198.18.1.0/24", "198.18.0.1", ports="20000-30000")
    Service("api", "tcp", "198.18.0.100:80", [Backend("198.18.1.2", 8080, weight=2), ...], table_size=65537)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

from bpfgate.errors import PolicyError

from . import maglev

PROTOS = {"tcp": 6, "udp": 17}
KINDS = ("dnat", "snat")


@dataclass(frozen=True)
class Endpoint:
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int = 0   # 0: any / keep

    @property
    def family(self) -> int:
        return self.addr.version

    def __str__(self) -> str:
        a = f"[{self.addr}]" if self.family == 6 and self.port else str(self.addr)
        return f"{a}:{self.port}" if self.port else a


def endpoint(text: str, what: str, *, port_required: bool = False, port_allowed: bool = True) -> Endpoint:
    """'198.18.0.1', '198.18.0.1:80', 'fd00::1', '[fd00::1]:80'."""
    s = str(text).strip()
    port = None
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise PolicyError(what, f"{text!r} is not ADDRESS or [ADDRESS]:PORT")
        port = rest[1:] if rest else None
    elif s.count(":") == 1:
        host, port = s.split(":")
    else:
        host = s
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise PolicyError(what, f"{host!r} is not an IPv4 or IPv6 address") from None
    p = 0
    if port is not None:
        if not port_allowed:
            raise PolicyError(what, f"{text!r}: no port here")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise PolicyError(what, f"port {port!r} is not 1..65535")
        p = int(port)
    elif port_required:
        raise PolicyError(what, f"{text!r} has no port (ADDRESS:PORT, [IPv6]:PORT)")
    return Endpoint(addr, p)


def port_range(text: str | None, what: str) -> tuple[int, int]:
    if text in (None, ""):
        return 0, 0
    lo, _, hi = str(text).partition("-")
    hi = hi or lo
    if not (lo.isdigit() and hi.isdigit()) or not 1 <= int(lo) <= int(hi) <= 65535:
        raise PolicyError(what, f"{text!r} is not a port range LOW-HIGH within 1..65535")
    return int(lo), int(hi)


def protocol(text: str, what: str) -> str:
    p = str(text).lower()
    if p not in PROTOS:
        raise PolicyError(what, f"protocol {text!r}: NAT and load balancing translate tcp or udp")
    return p


def check_name(name: str, what: str) -> str:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise PolicyError(what, f"name {name!r}: 1..64 letters, digits, '-', '_', '.'")
    return name


@dataclass(frozen=True)
class NatRule:
    name: str
    kind: str                  # dnat | snat
    proto: str                 # dnat: tcp | udp; snat: "" (tcp and udp)
    match: str                 # dnat: ADDRESS[:PORT] of the destination; snat: source PREFIX
    to: str                    # dnat: ADDRESS[:PORT]; snat: ADDRESS
    ports: tuple[int, int] = (0, 0)   # snat: source ports to allocate from (0, 0: keep, else 1024-65535)
    stateless: bool = False

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "match": self.match, "to": self.to, "stateless": self.stateless}
        if self.kind == "dnat":
            d["proto"] = self.proto
        elif self.ports != (0, 0):
            d["ports"] = f"{self.ports[0]}-{self.ports[1]}"
        return d

    @property
    def family(self) -> int:
        return self.target.family

    @property
    def target(self) -> Endpoint:
        return endpoint(self.to, f"rule {self.name}.to")

    @property
    def dst(self) -> Endpoint:
        return endpoint(self.match, f"rule {self.name}.match")

    @property
    def src(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.match, strict=False)


def dnat(name: str, proto: str, match: str, to: str, *, stateless: bool = False) -> NatRule:
    w = f"rule {check_name(name, 'rule')}"
    p = protocol(proto, f"{w}.proto")
    m = endpoint(match, f"{w}.match")
    t = endpoint(to, f"{w}.to")
    if m.family != t.family:
        raise PolicyError(f"{w}.to", f"{to} is IPv{t.family}, the match is IPv{m.family}")
    if t.port and not m.port:
        raise PolicyError(f"{w}.to", "a port to translate to needs a port to match (ADDRESS:PORT)")
    return NatRule(name, "dnat", p, str(m), str(t), stateless=bool(stateless))


def snat(name: str, src: str, to: str, *, ports: str | tuple[int, int] | None = None,
         stateless: bool = False) -> NatRule:
    w = f"rule {check_name(name, 'rule')}"
    try:
        net = ipaddress.ip_network(str(src), strict=False)
    except ValueError:
        raise PolicyError(f"{w}.match", f"{src!r} is not an address or prefix") from None
    t = endpoint(to, f"{w}.to", port_allowed=False)
    if net.version != t.family:
        raise PolicyError(f"{w}.to", f"{to} is IPv{t.family}, the source prefix is IPv{net.version}")
    rng = ports if isinstance(ports, tuple) else port_range(ports, f"{w}.ports")
    if stateless:
        if net.num_addresses != 1:
            raise PolicyError(f"{w}.match", "a stateless SNAT maps one address to one (1:1): no prefix")
        if rng != (0, 0):
            raise PolicyError(f"{w}.ports", "a stateless SNAT keeps ports (ports need connection state)")
    return NatRule(name, "snat", "", str(net), str(t.addr), rng, bool(stateless))


def rule_from(d: dict) -> NatRule:
    """A rule from the policy file's / the JSON state's fields."""
    if not isinstance(d, dict):
        raise PolicyError("nat rule", "each rule is a mapping")
    known = {"name", "kind", "proto", "match", "to", "ports", "stateless"}
    extra = set(d) - known
    name = str(d.get("name", "?"))
    if extra:
        raise PolicyError(f"rule {name}.{sorted(extra)[0]}", "unknown field")
    for f in ("name", "kind", "match", "to"):
        if f not in d:
            raise PolicyError(f"rule {name}.{f}", "missing")
    if d["kind"] == "dnat":
        if "ports" in d:
            raise PolicyError(f"rule {name}.ports", "only SNAT allocates ports")
        return dnat(name, d.get("proto", ""), d["match"], d["to"], stateless=bool(d.get("stateless")))
    if d["kind"] == "snat":
        if "proto" in d:
            raise PolicyError(f"rule {name}.proto", "SNAT translates tcp and udp (no proto)")
        return snat(name, d["match"], d["to"], ports=d.get("ports"), stateless=bool(d.get("stateless")))
    raise PolicyError(f"rule {name}.kind", f"{d['kind']!r} is not dnat or snat")


# ---- load balancing ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    addr: str
    port: int = 0            # 0: the service's port
    weight: int = 1
    drained: bool = False    # no new flows; its flows stay
    id: int = 0              # kernel id (assigned when installed)

    @property
    def name(self) -> str:
        return str(Endpoint(ipaddress.ip_address(self.addr), self.port))

    def to_dict(self) -> dict:
        return {"backend": self.name, "weight": self.weight, "drained": self.drained}


# Weights are relative: a backend's share of the Maglev table's slots is its weight over the sum. Bounded as
# ipvsadm bounds them (1..65535): at that ratio a weight-1 backend still holds about one slot of the default
# 65537-slot table (beyond it, none), and a weight with a digit too many is refused rather than taken.
MAX_WEIGHT = 65535


def check_weight(weight, what: str) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise PolicyError(what, f"weight {weight!r} is not an integer 1..{MAX_WEIGHT}")
    return weight


def backend(text: str, what: str, weight: int | None = None) -> Backend:
    """'ADDR[:PORT][@WEIGHT]'."""
    s, _, w = str(text).partition("@")
    ep = endpoint(s, what)
    if w:
        weight = int(w) if w.isdigit() else w
    return Backend(str(ep.addr), ep.port, 1 if weight is None else check_weight(weight, what))


@dataclass(frozen=True)
class Service:
    name: str
    proto: str
    vip: str                 # ADDRESS:PORT
    backends: tuple[Backend, ...] = ()
    table_size: int = maglev.DEFAULT_SIZE
    index: int = -1          # kernel service slot (assigned when installed)
    seed: int = 0

    @property
    def endpoint(self) -> Endpoint:
        return endpoint(self.vip, f"service {self.name}.vip", port_required=True)

    def weights(self) -> list[tuple[str, int]]:
        return [(b.name, 0 if b.drained else b.weight) for b in self.backends]

    def find(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)

    def with_backends(self, backends) -> "Service":
        return replace(self, backends=tuple(backends))

    def to_dict(self) -> dict:
        return {"name": self.name, "proto": self.proto, "vip": self.vip, "table_size": self.table_size,
                "backends": [b.to_dict() for b in self.backends]}


def service(name: str, proto: str, vip: str, backends=(), table_size: int | None = None) -> Service:
    w = f"service {check_name(name, 'service')}"
    p = protocol(proto, f"{w}.proto")
    ep = endpoint(vip, f"{w}.vip", port_required=True)
    size = maglev.DEFAULT_SIZE if table_size is None else table_size
    if not isinstance(size, int) or not maglev.is_prime(size) or not 7 <= size <= maglev.MAX_SIZE:
        raise PolicyError(f"{w}.table_size", f"{size} is not a prime between 7 and {maglev.MAX_SIZE}")
    bes = []
    for i, b in enumerate(backends):
        be = b if isinstance(b, Backend) else backend(b, f"{w}.backends[{i}]")
        if ipaddress.ip_address(be.addr).version != ep.family:
            raise PolicyError(f"{w}.backends[{i}]", f"{be.name} is not IPv{ep.family} like the VIP")
        if any(x.name == be.name for x in bes):
            raise PolicyError(f"{w}.backends[{i}]", f"{be.name} is listed twice")
        bes.append(be)
    return Service(name, p, str(ep), tuple(bes), size)


def service_from(d: dict) -> Service:
    if not isinstance(d, dict):
        raise PolicyError("lb service", "each service is a mapping")
    name = str(d.get("name", "?"))
    extra = set(d) - {"name", "proto", "vip", "backends", "table_size"}
    if extra:
        raise PolicyError(f"service {name}.{sorted(extra)[0]}", "unknown field")
    for f in ("name", "proto", "vip"):
        if f not in d:
            raise PolicyError(f"service {name}.{f}", "missing")
    bes = []
    for i, b in enumerate(d.get("backends") or []):
        w = f"service {name}.backends[{i}]"
        if isinstance(b, dict):
            extra = set(b) - {"backend", "weight", "drained"}
            if extra or "backend" not in b:
                raise PolicyError(w, "a backend is {backend: ADDR[:PORT], weight: N, drained: bool}")
            be = backend(b["backend"], w, b.get("weight"))
            bes.append(replace(be, drained=bool(b.get("drained"))))
        else:
            bes.append(backend(b, w))
    return service(name, d["proto"], d["vip"], bes, d.get("table_size"))


@dataclass
class Config:
    """What runs on one interface: the rules and services, and the ids handed out."""

    rules: dict[str, NatRule] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    next_backend: int = 1
    moved: dict[str, tuple[int, int]] = field(default_factory=dict)   # service -> (slots moved, slots): its last change
