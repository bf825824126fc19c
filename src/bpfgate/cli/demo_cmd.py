"""`bpfgate demo`: the drop-HTTP example in a sandbox, with a verdict table; exit 0 only if all held."""

from __future__ import annotations

import click

from bpfgate.cli import term


def register(app: click.Group) -> None:
    @app.command("demo")
    @click.option("--json", "as_json", is_flag=True, help="JSON result for scripts.")
    @click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds per HTTP request.")
    def demo_cmd(as_json, timeout):
        """Drop HTTP with a live BPF map, in throwaway network namespaces, checked with real requests."""
        from bpfgate import demo
        from bpfgate.kernel import caps

        caps.require("run the demo (network namespaces, BPF)", caps.CAP_BPF, caps.CAP_NET_ADMIN,
                     caps.CAP_SYS_ADMIN)

        def report(c):
            if not as_json:
                (term.ok if c.ok else term.fail)(f"{c.step}: expected {c.expected}, got {c.observed}")

        if not as_json:
            term.info("[bold]bpfgate demo[/bold]: client --veth-- server (HTTP :80 and :8080); "
                      "TC ingress gate on the server drops TCP to the ports in a BPF map")
        res = demo.run(report, timeout=timeout)
        if as_json:
            term.print_json({"ok": res.ok, "checks": [c.__dict__ for c in res.checks],
                             "counters": res.counters})
        else:
            term.table("per-port drop counters (while 80 was blocked)", ["port", "packets", "bytes"],
                       [[p, c["packets"], c["bytes"]] for p, c in res.counters.items()])
            term.info("[green]all expectations held[/green]" if res.ok else "[red]some expectations failed[/red]")
        raise SystemExit(0 if res.ok else 1)
