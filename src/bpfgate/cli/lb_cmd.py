"""`bpfgate lb add|del|backend|list`: L4 load balancing (VIP:port/proto -> weighted backends, Maglev)."""

from __future__ import annotations

import click
from rich.markup import escape

from bpfgate.cli import term
from bpfgate.cli.nat_cmd import JSON, NETNS, as_options, list_gateways, on_gateway
from bpfgate.nat.rules import MAX_WEIGHT


def _report(change, as_json: bool, what: str) -> None:
    if as_json:
        term.print_json({"change": what, **change.to_dict()})
        return
    term.ok(f"{what}: {100 * change.moved:.3f}% of {change.slots} table slots moved")
    term.table(None, ["backend", "share"], [(escape(b), f"{100 * s:.2f}%") for b, s in sorted(change.shares.items())])


def register(app: click.Group) -> None:
    @app.group("lb")
    def lb_group():
        """Load balancing at TC ingress: a flow keeps its backend for its life (conntrack)."""

    @lb_group.command("add")
    @click.argument("dev")
    @click.argument("name")
    @click.option("--vip", required=True, metavar="ADDR:PORT", help="The service address and port.")
    @click.option("--proto", type=click.Choice(["tcp", "udp"]), required=True)
    @click.option("--backend", "backends", multiple=True, metavar="ADDR[:PORT][@WEIGHT]",
                  help="A backend (repeat); port defaults to the VIP's, weight (1..65535) to 1.")
    @click.option("--table-size", type=int, help="Maglev table size, a prime [default: 65537].")
    @NETNS
    @JSON
    def lb_add(dev, name, vip, proto, backends, table_size, netns, as_json):
        """Add service NAME on DEV."""
        from bpfgate import nat

        options = {"": "NAME", "vip": "--vip", "proto": "--proto", "backends": "--backend",
                   "table_size": "--table-size"}
        with as_options(f"service {name}", options, given={"backends": list(backends)}):
            svc = nat.service(name, proto, vip, list(backends), table_size)
        with nat.Gateway.open(dev, netns) as gw:
            ch = gw.add_service(svc)
        _report(ch, as_json, f"service {name} added")

    @lb_group.command("backend")
    @click.argument("dev")
    @click.argument("name")
    @click.argument("backend")
    @click.option("--weight", type=click.IntRange(1, MAX_WEIGHT), help="Set the weight (adds the backend when new).")
    @click.option("--drain", is_flag=True, help="No new flows; its flows stay.")
    @click.option("--undrain", is_flag=True, help="Take new flows again.")
    @click.option("--remove", is_flag=True, help="Remove it: only its flows move.")
    @NETNS
    @JSON
    def lb_backend(dev, name, backend, weight, drain, undrain, remove, netns, as_json):
        """Add, re-weight, drain or remove BACKEND (ADDR[:PORT]) of service NAME, live."""
        if drain and undrain:
            raise click.UsageError("give one of --drain or --undrain")
        if remove and (weight is not None or drain or undrain):
            raise click.UsageError("--remove takes no --weight/--drain/--undrain")
        drained = True if drain else False if undrain else None   # None: as it was
        with as_options(f"service {name}", {"backend": "BACKEND"}):
            ch = on_gateway(dev, netns, lambda gw: gw.set_backend(name, backend, weight=weight, drained=drained,
                                                                  remove=remove))
        _report(ch, as_json, f"service {name}, backend {backend}")

    @lb_group.command("del")
    @click.argument("dev")
    @click.argument("name")
    @NETNS
    @JSON
    def lb_del(dev, name, netns, as_json):
        """Delete service NAME."""
        s = on_gateway(dev, netns, lambda gw: gw.delete_service(name))
        if as_json:
            term.print_json({"deleted": s.to_dict()})
        else:
            term.ok(f"service {name} deleted on {dev}")

    @lb_group.command("list")
    @click.argument("dev", required=False)
    @NETNS
    @JSON
    def lb_list(dev, netns, as_json):
        """Services and their backends."""
        list_gateways("lb list", dev, netns, as_json,
                      lambda gw: {"interface": gw.dev, "services": [s.to_dict() for s in gw.services()]},
                      ["if", "service", "proto", "vip", "table", "backend", "weight", ""],
                      lambda gw: [(gw.dev, s.name, s.proto, escape(s.vip), s.table_size, escape(b.name), b.weight,
                                   "drained" if b.drained else "") for s in gw.services() for b in s.backends])
