"""`bpfgate demo`: the policy engine end to end, in a sandbox of network namespaces, with real traffic.

    client-a --veth-- server --veth-- client-b        (client-c on a third link of the server)

The server's interfaces get policies through the control plane (bpfgate.policyctl: the same calls as
`bpfgate apply` / `rule add` / `rules`), and every expectation is checked with real requests from the
clients: drop HTTP (both families), drop by source address, a port allowed only from one CIDR, a port
range, an IPv6-only rule, rate limiting (a burst of pings), default deny with replies let through by
conntrack (the server's own outbound connection works; without the `ct established` rule it does not),
a live rule edit (add, then delete), the per-rule counters, and 10,000 mixed-length CIDR rules that
still cost one hash lookup per packet (stage 0 prefix classes). The demo passes only if every check held.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bpfgate import policyctl
from bpfgate.errors import BpfgateError
from bpfgate.kernel import netns
from bpfgate.policy.model import Policy
from bpfgate.sandbox import Sandbox
from bpfgate.sandbox.probe import _checksum
from bpfgate.sandbox.procs import SandboxError, listens_on
from bpfgate.sandbox.timing import scaled

PORTS = (2222, 9050, 9100)   # plain TCP listeners (HTTP is on 80 and 8080)
CLIENT_HTTP = 8000           # the server's outbound request goes to client-a on this port


@dataclass
class Check:
    step: str
    expected: str
    observed: str
    ok: bool


@dataclass
class DemoResult:
    checks: list[Check] = field(default_factory=list)
    counters: list[dict] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def _served(r) -> str:
    return f"HTTP {r.status}" if r.status else f"no answer ({r.error or 'timeout'})"


def burst_ping(ns: str | None, addr: str, count: int, wait: float) -> int:
    """Send `count` ICMP echo requests back to back (no waiting between them), then count the replies that
    arrive within `wait` seconds: what a rate limiter lets through of a burst."""
    v6 = ":" in addr
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                          socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
    ident = (os.getpid() ^ id(s)) & 0xFFFF
    req, rep = (128, 129) if v6 else (8, 0)
    seen: set[int] = set()
    try:
        for seq in range(count):
            hdr = struct.pack("!BBHHH", req, 0, 0, ident, seq)
            if not v6:
                hdr = struct.pack("!BBHHH", req, 0, _checksum(hdr + b"tour"), ident, seq)
            s.sendto(hdr + b"tour", (addr, 0))
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0 and len(seen) < count:
            if not select.select([s], [], [], left)[0]:
                break
            pkt = s.recv(2048)
            icmp = pkt if v6 else pkt[(pkt[0] & 0x0F) * 4:]
            if len(icmp) >= 8 and icmp[0] == rep and struct.unpack("!H", icmp[4:6])[0] == ident:
                seen.add(struct.unpack("!H", icmp[6:8])[0])
    finally:
        s.close()
    return len(seen)


def _listen(host, ports) -> None:
    code = ("import socket,sys,time\nss=[]\nfor p in sys.argv[1:]:\n"
            " s=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            " s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0);s.bind(('::',int(p)));s.listen(64);ss.append(s)\n"
            "time.sleep(600)\n")
    proc = host.spawn([sys.executable, "-c", code, *map(str, ports)])
    deadline = time.monotonic() + scaled(5)  # Python's start: seconds under emulation
    while not all(listens_on(proc.pid, p) for p in ports):
        if not proc.alive or time.monotonic() > deadline:
            raise SandboxError(f"listen on {ports} in {host.name}", proc.output().strip() or "not listening")
        time.sleep(0.01)


def _policy(devs, hooks) -> Policy:
    return Policy.model_validate({"interfaces": devs, "hooks": hooks})


def run(report: Callable[[Check], None] = lambda c: None, timeout: float = 1.0, mode: str | None = None,
        backend=None) -> DemoResult:
    res = DemoResult()

    def check(step: str, expected: str, observed: str, ok: bool) -> None:
        c = Check(step, expected, observed, ok)
        res.checks.append(c)
        report(c)

    with Sandbox() as sb:
        server = sb.host("server")
        a, b, c = sb.host("client_a"), sb.host("client_b"), sb.host("client_c")
        la, lb, lc = sb.link(a, server), sb.link(b, server), sb.link(c, server)
        for port in (80, 8080):
            server.http_server(port)
        _listen(server, PORTS)
        a.http_server(CLIENT_HTTP)
        try:
            _steps(res, check, sb, server, (a, b, c), (la, lb, lc), mode, backend, timeout)
        finally:
            policyctl.remove(netns=server.netns, backend=backend)   # pins and engine state go with it
    return res


def _steps(res, check, sb, server, clients, links, mode, backend, timeout) -> None:
    a, b, c = clients
    la, lb, lc = links
    sa, sbi, sc = la.end(server), lb.end(server), lc.end(server)
    devs = [sa.name, sbi.name, sc.name]
    ns = server.netns

    slow = scaled(3 * timeout)   # what a request expected to be served may take on a busy or slow machine

    def get(host, srv_if, port, v6, wait):
        return host.http_get(f"http://[{srv_if.ip6}]:{port}/" if v6 else f"http://{srv_if.ip4}:{port}/", wait)

    def expect_http(step, host, srv_if, port, served, v6=False):
        r = get(host, srv_if, port, v6, slow if served else timeout)
        check(step, "served" if served else "dropped", _served(r), r.ok if served else r.status is None)

    def expect_tcp(step, host, srv_if, port, open_):
        ok = host.tcp_connect(srv_if.ip4, port, slow if open_ else timeout)
        check(step, "connects" if open_ else "dropped", "connects" if ok else "no answer", ok == open_)

    applied = lambda p, **kw: policyctl.apply(p, netns=ns, mode=mode, backend=backend, **kw)

    # ---- 1. an allow-by-default policy with one rule per feature, on all three interfaces ------------
    v1 = _policy(devs, {"tc-ingress": {"default": "allow", "rules": [
        {"name": "drop-http", "protocol": "tcp", "dst_port": 80, "action": "drop"},
        {"name": "block-c", "src": [str(lc.a.net4), str(lc.a.net6)], "action": "drop"},
        {"name": "admin-from-a", "src": str(la.a.net4), "protocol": "tcp", "dst_port": 2222},
        {"name": "admin-others", "protocol": "tcp", "dst_port": 2222, "action": "drop"},
        {"name": "range-9000", "protocol": "tcp", "dst_port": "9000-9099", "action": "drop"},
        {"name": "v6-8080-from-a", "src": str(la.a.net6), "protocol": "tcp", "dst_port": 8080,
         "action": "drop"},
        {"name": "ping-limit", "protocol": "icmp", "icmp_type": 8,
         "rate_limit": {"rate": 1, "burst": 2, "over": "drop"}},
        {"name": "ping6-limit", "protocol": "icmpv6", "icmp_type": 128,
         "rate_limit": {"rate": 1, "burst": 2, "over": "drop"}},
    ]}})
    expect_http("no policy yet: a GET :80", a, sa, 80, True)
    r = applied(v1)
    check("apply v1 (3 interfaces)", "3 hooks attached", r.plan.summary(),
          r.applied and sum(h.action == "attach" for h in r.plan.hooks) == 3)
    r = applied(v1)
    check("apply v1 again", "no change", r.plan.summary(), not r.changed)
    expect_http("drop HTTP: a GET :80 (IPv4)", a, sa, 80, False)
    expect_http("drop HTTP: a GET :80 (IPv6)", a, sa, 80, False, v6=True)
    expect_http("drop HTTP: a GET :8080 (IPv4) still served", a, sa, 8080, True)
    expect_http("drop by source: c GET :8080 (IPv4)", c, sc, 8080, False)
    expect_http("drop by source: c GET :8080 (IPv6)", c, sc, 8080, False, v6=True)
    expect_http("drop by source: b GET :8080 (IPv4) served", b, sbi, 8080, True)
    expect_tcp("port 2222 only from a's CIDR: a connects", a, sa, 2222, True)
    expect_tcp("port 2222 only from a's CIDR: b", b, sbi, 2222, False)
    expect_tcp("port range 9000-9099: :9050", a, sa, 9050, False)
    expect_tcp("port range 9000-9099: :9100 outside", a, sa, 9100, True)
    expect_http("IPv6 rule: a GET :8080 over IPv6", a, sa, 8080, False, v6=True)
    expect_http("IPv6 rule: b GET :8080 over IPv6 served", b, sbi, 8080, True, v6=True)
    n = burst_ping(a.netns, sa.ip4, 20, 0.5)
    check("rate limit 1/s burst 2: 20 pings at once (IPv4)", "1-5 answered", f"{n} answered", 1 <= n <= 5)
    n = burst_ping(b.netns, sbi.ip6, 20, 0.5)
    check("rate limit 1/s burst 2: 20 pings at once (IPv6)", "1-5 answered", f"{n} answered", 1 <= n <= 5)

    rows = policyctl.rules(sa.name, netns=ns, backend=backend)
    res.counters = [x.to_dict() for x in rows]
    by = {x.name: x for x in rows}
    d = by.get("drop-http")
    check("counters: drop-http on a's interface", "> 0 packets, > 0 bytes",
          f"{d.packets} packets, {d.bytes} bytes" if d else "no row", bool(d and d.packets > 0 and d.bytes > 0))
    lim = by.get("ping-limit")
    check("counters: ping-limit saw the burst", ">= 20 packets", f"{lim.packets if lim else 0} packets",
          bool(lim and lim.packets >= 20))

    # ---- 2. live edit: one rule added, then deleted; the others keep their counters ------------------
    before = {x.name: x.packets for x in rows}
    policyctl.add_rule(sa.name, "tc-ingress", {"name": "no-a-8080", "src": str(la.a.net4), "protocol": "tcp",
                                               "dst_port": 8080, "action": "drop"},
                       before="drop-http", netns=ns, backend=backend)
    expect_http("live add no-a-8080: a GET :8080", a, sa, 8080, False)
    expect_http("live add no-a-8080: b GET :8080 (other interface) served", b, sbi, 8080, True)
    live = {x.name: x.packets for x in policyctl.rules(sa.name, netns=ns, backend=backend)}
    check("counters: the live rule counts its drops", "> 0 packets", f"{live.get('no-a-8080', 0)} packets",
          live.get("no-a-8080", 0) > 0)
    policyctl.delete_rule(sa.name, "tc-ingress", "no-a-8080", netns=ns, backend=backend)
    expect_http("live delete no-a-8080: a GET :8080 served", a, sa, 8080, True)
    after = {x.name: x.packets for x in policyctl.rules(sa.name, netns=ns, backend=backend)}
    lost = [n for n, v in before.items() if after.get(n, 0) < v]
    check("counters of the other rules kept across the live edits", "none reset",
          f"reset: {', '.join(lost)}" if lost else f"none reset ({sum(after.values())} packets in all)", not lost)

    # ---- 3. default deny, replies let in by conntrack (whole-policy swap) -----------------------------
    deny = {"tc-ingress": {"default": "deny", "rules": [
        {"name": "established", "ct": ["established", "related"]},
        {"name": "http-8080", "protocol": "tcp", "dst_port": 8080},
        {"name": "nd", "protocol": "icmpv6", "icmp_type": 135},
        {"name": "na", "protocol": "icmpv6", "icmp_type": 136},
    ]}}
    r = applied(_policy(devs, deny))
    check("apply v2: default deny + ct established (swap)", "3 hooks swapped", r.plan.summary(),
          r.applied and sum(h.action == "swap" for h in r.plan.hooks) == 3)
    expect_http("default deny: a GET :8080 (allowed port)", a, sa, 8080, True)
    expect_tcp("default deny: a to :9100 (no rule)", a, sa, 9100, False)
    out = server.http_get(f"http://{la.a.ip4}:{CLIENT_HTTP}/", slow)
    check("default deny: the server's own request to a (replies by conntrack)", "served", _served(out), out.ok)
    out = server.http_get(f"http://[{la.a.ip6}]:{CLIENT_HTTP}/", slow)
    check("default deny: the same over IPv6", "served", _served(out), out.ok)
    no_ct = _policy(devs, {"tc-ingress": {"default": "deny", "rules": deny["tc-ingress"]["rules"][1:]}})
    try:
        applied(no_ct)
        check("guard: default deny without ct established", "refused", "applied", False)
    except BpfgateError as e:
        check("guard: default deny without ct established", "refused", "refused", "established" in str(e))
    applied(no_ct, force=True)
    out = server.http_get(f"http://{la.a.ip4}:{CLIENT_HTTP}/", timeout)
    check("--force without ct established: server's request", "no reply", _served(out), out.status is None)
    res.policies.append(policyctl.export(netns=ns, backend=backend))

    # ---- 4. scale: 10,000 CIDRs of mixed lengths, one of them client c's address ----------------------
    rules = blocklist(10_000, [lc.a.ip4, lc.a.ip6])
    t0 = time.perf_counter()
    r = applied(_policy(devs, {"tc-ingress": {"default": "allow", "rules": rules}}))
    check(f"apply v3: {len(rules):,} CIDR rules /8../128, both families (swap)", "3 hooks swapped",
          f"{r.plan.summary()} in {time.perf_counter() - t0:.1f} s",
          r.applied and sum(h.action == "swap" for h in r.plan.hooks) == 3)
    (cost,) = policyctl.classifier(sa.name, netns=ns, backend=backend)
    check("classifier with 10,000 CIDRs: hash lookups per packet", "<= 2 (stage 0 prefix classes)",
          f"{cost.lookups_worst} shape(s), {cost.entries:,} entries", cost.lookups_worst <= 2)
    expect_http("blocklist: c GET :8080 (c's /32 is listed)", c, sc, 8080, False)
    expect_http("blocklist: c GET :8080 (c's /128 is listed)", c, sc, 8080, False, v6=True)
    expect_http("blocklist: a GET :8080 still served", a, sa, 8080, True)


def blocklist(n: int, hosts: list[str]) -> list[dict]:
    """n drop rules on source CIDRs of every length spread over both address spaces (none covering the
    sandbox's 198.18.0.0/15 or fd00::/8), with the given host addresses in the middle of the list."""
    import ipaddress
    import random

    rng, nets = random.Random(4), set()
    sandbox4, sandbox6 = ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::/8")
    while len(nets) < n - len(hosts):
        v6 = rng.random() < 0.5
        width, plen = (128, rng.randint(16, 128)) if v6 else (32, rng.randint(8, 32))
        net = ipaddress.ip_network((rng.getrandbits(width) >> (width - plen) << (width - plen), plen))
        if not net.overlaps(sandbox6 if v6 else sandbox4):
            nets.add(str(net))
    listed = sorted(nets)
    listed[len(listed) // 2:len(listed) // 2] = hosts
    return [{"name": f"deny-{i}", "src": net, "action": "drop"} for i, net in enumerate(listed)]
