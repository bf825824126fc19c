"""`bpfgate flows`: per-flow packets/bytes on an interface, counted in the kernel for a while."""

from __future__ import annotations

import os
import time

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds
from bpfgate.errors import NotSupported
from bpfgate.inspect.events import tcp_flags_str
from bpfgate.inspect.flows import SORT_KEYS, Flow, FlowMonitor, pin_dir, top_flows
from bpfgate.inspect.top import endpoint, human
from bpfgate.signals import sigterm_as_interrupt


def flow_row(f: Flow, now_ns: int) -> list:
    return [f.protocol, endpoint(f.src, f.sport), endpoint(f.dst, f.dport), f.direction[:2],
            f.interface or f.ifindex, f"{f.packets_orig}/{f.packets_reply}",
            f"{human(f.bytes_orig)}/{human(f.bytes_reply)}", tcp_flags_str(f.tcp_flags),
            f"{(now_ns - f.last_ns) / 1e9:.1f}s", f.ended or ""]


# source -> destination: the flow's originator first; "dir": the hook that saw its first packet; packets and
# bytes: originator's direction / reply direction (one conntrack entry per connection)
FLOW_COLUMNS = ["proto", "source", "destination", "dir", "if", "packets out/back", "bytes out/back", "tcp flags",
                "idle", "ended"]


def register(app: click.Group) -> None:
    @app.command("flows")
    @click.option("--dev", required=True, help="Interface to watch (ingress and egress).")
    @click.option("--netns", help="The interface is in this named network namespace.")
    @click.option("--duration", type=Seconds(min=0), metavar="SECONDS",
                  help="How long to count before printing [default: 3; 0 when reading accounting left running].")
    @click.option("--sort", type=click.Choice(SORT_KEYS), default="bytes", show_default=True)
    @click.option("--top", "top_n", type=click.IntRange(min=1), help="Only the first N flows.")
    @click.option("--direction", type=click.Choice(["ingress", "egress", "both"]), default="both", show_default=True)
    @click.option("--max-flows", type=click.IntRange(min=16), default=65536, show_default=True,
                  help="Size of the kernel's flow table (LRU: the least recently used go first, counted).")
    @click.option("--keep", is_flag=True, help="Leave the accounting running (pinned) and exit; later calls read it.")
    @click.option("--stop", is_flag=True, help="Stop accounting left running by --keep.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document: flows, ended flows, stats.")
    def flows_cmd(dev, netns, duration, sort, top_n, direction, max_flows, keep, stop, as_json):
        """Count flows (5-tuple, both families) on DEV for a while, then print the top ones.

        Flows that ended while counting (TCP FIN/RST) are listed once with their final counters;
        entries the full table dropped are counted as evicted. With --keep the accounting stays
        attached after the command exits, and `bpfgate flows --dev DEV` reads it at once."""
        if stop:
            FlowMonitor.stop(dev, netns)
            term.err.print(f"flow accounting on {dev} stopped", markup=False)
            return
        if keep:  # what stays attached is a pinned TCX link: without TCX, refused before anything attaches
            try:
                mon = FlowMonitor(dev, netns_name=netns, direction=direction, max_flows=max_flows, method="tcx")
            except NotSupported as e:
                raise NotSupported("flows --keep", f"the accounting stays attached through pinned TCX links: {e.cause}",
                                   min_kernel="6.6") from None
            with mon:
                where = mon.keep()
            again = f"bpfgate flows --dev {dev}" + (f" --netns {netns}" if netns else "")
            term.err.print(f"flow accounting left running on {dev} ({where}); read it with `{again}`, stop it "
                           f"with `{again} --stop`", markup=False)
            return
        pinned = os.path.isdir(pin_dir(dev, netns))
        if duration is None:
            duration = 0.0 if pinned else 3.0
        ended = []
        with sigterm_as_interrupt(), \
                FlowMonitor(dev, netns_name=netns, direction=direction, max_flows=max_flows, pinned=pinned) as mon:
            deadline = time.monotonic() + max(duration, 0)
            try:
                while (left := deadline - time.monotonic()) > 0:
                    ended.extend(mon.poll_ended(int(min(left, 0.2) * 1000)))
            except KeyboardInterrupt:
                pass  # Ctrl-C or SIGTERM: print what was counted so far
            ended.extend(mon.poll_ended())
            entries, stats = mon.read()
            shown = [mon.decode(k, v) for k, v in top_flows(entries, sort, top_n, raw=True)]
            clock = mon.clock
        if as_json:
            term.print_json({"interface": dev, "netns": netns, "duration": duration, "sort": sort, "kept": pinned,
                             "flows": [f.to_json(clock) for f in shown],
                             "ended": [e.to_json(clock) for e in ended], "stats": stats.to_json()})
            return
        now = time.monotonic_ns()
        term.table(f"flows on {dev} ({len(shown)} of {len(entries)}, by {sort})", FLOW_COLUMNS,
                   [flow_row(f, now) for f in shown])
        if ended:
            term.table("ended while counting", FLOW_COLUMNS[:-1] + ["reason"],
                       [flow_row(e.flow, now)[:-1] + [e.reason] for e in ended])
        term.info(f"live {stats.live}, created {stats.created}, ended {stats.ended}, expired {stats.expired}, "
                  f"evicted {stats.evicted}, unparsed packets {stats.unparsed}, flow-end records lost "
                  f"{stats.events_lost}")
