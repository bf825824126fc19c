"""`bpfgate nat add|del|list|stats|flows`: DNAT/SNAT rules on an interface, changed live."""

from __future__ import annotations

from contextlib import contextmanager

import click
from rich.markup import escape

from bpfgate.cli import term
from bpfgate.errors import PolicyError

NETNS = click.option("--netns", metavar="NAME", help="The interface is in this named network namespace.")
JSON = click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")


@contextmanager
def as_options(what: str, options: dict[str, str], given: dict[str, list[str]] | None = None):
    """A PolicyError about a field of WHAT, in the policy file's words ('rule r1.to', 'service s.backends[1]';
    'rule' alone: the name), re-raised as the usage error of the option the user typed ('--to'): a CLI user
    wrote no policy file. OPTIONS maps a field ('' the name) to its option; GIVEN a repeated option's field to
    the values given, to say which one is wrong. Other errors pass unchanged."""
    try:
        yield
    except PolicyError as e:
        kind = what.split(" ", 1)[0]
        if e.path == kind:
            field, index = "", ""
        elif e.path.startswith(what + "."):
            field, _, index = e.path[len(what) + 1:].partition("[")
        else:
            raise
        if field not in options:
            raise
        reason = e.reason
        if index and field in (given or {}):
            reason = f"{given[field][int(index.rstrip(']'))]!r}: {reason}"
        raise click.BadParameter(reason, param_hint=[options[field]]) from None


def _gateways(op, dev, netns):
    from bpfgate import nat
    from bpfgate.kernel import netns as _netns

    _netns.require(op, netns)   # else a namespace that does not exist would list as one without a NAT
    devs = [dev] if dev else nat.running(netns)
    return [nat.Gateway.open(d, netns, create=False) for d in devs]


def on_gateway(dev, netns, use):
    """use(gw) on the NAT running on DEV (NotFound without one); the gateway closed after."""
    from bpfgate import nat

    with nat.Gateway.open(dev, netns, create=False) as gw:
        return use(gw)


def list_gateways(op, dev, netns, as_json: bool, as_dict, header: list[str], rows) -> None:
    """`nat list` / `lb list` (`op`): for DEV (or every interface with a NAT) `as_dict(gw)` as JSON, or a
    table of `header` with the rows `rows(gw)` yields. No NAT anywhere lists nothing and says so (exit 0,
    as `rules`); DEV without one is NotFound."""
    gws = _gateways(op, dev, netns)
    try:
        if as_json:
            term.print_json([as_dict(gw) for gw in gws])
        elif not gws:
            term.info("bpfgate runs no NAT" + (f" in {netns}" if netns else ""))
        else:
            term.table(None, header, [row for gw in gws for row in rows(gw)])
    finally:
        for gw in gws:
            gw.close()


def register(app: click.Group) -> None:
    @app.group("nat")
    def nat_group():
        """Address/port translation at TC (DNAT at ingress, SNAT at egress; replies translated back)."""

    @nat_group.command("add")
    @click.argument("dev")
    @click.argument("name")
    @click.option("--dnat", "dnat_match", metavar="ADDR[:PORT]", help="Translate packets arriving for this destination.")
    @click.option("--snat", "snat_match", metavar="PREFIX", help="Translate packets leaving from this source prefix.")
    @click.option("--to", "to", required=True, metavar="ADDR[:PORT]", help="What the matched side becomes.")
    @click.option("--proto", type=click.Choice(["tcp", "udp"]), help="DNAT: the protocol (SNAT: tcp and udp).")
    @click.option("--ports", metavar="LOW-HIGH", help="SNAT: source ports to allocate from (default: keep the "
                  "port, another one from 1024-65535 on a collision).")
    @click.option("--stateless", is_flag=True, help="1:1 per packet by the rule, no connection state.")
    @NETNS
    @JSON
    def nat_add(dev, name, dnat_match, snat_match, to, proto, ports, stateless, netns, as_json):
        """Add rule NAME on DEV (attaches the NAT program on first use)."""
        from bpfgate import nat

        if bool(dnat_match) == bool(snat_match):
            raise click.UsageError("give one of --dnat ADDR[:PORT] or --snat PREFIX")
        if dnat_match and not proto:
            raise click.UsageError("--dnat needs --proto tcp|udp")
        if snat_match and proto:
            raise click.UsageError("--snat translates tcp and udp: no --proto")
        options = {"": "NAME", "to": "--to", "proto": "--proto", "ports": "--ports",
                   "match": "--dnat" if dnat_match else "--snat"}
        with as_options(f"rule {name}", options):
            if dnat_match:
                rule = nat.dnat(name, proto, dnat_match, to, stateless=stateless)
            else:
                rule = nat.snat(name, snat_match, to, ports=ports, stateless=stateless)
        with nat.Gateway.open(dev, netns) as gw:
            gw.add_rule(rule)
        if as_json:
            term.print_json({"added": rule.to_dict(), "interface": dev, "netns": netns})
        else:
            term.ok(f"rule {rule.name} on {dev}: {rule.kind} {escape(rule.match)} -> {escape(rule.to)}")

    @nat_group.command("del")
    @click.argument("dev")
    @click.argument("name")
    @NETNS
    @JSON
    def nat_del(dev, name, netns, as_json):
        """Delete rule NAME on DEV (its flows already translated keep their entries until they expire)."""
        r = on_gateway(dev, netns, lambda gw: gw.delete_rule(name))
        if as_json:
            term.print_json({"deleted": r.to_dict(), "interface": dev, "netns": netns})
        else:
            term.ok(f"rule {name} deleted on {dev}")

    @nat_group.command("list")
    @click.argument("dev", required=False)
    @NETNS
    @JSON
    def nat_list(dev, netns, as_json):
        """Rules (and load-balanced services) of DEV, or of every interface with a NAT."""
        list_gateways("nat list", dev, netns, as_json, lambda gw: gw.to_dict(),
                      ["if", "name", "kind", "proto", "match", "to", "state", "ports"],
                      lambda gw: [(gw.dev, r.name, r.kind, r.proto or "tcp+udp", escape(r.match), escape(r.to),
                                   "stateless" if r.stateless else "stateful",
                                   f"{r.ports[0]}-{r.ports[1]}" if r.ports != (0, 0) else "") for r in gw.rules()])

    @nat_group.command("stats")
    @click.argument("dev")
    @NETNS
    @JSON
    def nat_stats(dev, netns, as_json):
        """Counters: packets translated, flows, port collisions and exhaustion, table pressure."""
        st = on_gateway(dev, netns, lambda gw: gw.stats())
        if as_json:
            term.print_json(st)
        else:
            term.table(None, ["counter", "value"], list(st.items()))

    @nat_group.command("flows")
    @click.argument("dev")
    @NETNS
    @JSON
    def nat_flows(dev, netns, as_json):
        """Translated flows (original tuple -> what the translated side became)."""
        flows = on_gateway(dev, netns, lambda gw: gw.flows())
        if as_json:
            term.print_json(flows)
            return
        term.table(None, ["proto", "source", "destination", "side", "to", "packets out/back"],
                   [(f["proto"], escape(f"{f['src']}:{f['sport']}"), escape(f"{f['dst']}:{f['dport']}"), f["side"],
                     escape(f"{f['to']}:{f['to_port']}"), f"{f['packets'][0]}/{f['packets'][1]}") for f in flows])
