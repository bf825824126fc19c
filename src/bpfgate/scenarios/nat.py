"""Scenario `nat`: DNAT and SNAT (bpf/nat.bpf.c) of real HTTP sessions, with correct checksums.

client -- router -- server. The client asks a VIP that no host has; the router translates it to the
server's HTTP port at its client-facing interface (DNAT, at ingress). The server has no route back to the
client: the router also translates the client's source to its own address on the server's link at its
server-facing interface (SNAT, at egress). Per family: the GET fails with no translation, still fails with
DNAT alone (the server cannot answer), and returns 200 with both; the replies are translated back; the
checksum-error counters of all three stacks (nstat) do not move."""

from __future__ import annotations

from bpfgate import attach, nat
from bpfgate.sandbox import Sandbox
from bpfgate.sandbox.scenes import csum_errors
from bpfgate.sandbox.timing import scaled

from . import ScenarioResult, Table

TOPOLOGY = ("client -- router -- server (no route back to the client); the router DNATs VIP:80 to the "
            "server's :8080 (client side) and SNATs the client to itself (server side)")
VIP = {4: "198.18.200.1", 6: "fd00:200::1"}
PORT = 8080


def run(res: ScenarioResult, timeout: float) -> None:
    with Sandbox() as sb:
        client, router, server = sb.host("client"), sb.router("router"), sb.host("server")
        front, back = sb.link(client, router), sb.link(router, server)
        client.default_route(front)   # the server gets no route: only its own link
        server.http_server(PORT)
        try:
            _steps(res, (client, router, server), front.end(router), back.end(router), back.end(server), timeout)
        finally:
            attach.detach_matching(netns_name=router.netns)   # programs, pins, state: before the namespace goes


def _url(family: int, addr: str, port: int) -> str:
    return f"http://[{addr}]:{port}/" if family == 6 else f"http://{addr}:{port}/"


def _steps(res: ScenarioResult, hosts, inside, outside, srv, timeout: float) -> None:
    client, router, server = hosts
    slow = scaled(3 * timeout)
    before = {h.name: csum_errors(h) for h in hosts}

    def get(step: str, family: int, want: bool) -> None:
        r = client.http_get(_url(family, VIP[family], 80), timeout=slow if want else timeout)
        seen = f"HTTP {r.status}" if r.status else f"no answer ({r.error or 'timeout'})"
        res.check(f"IPv{family}: {step}", "HTTP 200" if want else "no answer", seen,
                  r.status == 200 if want else r.status is None)

    with nat.Gateway.open(inside.name, router.netns) as dn, nat.Gateway.open(outside.name, router.netns) as sn:
        for fam in (4, 6):
            get(f"GET {VIP[fam]}:80, no translation", fam, False)
            rule = nat.dnat(f"web{fam}", "tcp", f"[{VIP[fam]}]:80" if fam == 6 else f"{VIP[fam]}:80",
                            f"[{srv.addr(fam)}]:{PORT}" if fam == 6 else f"{srv.addr(fam)}:{PORT}")
            dn.add_rule(rule)
            get(f"DNAT {rule.match} -> {rule.to} alone (the server has no route back)", fam, False)
            src = str(inside.net4 if fam == 4 else inside.net6)
            sn.add_rule(nat.snat(f"out{fam}", src, outside.addr(fam)))
            get(f"DNAT + SNAT {src} -> {outside.addr(fam)}", fam, True)
        flows = dn.flows() + sn.flows()
        stats = {"dnat " + inside.name: dn.stats(), "snat " + outside.name: sn.stats()}
    seen = {(f["side"], f["dst"] if f["side"] == "destination" else f["src"], f["to"]) for f in flows
            if f["packets"][0] and f["packets"][1]}
    res.check("translated flows with packets both ways", "DNAT and SNAT, both families",
              f"{len(seen)} flows", len({(s, ":" in a) for s, a, _ in seen}) == 4)
    fails = {k: v.get("rewrite_fail", 0) for k, v in stats.items()}
    res.check("rewrite failures counted", "0", ", ".join(f"{k}: {v}" for k, v in fails.items()),
              not any(fails.values()))
    after = {h.name: csum_errors(h) for h in hosts}
    moved = {n: sorted(dict(after[n]).items() - dict(before[n]).items()) for n in after if after[n] != before[n]}
    res.check("checksum-error counters (nstat) of client, router, server", "unchanged",
              "; ".join(f"{n}: {v}" for n, v in moved.items()) or "unchanged", not moved)
    res.data["nat"] = {"flows": flows, "stats": stats,
                       "csum_errors": {n: dict(v) for n, v in after.items()}}
    res.tables.append(Table("translated flows (bpfgate nat flows)",
                            ["side", "proto", "src", "sport", "dst", "dport", "to", "to port", "packets (orig/reply)"],
                            [[f["side"], f["proto"], f["src"], f["sport"], f["dst"], f["dport"], f["to"],
                              f["to_port"], "/".join(map(str, f["packets"]))] for f in flows]))
