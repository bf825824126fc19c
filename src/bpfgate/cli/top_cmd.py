"""`bpfgate top`: live table of the busiest flows on an interface (q or Ctrl-C quits)."""

from __future__ import annotations

import os
import time

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds
from bpfgate.errors import BpfgateError
from bpfgate.inspect.flows import SORT_KEYS, FlowMonitor, pin_dir
from bpfgate.inspect.top import Top, run_live
from bpfgate.signals import sigterm_as_interrupt


def _syn_counter(dev: str, netns: str | None, top: Top):
    """The optional SYN panel: part of the view only if the SYN counter can attach (XDP may be taken)."""
    try:
        from bpfgate.inspect.syn import SynCounter
    except ImportError:
        top.notes.append("SYN counter not available in this build")
        return None
    try:
        syn = SynCounter()
    except BpfgateError as e:
        top.notes.append(f"no SYN panel: {e}")
        return None
    try:
        syn.attach(dev, netns)
    except BpfgateError as e:
        syn.close()
        top.notes.append(f"no SYN panel: {e}")
        return None
    return syn


def register(app: click.Group) -> None:
    @app.command("top")
    @click.option("--dev", required=True, help="Interface to watch (ingress and egress).")
    @click.option("--netns", help="The interface is in this named network namespace.")
    @click.option("--interval", type=Seconds(0.1, 60), default=1.0, show_default=True, metavar="SECONDS")
    @click.option("--sort", type=click.Choice(SORT_KEYS), default="bytes", show_default=True)
    @click.option("--top", "top_n", type=click.IntRange(min=1), default=20, show_default=True)
    @click.option("--syn", is_flag=True, help="Also count SYNs at XDP (needs the XDP hook of DEV free).")
    @click.option("--rules/--no-rules", "with_rules", default=True, show_default=True,
                  help="Panel of policy rule hits and drops, when policy engines are attached on DEV.")
    @click.option("--once", is_flag=True, help="Count for one interval, print one frame, exit.")
    @click.option("--json", "as_json", is_flag=True, help="Count for one interval, print one snapshot as JSON.")
    def top_cmd(dev, netns, interval, sort, top_n, syn, with_rules, once, as_json):
        """Live view of the top flows on DEV: packets, bytes, rates, TCP flags, recent flow ends."""
        # accounting left running by `bpfgate flows --keep` is read in place; else attach for this view
        pinned = os.path.isdir(pin_dir(dev, netns))
        with sigterm_as_interrupt(), FlowMonitor(dev, netns_name=netns, pinned=pinned) as mon:
            view = Top(mon, sort=sort, n=top_n, title=f"bpfgate top: {dev}" + (f" (netns {netns})" if netns else ""))
            counter = view.syn = _syn_counter(dev, netns, view) if syn else None
            reader = None
            if with_rules:
                from bpfgate.inspect.rules import RuleReader

                # the panel shows while engines are attached on DEV, including ones attached after the start
                reader = view.rules = RuleReader(netns, [dev])
            try:
                if once or as_json:
                    view.snapshot()  # rate baseline
                    try:
                        time.sleep(interval)
                    except KeyboardInterrupt:
                        pass
                    snap = view.snapshot()
                    if as_json:
                        term.print_json(snap.to_json(mon.clock))
                    else:
                        term.out.print(view.render(snap))
                    return
                run_live(view, interval, term.out)
            finally:
                if counter is not None:
                    counter.close()
                if reader is not None:
                    reader.close()
