"""Scenario `steer`: the asymmetric-return problem (MetalLB users') and egress steering fixing it, live.

A service address on the server's lo is reached through the server's secondary network; the server's default
route leaves by the primary one, whose gateway knows no way back to the client (bpfgate.sandbox.scenes.
metallb). Per family: the client's TCP connection (an HTTP GET) fails with steering attached but nothing
asked of it; works with symmetric return on the secondary interface; fails again when it is turned off
(live); works with an explicit rule (service address, tcp, its port -> secondary interface, router as next
hop); the server's own connection upstream still follows the default route. Then the rules, interfaces and
counters as `bpfgate steer list` shows them, and a deleted rule's traffic failing again."""

from __future__ import annotations

from bpfgate import attach
from bpfgate.sandbox import Sandbox
from bpfgate.sandbox.scenes import metallb
from bpfgate.sandbox.timing import scaled
from bpfgate.steer import FAILURES, Steering, rules

from . import ScenarioResult, Table

TOPOLOGY = ("client -- router ==secondary== sec0 [server, service address on lo] pri0 ==primary== gw "
            "(no route back to the client); steering on the server's pri0 and sec0")


def _served(ok: bool) -> str:
    return "connects" if ok else "no answer"


def run(res: ScenarioResult, timeout: float) -> None:
    with Sandbox() as sb:
        t = metallb(sb)
        ns = t.server.netns
        try:
            _steps(res, t, timeout)
        finally:
            attach.detach_matching(netns_name=ns)   # programs, pinned maps and state: before the namespace goes


def _steps(res: ScenarioResult, t, timeout: float) -> None:
    ns, slow = t.server.netns, scaled(3 * timeout)

    def reach(step: str, family: int, want: bool) -> None:
        ok = t.reaches_vip(family, timeout=slow if want else timeout)
        res.check(f"IPv{family}: {step}", _served(want), _served(ok), ok == want)

    with Steering.attach([t.primary, t.secondary], ns, method="tc") as s:
        for fam in (4, 6):
            vip = t.vip[fam]
            reach(f"client -> {vip}:{t.port}, steering attached, nothing steered", fam, False)
            s.set_symmetric(t.secondary, True)
            before = s.stats()["returned"]
            reach("the same with symmetric return on sec0", fam, True)
            returned = s.stats()["returned"] - before
            res.check(f"IPv{fam}: replies returned by symmetric return", "> 0 packets", f"{returned} packets",
                      returned > 0)
            s.set_symmetric(t.secondary, False)
            reach("symmetric return turned off (live)", fam, False)
            rule = rules.make(vip, t.secondary, t.router_on_sec[fam], "tcp", t.port)
            s.add(rule)
            reach(f"explicit rule: {rule.describe()}", fam, True)
            ok = t.server_reaches_upstream(fam, timeout=slow)
            res.check(f"IPv{fam}: the server's own connection upstream (default route)", "connects",
                      _served(ok), ok)
        listed, ifs, stats = s.rules(), s.interfaces(), s.stats()
        steered = {r.rule.source: r.steered for r in listed}
        res.check("every rule counted its steered packets", "> 0 each",
                  ", ".join(f"{k}: {v}" for k, v in steered.items()), len(steered) == 2 and all(steered.values()))
        failed = {k: v for k, v in stats.items() if k in FAILURES and v}
        res.check("no steering failure counted", "none", ", ".join(f"{k}: {v}" for k, v in failed.items()) or "none",
                  not failed)
        s.delete(t.vip[4], "tcp", t.port)
        reach("explicit rule deleted (live)", 4, False)
    res.data["steer"] = {"rules": [r.to_dict() for r in listed], "interfaces": [i.to_dict() for i in ifs],
                         "stats": stats}
    res.tables += [
        Table("steering rules (bpfgate steer list)", ["id", "from", "proto", "port", "dev", "via", "steered", "failed"],
              [[r.id, r.rule.source, r.rule.proto or "any", r.rule.port or "any", r.rule.dev, r.rule.via,
                r.steered, r.failed] for r in listed]),
        Table("steering counters", ["counter", "packets"],
              [[k + (" (failure: passed unchanged)" if k in FAILURES else ""), v] for k, v in stats.items()])]
