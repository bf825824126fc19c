"""`bpfgate demo`: the policy engine end to end in a sandbox (or, with --scenario, steering, load balancing
or NAT); a verdict table; exit 0 only if all held."""

from __future__ import annotations

import click

from bpfgate.cli import term

SCENARIOS = ("steer", "lb", "nat")   # bpfgate.scenarios.NAMES (not imported here: the CLI starts fast)


def register(app: click.Group) -> None:
    @app.command("demo")
    @click.option("--json", "as_json", is_flag=True, help="JSON result for scripts.")
    @click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds per request.")
    @click.option("--mode", type=click.Choice(["tc", "tcx", "xdp-native", "xdp-generic", "auto"]), default=None,
                  help="Attach mode of the engine (default: tc clsact; not with --scenario).")
    @click.option("--scenario", type=click.Choice(SCENARIOS), default=None,
                  help="steer: egress steering in the MetalLB topology; lb: weighted Maglev load balancing with "
                       "live backend changes; nat: DNAT + SNAT of HTTP. Default: the policy engine tour.")
    def demo_cmd(as_json, timeout, mode, scenario):
        """The policy engine in throwaway namespaces: drop HTTP, by source, per CIDR, port range, IPv6, rate
        limit, default deny with conntrack, a live edit, counters; every step checked with real traffic.
        With --scenario: steering, load balancing or NAT, likewise (see --scenario)."""
        from bpfgate import demo
        from bpfgate.kernel import caps

        caps.require("run the demo (network namespaces, BPF)", caps.CAP_BPF, caps.CAP_NET_ADMIN,
                     caps.CAP_SYS_ADMIN)

        def report(c):
            if not as_json:
                (term.ok if c.ok else term.fail)(f"{c.step}: expected {c.expected}, got {c.observed}")

        if scenario:
            if mode:
                raise click.UsageError("--mode chooses the engine's attach mode: not with --scenario")
            _scenario(scenario, report, timeout, as_json)
        if not as_json:
            term.info("[bold]bpfgate demo[/bold]: client-a, client-b, client-c --veth-- server; policies on the "
                      "server's interfaces through `apply` / `rule add` / `rules`", markup=True)
        res = demo.run(report, timeout=timeout, mode=mode)
        if as_json:
            term.print_json({"ok": res.ok, "checks": [c.__dict__ for c in res.checks], "counters": res.counters})
        else:
            term.table("per-rule counters on client-a's side of the server (before the swap)",
                       ["#", "rule", "action", "match", "packets", "bytes"],
                       [["" if r["position"] is None else r["position"], r["name"], r["action"], r["match"],
                         r["packets"], r["bytes"]] for r in res.counters])
            passed = sum(c.ok for c in res.checks)
            term.info(f"[green]all {passed} expectations held[/green]" if res.ok else
                      f"[red]{len(res.checks) - passed} of {len(res.checks)} expectations failed[/red]", markup=True)
        raise SystemExit(0 if res.ok else 1)


def _scenario(name: str, report, timeout: float, as_json: bool) -> None:
    from rich.markup import escape

    from bpfgate import scenarios

    if not as_json:
        term.info(f"[bold]bpfgate demo --scenario {name}[/bold]: {escape(scenarios.describe(name))}", markup=True)
    res = scenarios.run(name, report, timeout=timeout)
    if as_json:
        term.print_json(res.to_dict())
    else:
        for t in res.tables:
            term.table(t.title, t.columns, t.rows)
        passed = sum(c.ok for c in res.checks)
        term.info(f"[green]all {passed} expectations held[/green]" if res.ok else
                  f"[red]{len(res.checks) - passed} of {len(res.checks)} expectations failed[/red]", markup=True)
    if not res.ok:   # on stderr: the proof failed, and what (stdout stays JSON with --json)
        for c in res.checks:
            if not c.ok:
                term.error(f"demo --scenario {name}: {c.step}: expected {c.expected}, got {c.observed}")
    raise SystemExit(0 if res.ok else 1)
