"""Random policies and packets that collide often (small value pools, packets drawn near rule values).
Shared by the policy unit tests and, later, the kernel differential test."""

from __future__ import annotations

import ipaddress
import random

from bpfgate.policy.model import HookPolicy, Rule, SetRef
from bpfgate.policy.packet import Packet

PORTS = [0, 1, 22, 53, 79, 80, 81, 443, 1023, 1024, 8080, 32768, 65534, 65535]
V4_BASES = ["198.18.0.0", "198.19.255.0", "10.0.0.0", "0.0.0.0"]
V6_BASES = ["fd00::", "fd00:0:0:1::", "fdff:ffff::", "::"]


def _net(rng: random.Random, v6: bool):
    width = 128 if v6 else 32
    addr = int(ipaddress.ip_address(rng.choice(V6_BASES if v6 else V4_BASES))) | rng.getrandbits(width // 2)
    plen = rng.choice([0, 1, 8, 16, 23, 24, 25, 31, 32] + ([48, 63, 64, 65, 127, 128] if v6 else []))
    addr = addr >> (width - plen) << (width - plen) if plen else 0
    return (ipaddress.IPv6Network if v6 else ipaddress.IPv4Network)((addr, plen))


def _ports(rng: random.Random):
    out = []
    for _ in range(rng.choice([1, 1, 2])):
        a, b = sorted(rng.sample(PORTS, 2))
        out.append(rng.choice([a, f"{a}-{b}", f"{a}-{min(a + rng.randrange(300), 65535)}"]))
    return out


def random_rule(rng: random.Random, i: int) -> Rule:
    d: dict = {"name": f"r{i}", "action": rng.choice(["pass", "drop"])}
    if rng.random() < 0.4:
        d["src"] = [str(_net(rng, rng.random() < 0.4)) for _ in range(rng.choice([1, 1, 2]))]
    if rng.random() < 0.3:
        d["dst"] = [str(_net(rng, rng.random() < 0.4)) for _ in range(rng.choice([1, 2]))]
    kind = rng.random()
    if kind < 0.45:
        d["protocol"] = rng.choice([["tcp"], ["udp"], ["tcp", "udp"], ["sctp"]])
        for f in ("src_port", "dst_port"):
            if rng.random() < 0.5:
                d[f] = _ports(rng)
        if d["protocol"] == ["tcp"] and rng.random() < 0.4:
            d["tcp_flags"] = rng.choice(["syn,!ack", "syn", "ack", "fin,rst", "0x02/0x12", "!syn"])
    elif kind < 0.6:
        d["protocol"] = rng.choice([["icmp"], ["icmpv6"], ["icmp", "icmpv6"]])
        if rng.random() < 0.6:
            d["icmp_type"] = rng.choice([0, 3, 8, 128])
        if rng.random() < 0.3:
            d["icmp_code"] = rng.choice([0, 1])
    elif kind < 0.7:
        d["protocol"] = rng.choice(["gre", 47, 200])
    if rng.random() < 0.15:
        d["vlan"] = rng.sample([0, 1, 100, 4094], rng.choice([1, 2]))
    if rng.random() < 0.2:
        d["ct"] = rng.sample(["new", "established", "related", "invalid"], rng.choice([1, 2]))
    # negations: the complement is what the compiler expands, the naive classifier tests the field directly
    if "src" in d and rng.random() < 0.2:
        d["src"] = [f"!{x}" for x in d["src"]]
    if "dst_port" in d and rng.random() < 0.25:
        d["dst_port"] = [f"!{x}" for x in d["dst_port"]]
    if d.get("protocol") in (["tcp", "udp"], "gre", 47, 200) and not set(d) & {"src_port", "dst_port", "tcp_flags"} \
            and rng.random() < 0.3:
        d["protocol"] = [f"!{x}" for x in (d["protocol"] if isinstance(d["protocol"], list) else [d["protocol"]])]
    rule = Rule.model_validate(d)
    if rule.src and rule.dst and not ({n.version for n in rule.src} & {n.version for n in rule.dst}):
        rule = rule.model_copy(update={"dst": None})
    return rule


def random_policy(rng: random.Random, n_rules: int) -> HookPolicy:
    return HookPolicy(default=rng.choice(["allow", "deny"]), rules=tuple(random_rule(rng, i) for i in range(n_rules)))


def _addr_near(rng: random.Random, nets: list, v6: bool):
    nets = [n for n in nets if (n.version == 6) == v6]
    if nets and rng.random() < 0.8:
        n = rng.choice(nets)
        host_bits = n.max_prefixlen - n.prefixlen
        off = rng.choice([0, (1 << host_bits) - 1, rng.getrandbits(host_bits) if host_bits else 0])
        addr = int(n.network_address) + off
        addr += rng.choice([0, 0, 0, -1, 1])
        return ipaddress.ip_address(addr % (1 << n.max_prefixlen)) if not v6 else \
            ipaddress.IPv6Address(addr % (1 << 128))
    return ipaddress.IPv6Address(rng.getrandbits(128)) if v6 else ipaddress.IPv4Address(rng.getrandbits(32))


def random_packet(rng: random.Random, hp: HookPolicy) -> Packet:
    nets = [n for r in hp.rules for f in (r.src, r.dst) if isinstance(f, tuple) for n in f] + set_nets(hp)
    ports = [p for r in hp.rules for rs in (r.src_port, r.dst_port) if isinstance(rs, tuple) for lo, hi in rs
             for p in (lo, hi, max(lo - 1, 0), min(hi + 1, 65535))] or PORTS
    v6 = rng.random() < 0.4
    family = rng.choice([6 if v6 else 4] * 9 + [None])
    proto = rng.choice([6, 6, 17, 17, 1, 58, 132, 47, 200, None])
    return Packet(
        family=family,
        src=_addr_near(rng, nets, v6),
        dst=_addr_near(rng, nets, v6),
        proto=proto,
        sport=rng.choice(ports + [None]) if rng.random() < 0.95 else None,
        dport=rng.choice(ports + PORTS),
        tcp_flags=rng.choice([0x02, 0x12, 0x10, 0x01, 0x04, 0x05, rng.getrandbits(8), None]),
        icmp_type=rng.choice([0, 3, 8, 128, 255, None]),
        icmp_code=rng.choice([0, 1, 5, None]),
        vlan=rng.choice([None, None, 0, 1, 100, 4094, 7]),
        ct=rng.choice([None, 1, 2, 3, 4]),
        fragment=rng.choice(["none"] * 6 + ["first", "later"]),
    )


def random_sets(rng: random.Random) -> dict:
    """Two address sets (both families, nested and overlapping elements of many lengths) and a port set."""
    from bpfgate.policy.model import SetDef
    from bpfgate.policy.prefixes import ELEMENT_OK

    def addr_set():
        out = set()
        for _ in range(rng.choice([0, 1, 3, 6, 12])):
            n = _net(rng, rng.random() < 0.4)
            if ELEMENT_OK[(n.max_prefixlen, n.prefixlen)]:
                out.add(str(n))
        return SetDef(type="addr", elements=sorted(out))

    return {"a": addr_set(), "b": addr_set(),
            "p": SetDef(type="port", elements=_ports(rng) if rng.random() < 0.9 else [])}


def random_set_policy(rng: random.Random, n_rules: int) -> HookPolicy:
    """random_policy() whose rules name the sets now and then (`@a`, `!@b`, `@p`)."""
    hp = random_policy(rng, n_rules)
    rules = []
    for r in hp.rules:
        update: dict = {}
        negated = set(r.negated)
        for f in ("src", "dst"):
            if rng.random() < 0.35:
                update[f] = SetRef(rng.choice("ab"))
                negated.discard(f)
                if rng.random() < 0.3:
                    negated.add(f)
        if r.dst_port is not None and rng.random() < 0.4:
            update["dst_port"] = SetRef("p")
        if update:
            update["negated"] = tuple(sorted(negated))
            r = r.model_copy(update=update)
        rules.append(r)
    return HookPolicy(default=hp.default, rules=tuple(rules), sets=random_sets(rng))


def set_nets(hp: HookPolicy) -> list:
    return [e for sd in hp.sets.values() if sd.type == "addr" for e in sd.elements]
