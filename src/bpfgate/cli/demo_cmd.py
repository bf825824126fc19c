"""`bpfgate demo`: the policy engine end to end in a sandbox; a verdict table; exit 0 only if all held."""

from __future__ import annotations

import click

from bpfgate.cli import term


def register(app: click.Group) -> None:
    @app.command("demo")
    @click.option("--json", "as_json", is_flag=True, help="JSON result for scripts.")
    @click.option("--timeout", type=float, default=1.0, show_default=True, help="Seconds per request.")
    @click.option("--mode", type=click.Choice(["tc", "tcx", "xdp-native", "xdp-generic", "auto"]), default=None,
                  help="Attach mode of the engine (default: tc clsact).")
    def demo_cmd(as_json, timeout, mode):
        """The policy engine in throwaway namespaces: drop HTTP, by source, per CIDR, port range, IPv6, rate
        limit, default deny with conntrack, a live edit, counters; every step checked with real traffic."""
        from bpfgate import demo
        from bpfgate.kernel import caps

        caps.require("run the demo (network namespaces, BPF)", caps.CAP_BPF, caps.CAP_NET_ADMIN,
                     caps.CAP_SYS_ADMIN)

        def report(c):
            if not as_json:
                (term.ok if c.ok else term.fail)(f"{c.step}: expected {c.expected}, got {c.observed}")

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
