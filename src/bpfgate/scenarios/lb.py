"""Scenario `lb`: L4 load balancing with a Maglev table (bpf/nat.bpf.c) on real UDP flows, changed live.

client -- server; the server's interface balances a VIP (udp :53) over three of its own ports, weights
1, 2, 3. Many client flows (one socket each) are spread over the backends (each answers with its port);
the spread is compared with the weights. Then, live: a fourth backend added (the share of table slots it
moved; every existing flow stays on its backend), a backend drained (existing flows stay, new flows avoid
it), a backend removed (only its flows move)."""

from __future__ import annotations

import resource

from bpfgate import attach, nat
from bpfgate.sandbox import Sandbox
from bpfgate.sandbox.scenes import udp_port_echo, udp_round, udp_sockets

from . import ScenarioResult, Table

TOPOLOGY = ("client -- server; the server's interface load-balances VIP 198.18.200.1:53/udp over its ports "
            "9001-9003 (weights 1, 2, 3), then 9004 added live")
VIP = "198.18.200.1"
PORTS = (9001, 9002, 9003, 9004)
WEIGHTS = (1, 2, 3)
FLOWS, NEW_FLOWS = 1000, 200
# absolute share: 1000 flows at p = 1/2 have a standard deviation of 0.016, at 1/6 of 0.012 (>= 4.4 sd)
TOLERANCE = 0.07


def run(res: ScenarioResult, timeout: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)   # one socket per flow: more than 1024 at once
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    socks = []
    try:
        with Sandbox() as sb:
            client, server = sb.host("client"), sb.host("server")
            link = sb.link(client, server)
            si = link.end(server)
            client.route(f"{VIP}/32", si)
            udp_port_echo(server, PORTS)
            try:
                with nat.Gateway.open(si.name, server.netns) as gw:
                    _steps(res, client, si, gw, socks)
            finally:
                for s in socks:
                    s.close()
                attach.detach_matching(netns_name=server.netns)   # programs, pins, state: before the namespace goes
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _flows(client, n: int, socks: list) -> list:
    new = udp_sockets(client, n)
    socks += new   # kept open to the end: a source port used again would be the same flow to the tracker
    return new


def _answered(res: ScenarioResult, step: str, got: list) -> bool:
    lost = got.count(None)
    return res.check(f"{step}: every flow answered by a backend, from the VIP", f"{len(got)} answered",
                     f"{len(got) - lost} answered", not lost)


def _spread(got: list, port: int) -> float:
    return got.count(port) / len(got)


def _steps(res: ScenarioResult, client, si, gw, socks: list) -> None:
    be = {p: f"{si.ip4}:{p}" for p in PORTS}
    ch = gw.add_service(nat.service("dns", "udp", f"{VIP}:53", [f"{be[p]}@{w}" for p, w in zip(PORTS, WEIGHTS)]))
    changes = [{"change": "service added (3 backends)", **ch.to_dict()}]
    old = _flows(client, FLOWS, socks)
    first = udp_round(old, VIP, 53)
    if not _answered(res, f"{FLOWS} UDP flows to {VIP}:53", first):
        return
    total = sum(WEIGHTS)
    spread = []
    for p, w in zip(PORTS, WEIGHTS):
        seen = _spread(first, p)
        spread.append({"backend": be[p], "weight": w, "weight_share": round(w / total, 4),
                       "table_share": round(ch.shares[be[p]], 4), "flows": first.count(p),
                       "flow_share": round(seen, 4)})
        res.check(f"spread: {be[p]} weight {w}", f"{w / total:.1%} of flows (+-{TOLERANCE:.0%})",
                  f"{seen:.1%} ({first.count(p)} flows)", abs(seen - w / total) < TOLERANCE)

    def stayed(step: str, want_moved=lambda old_port: False) -> None:
        now = udp_round(old, VIP, 53)
        if not _answered(res, step, now):
            return
        wrong = sum((a == b) == want_moved(a) for a, b in zip(first, now))
        moved = sum(a != b for a, b in zip(first, now))
        res.check(f"{step}: existing flows", "only the removed backend's moved" if want_moved(PORTS[2]) else
                  "all on their backend", f"{moved} of {len(now)} moved", not wrong)

    # live add: about the newcomer's share of slots moves; flows stay by their conntrack entries
    ch = gw.set_backend("dns", be[9004], weight=3)
    changes.append({"change": f"add {be[9004]} weight 3", **ch.to_dict()})
    res.check(f"add {be[9004]} weight 3: table slots moved", f"about {3 / 9:.1%} (its share)",
              f"{ch.moved:.2%}", abs(ch.moved - 3 / 9) < 0.02)
    stayed(f"add {be[9004]}")
    fresh = udp_round(_flows(client, NEW_FLOWS, socks), VIP, 53)
    res.check(f"add {be[9004]}: new flows reach it", "> 0 flows", f"{fresh.count(9004)} of {len(fresh)}",
              fresh.count(9004) > 0)
    # drain: existing flows stay, no new flow
    ch = gw.set_backend("dns", be[9002], drained=True)
    changes.append({"change": f"drain {be[9002]}", **ch.to_dict()})
    stayed(f"drain {be[9002]}")
    fresh = udp_round(_flows(client, NEW_FLOWS, socks), VIP, 53)
    res.check(f"drain {be[9002]}: new flows avoid it", "0 flows", f"{fresh.count(9002)} of {len(fresh)}",
              None not in fresh and fresh.count(9002) == 0)
    # remove: only the removed backend's flows move
    ch = gw.set_backend("dns", be[9003], remove=True)
    changes.append({"change": f"remove {be[9003]}", **ch.to_dict()})
    res.check(f"remove {be[9003]}: table slots moved", f"about its {_table_share(changes[-2], be[9003]):.1%}",
              f"{ch.moved:.2%}", abs(ch.moved - _table_share(changes[-2], be[9003])) < 0.02)
    stayed(f"remove {be[9003]}", want_moved=lambda old_port: old_port == 9003)
    flows = gw.backend_flows()
    res.data["lb"] = {"vip": f"{VIP}:53", "proto": "udp", "flows": FLOWS, "tolerance": TOLERANCE, "spread": spread,
                      "changes": changes, "backend_flows": {b: n for (_, b), n in flows.items()},
                      "stats": {k: v for k, v in gw.stats().items() if k.startswith(("lb_", "flows", "ct_"))}}
    res.tables += [
        Table(f"spread of {FLOWS} UDP flows", ["backend", "weight", "weight share", "table share", "flows", "flow share"],
              [[s["backend"], s["weight"], f"{s['weight_share']:.1%}", f"{s['table_share']:.1%}", s["flows"],
                f"{s['flow_share']:.1%}"] for s in spread]),
        Table("live changes (Maglev table of 65537 slots)", ["change", "slots moved", "shares after"],
              [[c["change"], f"{c['moved_percent']:.2f}%",
                ", ".join(f"{b.rsplit(':', 1)[1]} {v:.1%}" for b, v in c["shares"].items())] for c in changes])]


def _table_share(change: dict, backend: str) -> float:
    return change["shares"].get(backend, 0.0)
