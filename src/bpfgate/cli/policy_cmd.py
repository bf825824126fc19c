"""`bpfgate apply`, `confirm`, `rule add/del`, `rules`, `policy export|classifier|remove`: the policy control
plane."""

from __future__ import annotations

import time

import click
from bpfgate.cli import term
from bpfgate.cli.applied import SUMMARY_OVER, print_plan
from bpfgate.cli.params import Seconds, UserPath

NETNS = click.option("--netns", metavar="NAME", help="The interfaces are in this named network namespace.")
HOOKS = click.Choice(["tc-ingress", "tc-egress", "xdp", "cgroup-ingress", "cgroup-egress", "cgroup-connect",
                      "cgroup-bind"])


LIST_SHOWN = 8   # the values of one field a `rules` table cell shows (`--json` gives them all)


def _short_lists(match: str) -> str:
    """A rule's match text with each field's long value list cut to its first LIST_SHOWN values and a count
    (a blocklist rule's 100k addresses would be one 7 MB cell)."""
    if match.count(",") < LIST_SHOWN:
        return match
    words = []
    for word in match.split(" "):
        key, eq, values = word.partition("=")
        items = values.split(",")
        if eq and len(items) > LIST_SHOWN:
            word = f"{key}={','.join(items[:LIST_SHOWN])},... ({len(items)} in all; --json lists them)"
        words.append(word)
    return " ".join(words)


def _running_hooks(command):
    """--dev, --hook, --netns, --json: the options of a command over the running hooks (default: all)."""
    for option in reversed((click.option("--dev", help="Only this interface (or cgroup path)."),
                            click.option("--hook", type=HOOKS, default=None, help="Only this hook."), NETNS,
                            click.option("--json", "as_json", is_flag=True, help="JSON output for scripts."))):
        command = option(command)
    return command


def _mark(value):
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number (decimal or 0x...)") from None


def _printed_as_json_or_none(items, as_json: bool, netns: str | None) -> bool:
    """Print the items as JSON (their to_dict()), or say that nothing runs; True when that was all."""
    if as_json:
        term.print_json([x.to_dict() for x in items])
    elif not items:
        term.info("no bpfgate policy is running" + (f" in {netns}" if netns else ""))
    return as_json or not items


def register(app: click.Group) -> None:
    @app.command("apply")
    @click.argument("file", required=False)
    @click.option("--dry-run", is_flag=True, help="Validate, compile and show what would change; change nothing.")
    @click.option("--confirm", "confirm_s", type=Seconds(0, 86400, min_open=True), metavar="SECONDS",
                  help="Roll back to the previous policy unless confirmed within SECONDS.")
    @click.option("--confirmed", is_flag=True, help="Confirm the change waiting for confirmation (then apply FILE, "
                  "if given: normally nothing left to change).")
    @click.option("--force", is_flag=True, help="Apply even a default-deny ingress with no `ct: established` pass.")
    @click.option("--mode", type=click.Choice(["tc", "tcx", "xdp-native", "xdp-generic", "auto"]), default=None,
                  help="Attach mode for hooks attached now (default: the engine's: tc clsact; xdp native).")
    @NETNS
    @click.option("-v", "--verbose", is_flag=True, help=f"List every rule change (by default counted when more "
                  f"than {SUMMARY_OVER} on a hook).")
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts (every rule change).")
    def apply_cmd(file, dry_run, confirm_s, confirmed, force, mode, netns, verbose, as_json):
        """Make the running policy match FILE (YAML; `-` for stdin): only what differs changes."""
        # the file applied last was answered before click (cli/entry.py); policyctl.apply answers the rest
        from bpfgate import policyctl

        if confirmed:
            if confirm_s is not None or dry_run:
                raise click.UsageError("--confirmed cannot be combined with --confirm or --dry-run")
            p = policyctl.confirm(netns)
            if not as_json:
                term.ok(f"change confirmed ({p.remaining:.0f} s were left); rollback cancelled")
            if file is None:
                if as_json:
                    term.print_json({"confirmed": True, "netns": netns})
                return
        elif file is None:
            raise click.UsageError("missing FILE (or --confirmed)")
        res = policyctl.apply(file, netns=netns, dry_run=dry_run, force=force, confirm=confirm_s, mode=mode)
        print_plan(res, as_json, verbose)

    @app.command("confirm")
    @NETNS
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def confirm_cmd(netns, as_json):
        """Keep the change made by `apply --confirm`: cancel its rollback."""
        from bpfgate import policyctl

        p = policyctl.confirm(netns)
        if as_json:
            term.print_json({"confirmed": True, "netns": netns, "seconds_left": round(p.remaining, 1)})
        else:
            term.ok(f"change confirmed ({p.remaining:.0f} s were left); rollback cancelled")

    @app.group("rule")
    def rule_group():
        """Live edits of one rule (no reload; the other rules keep their counters)."""

    @rule_group.command("add")
    @click.argument("name")
    @click.option("--dev", required=True, help="Interface, or a cgroup path for the cgroup-* hooks.")
    @click.option("--hook", type=HOOKS, default="tc-ingress", show_default=True)
    @click.option("--src", multiple=True, help="Source CIDR (repeat for a list).")
    @click.option("--dst", multiple=True, help="Destination CIDR (repeat for a list).")
    @click.option("--proto", multiple=True, help="Protocol name or number (repeat for a list).")
    @click.option("--sport", multiple=True, help="Source port or range a-b (repeat for a list).")
    @click.option("--dport", multiple=True, help="Destination port or range a-b (repeat for a list).")
    @click.option("--tcp-flags", help="e.g. 'syn,!ack' or VALUE/MASK.")
    @click.option("--icmp-type", type=int)
    @click.option("--icmp-code", type=int)
    @click.option("--vlan", multiple=True, type=int, help="Outer VLAN id (repeat for a list).")
    @click.option("--ct", multiple=True, help="Conntrack state: new, established, related, invalid.")
    @click.option("--action", type=click.Choice(["pass", "drop", "redirect", "reject"]), default="pass",
                  show_default=True)
    @click.option("--reject-with", type=click.Choice(["port-unreachable", "admin-prohibited"]),
                  help="Action reject: the ICMP/ICMPv6 unreachable sent for non-TCP packets (TCP gets a RST).")
    @click.option("--reject-rate", type=int, metavar="PER_SECOND", help="Action reject: replies per second at "
                  "most (default 100; more are dropped unanswered).")
    @click.option("--redirect", "redirect_if", metavar="IF", help="Redirect target interface (action redirect).")
    @click.option("--redirect-ingress", is_flag=True, help="Redirect to the target's ingress (default egress).")
    @click.option("--redirect-on-gone", type=click.Choice(["pass", "drop"]), default="pass", show_default=True,
                  help="What a redirected packet gets when the target interface is gone (counted either way).")
    @click.option("--mark", help="skb mark (tc hooks only).")
    @click.option("--rate", type=int, help="Rate limit: tokens per second.")
    @click.option("--rate-unit", type=click.Choice(["packets", "bytes"]), default="packets", show_default=True)
    @click.option("--rate-per", type=click.Choice(["rule", "source"]), default="rule", show_default=True)
    @click.option("--burst", type=int)
    @click.option("--over", type=click.Choice(["drop", "pass"]), default="drop", show_default=True,
                  help="Action for packets over the rate limit.")
    @click.option("--log", "log_rate", type=int, default=None, metavar="PER_SECOND", help="Log matches (rate cap).")
    @click.option("--no-count", is_flag=True, help="Do not count matches.")
    @click.option("--comment", help="Free text kept with the rule (shown by `rules`, kept by `policy export`).")
    @click.option("--before", metavar="RULE", help="Insert before this rule.")
    @click.option("--after", metavar="RULE", help="Insert after this rule.")
    @click.option("--position", type=int, help="Insert at this index (0 = first). Default: last.")
    @NETNS
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def rule_add(name, dev, hook, src, dst, proto, sport, dport, tcp_flags, icmp_type, icmp_code, vlan, ct,
                 action, reject_with, reject_rate, redirect_if, redirect_ingress, redirect_on_gone, mark, rate,
                 rate_unit, rate_per, burst, over, log_rate, no_count, comment, before, after, position, netns,
                 as_json):
        """Add rule NAME on --dev/--hook, matching like the YAML fields."""
        from bpfgate.agent import client as agent   # an edit the agent does needs no control plane here

        data = {"name": name, "action": action}
        for key, val in (("src", src), ("dst", dst), ("protocol", proto), ("src_port", sport),
                         ("dst_port", dport), ("vlan", vlan), ("ct", ct)):
            if val:
                data[key] = list(val)
        for key, val in (("tcp_flags", tcp_flags), ("icmp_type", icmp_type), ("icmp_code", icmp_code),
                         ("mark", _mark(mark))):
            if val is not None:
                data[key] = val
        if reject_with is not None or reject_rate is not None:
            data["reject"] = {**({"with": reject_with} if reject_with else {}),
                              **({"rate": reject_rate} if reject_rate is not None else {})}
        if redirect_if:
            data["redirect"] = {"interface": redirect_if, "direction": "ingress" if redirect_ingress else "egress",
                                "on_gone": redirect_on_gone}
        if rate is not None:
            data["rate_limit"] = {"rate": rate, "unit": rate_unit, "per": rate_per, "over": over,
                                  **({"burst": burst} if burst is not None else {})}
        if log_rate is not None:
            data["log"] = {"rate": log_rate}
        if no_count:
            data["count"] = False
        if comment is not None:
            data["comment"] = comment
        pos = agent.offer(netns, "add_rule", dev=dev, hook=hook, rule=data, before=before, after=after,
                          position=position)
        if pos is agent.NOT_RUNNING:
            from bpfgate import policyctl

            pos = policyctl.add_rule(dev, hook, data, netns=netns, before=before, after=after, position=position)
        if as_json:
            term.print_json({"added": name, "dev": dev, "hook": hook, "position": pos})
        else:
            term.ok(f"rule {name} added on {dev} {hook} at position {pos}")

    @rule_group.command("del")
    @click.argument("name")
    @click.option("--dev", required=True, help="Interface, or a cgroup path for the cgroup-* hooks.")
    @click.option("--hook", type=HOOKS, default="tc-ingress", show_default=True)
    @click.option("--force", is_flag=True, help="Even the rule that keeps established connections alive.")
    @NETNS
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def rule_del(name, dev, hook, force, netns, as_json):
        """Delete rule NAME from --dev/--hook."""
        from bpfgate.agent import client as agent

        if agent.offer(netns, "delete_rule", dev=dev, hook=hook, name=name, force=force) is agent.NOT_RUNNING:
            from bpfgate import policyctl

            policyctl.delete_rule(dev, hook, name, netns=netns, force=force)
        if as_json:
            term.print_json({"deleted": name, "dev": dev, "hook": hook})
        else:
            term.ok(f"rule {name} deleted from {dev} {hook}")

    @app.group("set")
    def set_group():
        """Named sets of the running policy (`sets:` in a policy file): list them, add or delete elements live."""

    @set_group.command("list")
    @click.argument("name", required=False)
    @NETNS
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts (every element).")
    def set_list(name, netns, as_json):
        """The named sets (or set NAME): type, elements, and the interfaces/hooks running them."""
        from bpfgate import policyctl

        rows = policyctl.sets(name, netns=netns)
        if as_json:
            term.print_json([r.to_dict() for r in rows])
            return
        if name is not None:   # one set: every element, one a line (as `nft list set`)
            row = rows[0]
            term.info(f"set {row.name}: type {row.type}, {len(row.elements)} elements, on {', '.join(row.targets)}")
            for e in row.elements:
                click.echo(e)
            return
        if not rows:
            term.info("no named sets in the running policies")
            return
        term.table("named sets", ["set", "type", "elements", "first elements", "on"],
                   [(r.name, r.type, len(r.elements), ", ".join(map(str, r.elements[:3]))
                     + (" ..." if len(r.elements) > 3 else ""), ", ".join(r.targets)) for r in rows])

    def _set_edit(name, elements, netns, as_json, add):
        from bpfgate.agent import client as agent   # an edit the agent does needs no control plane here

        where = agent.offer(netns, "set_add" if add else "set_delete", name=name, elements=list(elements))
        if where is agent.NOT_RUNNING:
            from bpfgate import policyctl

            edit = policyctl.set_add if add else policyctl.set_delete
            where = edit(name, list(elements), netns=netns)
        if as_json:
            term.print_json({"set": name, "added" if add else "deleted": list(elements), "on": where})
        else:
            verb = "added to" if add else "deleted from"
            term.ok(f"{len(elements)} element{'s' if len(elements) != 1 else ''} {verb} set {name} on "
                    f"{', '.join(where)}")

    @set_group.command("add")
    @click.argument("name")
    @click.argument("elements", nargs=-1, required=True)
    @NETNS
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def set_add(name, elements, netns, as_json):
        """Add ELEMENTS (addresses/CIDRs, or ports/ranges a-b) to set NAME live, in every running hook that
        has it. A bad or already present element: nothing changes."""
        _set_edit(name, elements, netns, as_json, add=True)

    @set_group.command("del")
    @click.argument("name")
    @click.argument("elements", nargs=-1, required=True)
    @NETNS
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def set_del(name, elements, netns, as_json):
        """Delete ELEMENTS from set NAME live. An element not in the set: nothing changes."""
        _set_edit(name, elements, netns, as_json, add=False)

    @app.command("rules")
    @click.option("--rule", "names", multiple=True, metavar="NAME",
                  help="Only this rule (repeat for more; `(default)` is the default).")
    @click.option("--reset", is_flag=True, help="Zero the counters shown (all, or --rule's), as `nft reset "
                  "counters`: the values printed are those before.")
    @_running_hooks
    def rules_cmd(names, reset, dev, hook, netns, as_json):
        """The running rules, in order, with their counters (packets, bytes)."""
        from bpfgate import policyctl

        tables = policyctl.rule_tables(dev, netns=netns, hook=hook, names=names or None, reset=reset)
        if reset and not any(t.shown for t in tables):   # as `policy export`: nothing to reset is a not-found
            from bpfgate.errors import NotFound

            raise NotFound("reset counters", "no bpfgate policy is running" + (f" in {netns}" if netns else ""))
        if as_json:   # straight from the columns: no row objects at 100k rules
            term.print_json_text(policyctl.rules_json(tables, indent=not term.json_compact()))
            return
        rows = [r for t in tables for r in t.rows()]
        if _printed_as_json_or_none(rows, as_json, netns):
            return
        if reset:
            term.info(f"counters of {len(rows)} rule(s) reset; the values before:")
        opts = lambda r: " ".join([f"{k}={v}" for k, v in r.extra.items()]
                                  + ([f"owner={r.owner}"] if r.owner else []))
        comments = any(r.comment for r in rows)   # the column only when a rule has one
        term.table(None, ["dev", "hook", "#", "rule", "action", "match", "options", "packets", "bytes"]
                   + (["comment"] if comments else []),
                   [[r.dev, r.hook, "" if r.position is None else r.position, r.name, r.action, _short_lists(r.match),
                     opts(r), r.packets, r.bytes] + ([r.comment] if comments else []) for r in rows])

    @app.group("policy")
    def policy_group():
        """The running policy as a whole."""

    @policy_group.command("export")
    @click.option("--dev", help="Only this interface (or cgroup path).")
    @click.option("-o", "--output", type=UserPath(dir_okay=False, writable=True), help="Write to a file.")
    @NETNS
    @click.option("--json", "as_json", is_flag=True, help="The same data as JSON instead of YAML.")
    def export_cmd(dev, output, netns, as_json):
        """The running policy as YAML that `bpfgate apply` turns back into the same state: the policy
        engines, the namespace's steering (a steer: section; not with --dev) and each NAT (nat: documents)."""
        from bpfgate import policyctl

        text = policyctl.export(dev, netns=netns)
        if as_json:
            term.print_json(_docs(text))
            return
        if output:
            _write_file(output, text)
            term.ok(f"policy{' of netns ' + netns if netns else ''} written to {output} at "
                    f"{time.strftime('%H:%M:%S')}" + (f" (apply it with --netns {netns})" if netns else ""))
        else:
            click.echo(text, nl=False)

    @policy_group.command("explain", context_settings={"ignore_unknown_options": True})   # `->` is no option
    @click.argument("packet", nargs=-1)
    @click.option("--frame", "frame_hex", metavar="HEX", help="An Ethernet frame's bytes in hex instead of PACKET.")
    @click.option("--file", "policy_file", metavar="FILE", help="Explain with this policy file instead of the "
                  "running policy (`-` for stdin).")
    @_running_hooks
    def explain_cmd(packet, frame_hex, policy_file, dev, hook, netns, as_json):
        """Which rule decides PACKET at each hook, and why. PACKET: PROTOCOL SRC -> DST [options], e.g.
        `tcp 198.18.0.1:1234 -> 198.18.0.2:80 syn`, `udp [fd00::1]:5353 -> [fd00::2]:53 vlan 100`,
        `icmp 198.18.0.1 -> 198.18.0.2 type 8 code 0 ct established`. Options: TCP flags (syn, ack,
        "syn,ack" ...), type N, code N, vlan N, ct new|established|related|invalid, fragment first|later;
        without ct, the first packet of a flow. Quote PACKET in a shell: it reads `>` as a redirection."""
        from bpfgate import policyctl
        from bpfgate.errors import PacketError
        from bpfgate.policyctl.explain import describe, parse_frame, parse_packet

        if bool(packet) == bool(frame_hex):
            raise PacketError(" ".join(packet), "", "give a packet description or --frame HEX (one of them)")
        pkt = parse_frame(frame_hex) if frame_hex else parse_packet(" ".join(packet))
        rows = policyctl.explain(pkt, netns=netns, dev=dev, hook=hook, file=policy_file)
        if not rows:   # as `policy classifier`: no policy, nothing decides the packet
            from bpfgate.errors import NotFound

            if policy_file:
                raise NotFound("explain a packet", "the policy file has no hook" + (f" {hook}" if hook else "")
                               + (f" on {dev}" if dev else ""))
            raise NotFound("explain a packet", "no bpfgate policy is running" + (f" in {netns}" if netns else ""),
                           hint="or explain a policy file with --file")
        if as_json:
            term.print_json({"packet": describe(pkt), "hooks": [r.to_dict() for r in rows]})
            return
        seen = describe(pkt)
        term.info("packet: " + " ".join(f"{k}={v}" for k, v in seen.items() if v is not None))
        for r in rows:
            click.echo(r.line())

    @policy_group.command("classifier")
    @_running_hooks
    def classifier_cmd(dev, hook, netns, as_json):
        """What classifying a packet costs per hook: shapes (hash lookups per packet, worst case), entries,
        stage 0 prefix classes."""
        from bpfgate import policyctl

        reports = policyctl.classifier(dev, netns=netns, hook=hook)
        if not reports:   # as `policy export`: there is no classifier to describe
            from bpfgate.errors import NotFound

            raise NotFound("read the classifier", "no bpfgate policy is running" + (f" in {netns}" if netns else ""))
        if _printed_as_json_or_none(reports, as_json, netns):
            return
        for r in reports:
            term.info(r.summary())
            term.table(None, ["#", "fields", "entries"],
                       [[i, s.fields, s.entries] for i, s in enumerate(r.shapes, 1)])
            for n in r.negations:
                term.info(f"  {n.line()}")

    @policy_group.command("remove")
    @_running_hooks
    def remove_cmd(dev, hook, netns, as_json):
        """Detach running policies (all of them in the namespace unless --dev/--hook)."""
        from bpfgate import policyctl

        gone = policyctl.remove(dev, hook, netns=netns)
        if as_json:
            term.print_json([{"dev": d, "hook": h.value} for d, h in gone])
        elif not gone:
            term.info("no bpfgate policy is running" + (f" in {netns}" if netns else ""))
        for d, h in [] if as_json else gone:
            term.ok(f"{d} {h.value}: policy detached")


def _write_file(path: str, text: str) -> None:
    from bpfgate.errors import from_errno

    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise from_errno(f"write {path}", e.errno or 5) from None


def _docs(text: str) -> list:
    import yaml

    return [d for d in yaml.safe_load_all(text) if d]
