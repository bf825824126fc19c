"""`bpfgate steer`: egress steering (explicit next hops per source, symmetric return), changed live."""

from __future__ import annotations

import click

from bpfgate.cli import term
from bpfgate.kernel import caps

NETNS = click.option("--netns", metavar="NAME", help="In this named network namespace (default: the current one).")
JSON = click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
MATCH_HELP = {"proto": "Only this protocol (tcp, udp, sctp).", "port": "Only this source port (needs --proto)."}


def _need_caps(what: str) -> None:
    caps.require(what, caps.CAP_BPF, caps.CAP_NET_ADMIN, caps.CAP_SYS_ADMIN)


def register(app: click.Group) -> None:
    @app.group("steer")
    def steer():
        """Egress steering: traffic leaves by a chosen interface to a chosen next hop.

        Fixes asymmetric return paths (a service reached through a secondary network whose replies would
        follow the default route out of the primary one): explicit rules per source, or symmetric return
        (replies of connections that arrived on an interface go back out of it, to the peer they came
        from). `bpfgate detach` removes it all."""

    @steer.command("attach")
    @click.argument("devs", nargs=-1, required=True, metavar="DEV...")
    @click.option("--symmetric", "symmetric", multiple=True, metavar="DEV",
                  help="Replies of connections that arrived on DEV go back out of DEV (repeatable; DEV must be "
                       "one of the interfaces attached).")
    @click.option("--method", type=click.Choice(["auto", "tc", "tcx"]), default="auto", show_default=True,
                  help="auto: TCX where the kernel has it (>= 6.6), else a clsact direct-action filter.")
    @NETNS
    @JSON
    def attach_cmd(devs, symmetric, method, netns, as_json):
        """Attach steering at ingress and egress of each DEV: the interfaces replies would leave by, and
        those connections arrive on."""
        from bpfgate.steer import Steering

        _need_caps("steer attach")
        with Steering.attach(devs, netns, symmetric=symmetric, method=method) as s:
            ifs = s.interfaces()
        if as_json:
            term.print_json({"interfaces": [i.to_dict() for i in ifs]})
            return
        for i in ifs:
            term.ok(f"steering on {i.dev}" + (" (symmetric return)" if i.symmetric else ""))

    @steer.command("add")
    @click.option("--from", "source", required=True, metavar="PREFIX", help="Source address or prefix.")
    @click.option("--dev", required=True, metavar="IF", help="Interface the traffic leaves by.")
    @click.option("--via", required=True, metavar="ADDR", help="Next hop on that interface's link.")
    @click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), help=MATCH_HELP["proto"])
    @click.option("--port", type=click.IntRange(1, 65535), help=MATCH_HELP["port"])
    @NETNS
    @JSON
    def add_cmd(source, dev, via, proto, port, netns, as_json):
        """Steer traffic from PREFIX out of IF to next hop ADDR (replaces a rule with the same match)."""
        from bpfgate.steer import Steering, rules

        _need_caps("steer add")
        rule = rules.make(source, dev, via, proto, port)
        with Steering.open(netns, op="steer add") as s:
            rule_id = s.add(rule)
        if as_json:
            term.print_json({"id": rule_id, **rule.to_dict()})
        else:
            term.ok(f"rule {rule_id}: {rule.describe()}")

    @steer.command("del")
    @click.option("--from", "source", required=True, metavar="PREFIX", help="Source address or prefix.")
    @click.option("--proto", type=click.Choice(["tcp", "udp", "sctp"]), help=MATCH_HELP["proto"])
    @click.option("--port", type=click.IntRange(1, 65535), help=MATCH_HELP["port"])
    @NETNS
    def del_cmd(source, proto, port, netns):
        """Delete the rule for PREFIX (and --proto/--port, as it was added)."""
        from bpfgate.errors import NotFound
        from bpfgate.steer import Steering

        _need_caps("steer del")
        with Steering.open(netns, op="steer del") as s:
            if not s.delete(source, proto, port):
                raise NotFound("steer del", f"no rule from {source}" + (f" {proto}" if proto else "")
                               + (f" port {port}" if port else ""))
        term.ok(f"deleted the rule from {source}")

    @steer.command("list")
    @NETNS
    @JSON
    def list_cmd(netns, as_json):
        """The rules, the interfaces and the counters (failures pass the packet unchanged)."""
        from bpfgate.kernel import netns as _netns
        from bpfgate.steer import FAILURES, Steering, attached

        _need_caps("steer list")
        _netns.require("steer list", netns)
        if not attached(netns):   # listing nothing is no error (as `rules`, `nat list`): say so
            if as_json:
                term.print_json({"rules": [], "interfaces": [], "stats": {}})
            else:
                term.info("steering is not attached" + (f" in {netns}" if netns else ""))
            return
        with Steering.open(netns, op="steer list") as s:
            rules, ifs, stats = s.rules(), s.interfaces(), s.stats()
        if as_json:
            term.print_json({"rules": [r.to_dict() for r in rules], "interfaces": [i.to_dict() for i in ifs],
                             "stats": stats})
            return
        term.table("interfaces", ["dev", "ifindex", "symmetric return", "present"],
                   [[i.dev, i.ifindex, "yes" if i.symmetric else "", "" if i.present else "GONE"] for i in ifs])
        if rules:
            term.table("rules", ["id", "from", "proto", "port", "dev", "via", "steered", "failed"],
                       [[r.id, r.rule.source, r.rule.proto or "any", r.rule.port or "any",
                         r.rule.dev if r.present else f"{r.rule.dev} (GONE)", r.rule.via, r.steered, r.failed]
                        for r in rules])
        else:
            term.info("no explicit rules")
        term.table("counters", ["counter", "packets"],
                   [[name + (" (failure: passed unchanged)" if name in FAILURES else ""), n]
                    for name, n in stats.items()])
