"""`bpfgate demo`: the classic "drop HTTP" example, done right, in a sandbox of network namespaces.

client ---- server (HTTP on :80 and :8080); a TC ingress program on the server's interface drops TCP to
the ports in a BPF map. Every step is checked with real requests; the demo passes only if all held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bpfgate.gate import PortGate
from bpfgate.sandbox import Sandbox


@dataclass
class Check:
    step: str
    expected: str
    observed: str
    ok: bool


@dataclass
class DemoResult:
    checks: list[Check] = field(default_factory=list)
    counters: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


def _served(r) -> str:
    return f"HTTP {r.status}" if r.status else f"no answer ({r.error or 'timeout'})"


def run(report: Callable[[Check], None] = lambda c: None, timeout: float = 2.0) -> DemoResult:
    res = DemoResult()

    def expect(step: str, want_served: bool, r) -> None:
        ok = r.ok if want_served else r.status is None
        c = Check(step, "served" if want_served else "dropped", _served(r), ok)
        res.checks.append(c)
        report(c)

    with Sandbox() as sb:
        client, server = sb.host("client"), sb.host("server")
        link = sb.link(client, server)
        srv_if = link.end(server)
        for port in (80, 8080):
            server.http_server(port)
        url4 = lambda port: f"http://{srv_if.ip4}:{port}/"  # noqa: E731
        url6 = lambda port: f"http://[{srv_if.ip6}]:{port}/"  # noqa: E731

        expect("before the gate: GET :80 (IPv4)", True, client.http_get(url4(80), timeout))
        gate = PortGate.attach(srv_if.name, direction="ingress", netns_name=server.netns)
        try:
            gate.block(80)
            expect("gate on, 80 blocked: GET :80 (IPv4)", False, client.http_get(url4(80), timeout))
            expect("gate on, 80 blocked: GET :80 (IPv6)", False, client.http_get(url6(80), timeout))
            expect("gate on, 80 blocked: GET :8080 (IPv4)", True, client.http_get(url4(8080), timeout))
            expect("gate on, 80 blocked: GET :8080 (IPv6)", True, client.http_get(url6(8080), timeout))
            res.counters = {c.port: {"packets": c.packets, "bytes": c.bytes} for c in gate.counters()}
            drops = res.counters.get(80, {}).get("packets", 0)
            c = Check("drop counter for port 80", "> 0 packets", f"{drops} packets", drops > 0)
            res.checks.append(c)
            report(c)
            gate.unblock(80)  # a map delete: live, no reload
            expect("80 unblocked live: GET :80 (IPv4)", True, client.http_get(url4(80), timeout))
            expect("80 unblocked live: GET :80 (IPv6)", True, client.http_get(url6(80), timeout))
        finally:
            gate.detach()
    return res
