"""`bpfgate syn`: live SYN counts per interface and top sources at XDP, with optional flood blocking."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds
from bpfgate.cli.events_cmd import (
    DURATION_HELP,
    dev_options,
    emit,
    exit_on_signals,
    flood_event,
    human_line,
    open_syn,
    pump,
)


class Snapshot:
    """Counters now and rates since the previous snapshot (per interface and per source)."""

    def __init__(self, syn: Any, clock: Any, top: int):
        self.syn, self.clock, self.top = syn, clock, top
        self._prev_t: float | None = None
        self._prev: dict[Any, int] = {}

    def take(self) -> dict:
        now_mono = time.monotonic_ns()
        t = now_mono / 1e9
        dt = None if self._prev_t is None else t - self._prev_t
        counts: dict[Any, int] = {}

        def rate(key: Any, value: int) -> float | None:
            counts[key] = value
            if dt is None or dt <= 0:
                return None
            return round((value - self._prev.get(key, 0)) / dt, 1)

        names = self.syn.interfaces
        ifaces = [{"interface": names.get(i, str(i)), "ifindex": i, "syns": tot.syns,
                   "syn_rate": rate(("if", i), tot.syns), "blocked": tot.blocked}
                  for i, tot in sorted(self.syn.totals().items())]
        top = [{"interface": names.get(s.ifindex, str(s.ifindex)), "source": s.source, "syns": s.syns,
                "rate": rate(("src", s.ifindex, s.source), s.syns)} for s in self.syn.top(self.top)]
        blocks = [{"source": b.source, "until": self.clock.iso(b.until_ns)} for b in self.syn.blocks()]
        self._prev, self._prev_t = counts, t
        return {"type": "syn_stats", "time": self.clock.iso(now_mono), "epoch": round(self.clock.epoch(now_mono), 6),
                "interfaces": ifaces, "top": top, "blocked_sources": blocks}


def _renderable(snap: dict, lost: int) -> Any:
    from rich.console import Group
    from rich.table import Table

    def fmt(v: Any) -> str:
        return "-" if v is None else str(v)

    ifs = Table(title=f"SYNs at XDP  {snap['time'][11:19]}", title_justify="left", header_style="bold")
    for c in ("interface", "SYNs", "SYN/s", "blocked"):
        ifs.add_column(c, justify="left" if c == "interface" else "right")
    for i in snap["interfaces"]:
        ifs.add_row(i["interface"], str(i["syns"]), fmt(i["syn_rate"]), str(i["blocked"]))
    top = Table(title="top sources", title_justify="left", header_style="bold")
    for c in ("source", "interface", "SYNs", "SYN/s", "blocked until"):
        top.add_column(c, justify="right" if c in ("SYNs", "SYN/s") else "left")
    until = {b["source"]: b["until"][11:19] for b in snap["blocked_sources"]}
    for s in snap["top"]:
        top.add_row(s["source"], s["interface"], str(s["syns"]), fmt(s["rate"]), until.get(s["source"], ""))
    parts: list[Any] = [ifs, top]
    if lost:
        parts.append(f"[red]{lost} flood events lost[/red]")
    return Group(*parts)


def register(app: click.Group) -> None:
    @app.command("syn")
    @dev_options
    @click.option("--top", "top_n", type=click.IntRange(min=0), default=10, show_default=True,
                  help="how many of the busiest sources to show")
    @click.option("--rate", type=click.IntRange(min=0), default=0, show_default=True,
                  help="SYNs/s from one source that count as a flood and raise an event (0: off)")
    @click.option("--block", type=Seconds(min=0), default=0.0, metavar="SECONDS",
                  help="drop a flooding source for this long, then release it (needs --rate): with a temporary "
                       "rule `syn-flood-ADDR` in the policy engine when one is attached at IF's XDP or tc-ingress "
                       "(removed when it expires or this command ends), else in the XDP block list")
    @click.option("--interval", type=Seconds(min=0.05), default=1.0, show_default=True,
                  help="seconds between refreshes")
    @click.option("--duration", type=Seconds(min=0), default=None, help=DURATION_HELP)
    @click.option("--json", "as_json", is_flag=True,
                  help="JSON lines: a syn_stats object per interval, syn_flood/syn_unblock events as they happen")
    def syn(devs, netns, top_n, rate, block, interval, duration, as_json):
        """Count SYNs (SYN without ACK) per interface and source at XDP; detect and block SYN floods."""
        from bpfgate.errors import BadInput
        from bpfgate.inspect.events import EventStream

        if block and not rate:
            raise BadInput("bpfgate syn", "--block needs --rate")
        with exit_on_signals(), ExitStack() as stack:
            syn = open_syn(stack, devs, netns, rate=rate, block=block)
            stream = stack.enter_context(EventStream([syn.event_source()]))
            snap = Snapshot(syn, stream.clock, top_n)
            snap.take()  # rates start from here
            live = None
            if not as_json:
                from rich.live import Live

                live = stack.enter_context(Live(_renderable(snap.take(), 0), console=term.out,
                                                auto_refresh=False, transient=False))

            blocked_before: set[str] = set()

            def on_record(rec: Any) -> bool:
                ev = flood_event(syn, stream.describe(rec))
                if ev.get("type") == "syn_flood" and ev.get("blocked"):
                    # released at the next tick even if the block ends before it (a slow machine's ticks
                    # can be further apart than a short --block)
                    blocked_before.add(ev["src"])
                if as_json:
                    emit(ev, True)
                else:
                    live.console.print(human_line(ev), markup=False)  # above the live table
                return False

            def tick() -> None:
                nonlocal blocked_before
                syn.sweep()  # housekeeping; the datapath also drops expired entries it meets
                blocked_now = {b.source for b in syn.blocks()}
                for src in sorted(blocked_before - blocked_now):  # released, whoever removed the entry
                    if as_json:
                        now = time.monotonic_ns()
                        term.print_json_line({"type": "syn_unblock", "time": stream.clock.iso(now),
                                              "epoch": round(stream.clock.epoch(now), 6), "source": src})
                    else:
                        live.console.print(f"{stream.clock.iso(time.monotonic_ns())[11:26]} released {src}",
                                           markup=False)
                blocked_before = blocked_now
                for ev in stream.loss_events():
                    if as_json:
                        emit(ev, True)
                s = snap.take()
                if as_json:
                    term.print_json_line(s)
                else:
                    live.update(_renderable(s, stream.lost), refresh=True)

            try:
                pump(stream, duration, on_record, tick, every=interval)
            finally:
                if as_json:
                    term.print_json_line(snap.take())
