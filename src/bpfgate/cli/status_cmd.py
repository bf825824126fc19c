"""`bpfgate status` and `bpfgate detach`."""

from __future__ import annotations

import os

import click

from bpfgate import attach, status
from bpfgate.cli import term
from bpfgate.cli.params import Seconds
from bpfgate.errors import NotFound
from bpfgate.kernel import caps, netlink
from bpfgate.kernel import netns as netns_


def _netns_list(netns: str | None, all_netns: bool) -> list[str | None]:
    if all_netns:
        return status.all_netns()
    return [netns]


def _print_removed(done: list[str], as_json: bool) -> None:
    if as_json:
        term.print_json({"removed": done})
        return
    if not done:
        term.info("nothing of bpfgate's is attached there")
    for line in done:
        term.info(f"removed {line}")


def register(app: click.Group) -> None:
    @app.command("status")
    @click.option("--netns", help="Look inside this named network namespace instead of the current one.")
    @click.option("--all-netns", is_flag=True, help="The current namespace and every named one (and what "
                  "bpfgate still holds for namespaces deleted since: stale, `detach --all-netns` removes it).")
    @click.option("--stats", "stats_window", type=Seconds(min=0), default=0.0, metavar="SECONDS",
                  help="Enable run-time stats for SECONDS first, so run_cnt/run_time_ns show live traffic.")
    @click.option("--no-cgroups", is_flag=True, help="Skip the cgroup v2 tree walk.")
    @click.option("--ours", is_flag=True, help="Only bpfgate's attachments.")
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def status_cmd(netns, all_netns, stats_window, no_cgroups, ours, as_json):
        """List every BPF attachment: tc filters, TCX, XDP, cgroups, with run stats."""
        caps.require("list BPF attachments", caps.CAP_BPF, caps.CAP_NET_ADMIN, caps.CAP_SYS_ADMIN)
        entries = status.collect(_netns_list(netns, all_netns), cgroups=not no_cgroups,
                                 stats_window=stats_window, gone=all_netns)
        if ours:
            entries = [e for e in entries if e.bpfgate]
        if as_json:
            term.print_json({"attachments": [e.to_dict() for e in entries]})
            return
        if not entries:
            term.info("no BPF attachments found")
            return
        rows = []
        for e in entries:
            d = e.details
            if "stale" in d:
                detail = f"stale {d['stale']}"
            elif e.hook.startswith("tc-"):
                detail = f"handle {d['handle']} prio {d['priority']}{' da' if d.get('direct_action') else ''}"
            else:
                detail = d.get("mode", "")
            rows.append([e.netns or "-", e.target, e.hook, e.prog_id, e.prog_name, e.tag, detail,
                         e.run_cnt, e.run_time_ns, f"{e.avg_ns:.0f}" if e.avg_ns else "",
                         (e.owner or "yes") if e.bpfgate else ""])
        # at 80 columns: what identifies an attachment and whether it runs; the rest is in --json
        optional = ["tag", "run_time_ns", "details"] + (["netns"] if len({e.netns for e in entries}) == 1 else [])
        term.table(None, ["netns", "target", "hook", "id", "name", "tag", "details", "run_cnt",
                          "run_time_ns", "avg_ns", "bpfgate"], rows, optional=optional)

    @app.command("detach")
    @click.option("--dev", help="Only this interface.")
    @click.option("--cgroup", "cgroup_path", help="Only attachments to this cgroup v2 directory.")
    @click.option("--hook", type=click.Choice(attach.HOOKS), help="Only this hook.")
    @click.option("--netns", help="In this named network namespace (default: the current one).")
    @click.option("--all-netns", is_flag=True, help="In every namespace.")
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def detach_cmd(dev, cgroup_path, hook, netns, all_netns, as_json):
        """Remove bpfgate's own attachments with their pins and state (filters, links, XDP, cgroup, sockmap
        and tracepoint programs, a clsact bpfgate created)."""
        caps.require("detach", caps.CAP_BPF, caps.CAP_NET_ADMIN, caps.CAP_SYS_ADMIN)
        if cgroup_path:
            done = attach.detach_matching(hook=hook, target=os.path.abspath(cgroup_path), any_netns=True)
            if not done and not os.path.isdir(cgroup_path):   # a typo, not a clean cgroup
                raise NotFound("detach", f"no such cgroup directory {cgroup_path!r}")
            if as_json:
                term.print_json({"removed": done})
            elif not done:
                term.info("nothing of bpfgate's is attached there")
            for line in done if not as_json else []:
                term.info(f"removed {line}")
            return
        done = attach.detach_matching(dev, hook, netns, any_netns=all_netns)
        if netns is not None and not all_netns and not netns_.exists(netns):
            # the namespace went away with its devices: its records, pins and state went just above
            if not done:
                netns_.require("detach", netns)   # a typo, not a namespace bpfgate knew: NotFound
            _print_removed(done, as_json)
            return
        # bg_* programs attached with no record (a crashed run): ours to remove too
        for e in status.orphans(status.collect(_netns_list(netns, all_netns), cgroups=False)):
            if (dev is None or e.target == dev) and (hook is None or e.hook == hook):
                what = status.detach_orphan(e)
                if what:
                    done.append(what)
        if not done and dev is not None and not all_netns:
            netlink.ifindex(dev, netns)   # a typo, not a clean interface: NotFound (a removed one's records went above)
        _print_removed(done, as_json)
