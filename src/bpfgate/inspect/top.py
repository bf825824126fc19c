"""`bpfgate top`: a refreshing terminal view of the busiest flows (and SYN rates when asked).

    with FlowMonitor("eth0") as mon:
        top = Top(mon, sort="bytes", n=20)
        run_live(top, interval=1.0)          # q or Ctrl-C quits; the terminal is restored either way

A snapshot is one batched read of the flow table plus the flow ends since the previous one; rates are
the difference between two snapshots. Rendering is a pure function of a snapshot (testable, `--once`).
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bpfgate.inspect.events import tcp_flags_str
from bpfgate.inspect.flows import Flow, FlowEnd, FlowMonitor, FlowStats, top_flows

RECENT_ENDS = 5


def flow_id(f: Flow) -> tuple:
    return (f.family, f.proto, f.src, f.sport, f.dst, f.dport, f.direction, f.ifindex)


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def human(n: float, unit: str = "B") -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f} {prefix}{unit}" if not prefix else f"{n:.1f} {prefix}{unit}"
        n /= 1000
    return str(n)


@dataclass
class SynView:
    total: int
    per_second: float
    top: list[tuple[str, int]]  # (source, SYNs)


@dataclass
class RuleRow:
    hook: str
    rule: str
    action: str
    packets: int
    bytes: int
    per_second: float  # packets/s since the previous snapshot


@dataclass
class RulesView:
    rows: list[RuleRow]      # the busiest rules (by packets), across the interface's engines
    total_rules: int
    drops: int               # packets of drop rules (the default rule when it denies)
    drops_per_second: float


@dataclass
class Snapshot:
    mono_ns: int
    interval_s: float  # since the previous snapshot (0: the first one)
    flows: list[Flow]  # the top n
    rates: dict[tuple, tuple[float, float]]  # flow_id -> (packets/s, bytes/s)
    total_flows: int
    ended: list[FlowEnd]  # the most recent ends
    stats: FlowStats
    syn: SynView | None = None
    notes: list[str] = field(default_factory=list)
    rules: RulesView | None = None

    def to_json(self, clock: Any) -> dict:
        def flow(f: Flow) -> dict:
            pps, bps = self.rates.get(flow_id(f), (0.0, 0.0))
            return {**f.to_json(clock), "packets_per_s": round(pps, 1), "bytes_per_s": round(bps, 1)}

        out = {"time": clock.iso(self.mono_ns), "interval_s": round(self.interval_s, 3), "total_flows": self.total_flows,
               "flows": [flow(f) for f in self.flows], "ended": [e.to_json(clock) for e in self.ended],
               "stats": self.stats.to_json(), "notes": self.notes}
        if self.syn:
            out["syn"] = {"total": self.syn.total, "per_second": round(self.syn.per_second, 1),
                          "top": [{"source": s, "syns": n} for s, n in self.syn.top]}
        if self.rules:
            out["rules"] = {"total_rules": self.rules.total_rules, "drops": self.rules.drops,
                            "drops_per_second": round(self.rules.drops_per_second, 1),
                            "top": [{"hook": r.hook, "rule": r.rule, "action": r.action, "packets": r.packets,
                                     "bytes": r.bytes, "packets_per_s": round(r.per_second, 1)}
                                    for r in self.rules.rows]}
        return out


class Top:
    """Snapshots of one FlowMonitor (and optionally a SynCounter), and their rendering."""

    def __init__(self, monitor: FlowMonitor, *, sort: str = "bytes", n: int = 20, syn: Any = None, title: str = "",
                 rules: Any = None, rule_rows: int = 10):
        """rules: a bpfgate.inspect.rules.RuleReader (the rule hits and drops panel), or None."""
        self.monitor, self.sort, self.n, self.syn = monitor, sort, n, syn
        self.rules, self.rule_rows = rules, rule_rows
        self._prev_rules: dict[tuple[str, str], int] = {}
        self._prev_drops = 0
        self.title = title or f"bpfgate top: {monitor.dev}"
        self._prev: dict[tuple, tuple[int, int]] = {}
        self._prev_ns = 0
        self._prev_syns = 0
        self._ended: deque[FlowEnd] = deque(maxlen=RECENT_ENDS)
        self._base: FlowStats | None = None   # the table's counters when top started (it may be shared)
        self.notes: list[str] = []

    def snapshot(self) -> Snapshot:
        """One batched read; rates for every flow from raw counters, only the top n decoded."""
        self._ended.extend(self.monitor.poll_ended())
        entries, stats = self.monitor.read()
        if self._base is None:
            self._base = stats
        now = time.monotonic_ns()
        dt = (now - self._prev_ns) / 1e9 if self._prev_ns else 0.0
        current = {bytes(k): (sum(v.packets), sum(v.bytes)) for k, v in entries}  # both directions
        shown = [(bytes(k), self.monitor.decode(k, v)) for k, v in top_flows(entries, self.sort, self.n, raw=True)]
        rates = {}
        for raw, f in shown:
            # a flow new since the last frame counts from zero; on the first frame there is no rate yet
            p0, b0 = self._prev.get(raw, (0, 0) if self._prev_ns and f.first_ns >= self._prev_ns else (f.packets, f.bytes))
            rates[flow_id(f)] = ((f.packets - p0) / dt, (f.bytes - b0) / dt) if dt > 0 else (0.0, 0.0)
        self._prev, self._prev_ns = current, now
        snap = Snapshot(now, dt, [f for _, f in shown], rates, len(entries), list(self._ended),
                        stats, notes=list(self.notes))
        if self.syn is not None:
            total = sum(t.syns for t in self.syn.totals().values())
            rate = (total - self._prev_syns) / dt if dt > 0 else 0.0
            self._prev_syns = total
            snap.syn = SynView(total, rate, [(s.source, s.syns) for s in self.syn.top(5)])
        if self.rules is not None:
            snap.rules = self._rules_view(dt)
        return snap

    def _rules_view(self, dt: float) -> RulesView | None:
        """None while no engine is attached (no panel)."""
        hits = self.rules.read()
        if not hits:
            self._prev_rules, self._prev_drops = {}, 0
            return None
        cur = {(h.hook, h.rule): h.packets for h in hits}
        rows = []
        for h in sorted(hits, key=lambda h: (-h.packets, h.hook, h.rule))[: self.rule_rows]:
            prev = self._prev_rules.get((h.hook, h.rule), h.packets if not dt else 0)
            rows.append(RuleRow(h.hook, h.rule, h.action, h.packets, h.bytes, (h.packets - prev) / dt if dt > 0 else 0.0))
        drops = sum(h.packets for h in hits if h.action == "drop")
        drate = (drops - self._prev_drops) / dt if dt > 0 else 0.0
        self._prev_rules, self._prev_drops = cur, drops
        return RulesView(rows, len(hits), drops, drate)

    def render(self, snap: Snapshot) -> Group:
        now = snap.mono_ns
        t = Table(title=f"{self.title}  ({len(snap.flows)} of {snap.total_flows} flows, by {self.sort})",
                  title_justify="left", header_style="bold", expand=False)
        for col, just in (("proto", "left"), ("source", "left"), ("destination", "left"), ("dir", "left"),
                          ("packets", "right"), ("bytes", "right"), ("pkt/s", "right"), ("bit/s", "right"),
                          ("flags", "left"), ("idle", "right")):
            t.add_column(col, justify=just, overflow="fold")
        for f in snap.flows:
            pps, bps = snap.rates.get(flow_id(f), (0.0, 0.0))
            cells = (f.protocol, endpoint(f.src, f.sport), endpoint(f.dst, f.dport), f.direction[:2],
                     str(f.packets), human(f.bytes), f"{pps:.0f}", human(bps * 8, "b"),
                     tcp_flags_str(f.tcp_flags) + (f" {f.ended}" if f.ended else ""), f"{(now - f.last_ns) / 1e9:.1f}s")
            t.add_row(*(Text(c) for c in cells))  # Text: "[fd00::1]:80" is an address, not Rich markup
        parts: list[Any] = [t]
        s, b = snap.stats, self._base or snap.stats
        # the conntrack table outlives top (an engine or `flows --keep` shares it): counts since top started
        parts.append(Text(f"flows live {s.live}; since start: created {s.created - b.created}  ended "
                          f"{s.ended - b.ended}  expired {s.expired - b.expired}  evicted {s.evicted - b.evicted}  "
                          f"unparsed {s.unparsed - b.unparsed}  records lost {s.events_lost - b.events_lost}",
                          style="dim"))
        if snap.ended:
            parts.append(Text("recently ended: " + "; ".join(
                f"{e.flow.protocol} {endpoint(e.flow.src, e.flow.sport)} -> {endpoint(e.flow.dst, e.flow.dport)} "
                f"{e.reason} ({human(e.flow.bytes)})" for e in snap.ended), style="dim"))
        if snap.syn is not None:
            top = ", ".join(f"{src} {n}" for src, n in snap.syn.top) or "-"
            parts.append(Text(f"SYN total {snap.syn.total}  {snap.syn.per_second:.0f}/s  top sources: {top}"))
        if snap.rules is not None:
            r = snap.rules
            rt = Table(title=f"policy rules  ({len(r.rows)} of {r.total_rules}, by packets)  drops {r.drops}  "
                             f"{r.drops_per_second:.0f}/s", title_justify="left", header_style="bold", expand=False)
            for col, just in (("hook", "left"), ("rule", "left"), ("action", "left"), ("packets", "right"),
                              ("bytes", "right"), ("pkt/s", "right")):
                rt.add_column(col, justify=just, overflow="fold")
            for row in r.rows:
                style = "red" if row.action == "drop" else None
                rt.add_row(*(Text(c, style=style) for c in (row.hook, row.rule, row.action, str(row.packets),
                                                             human(row.bytes), f"{row.per_second:.0f}")))
            parts.append(rt)
        for note in snap.notes:
            parts.append(Text(note, style="yellow"))
        return Group(*parts)


def _keys_ready(fd: int | None, timeout: float) -> str:
    """Wait up to `timeout` for a key on the terminal; '' if none (or no terminal)."""
    if fd is None:
        time.sleep(timeout)
        return ""
    r, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 32).decode(errors="replace") if r else ""


def run_live(top: Top, interval: float = 1.0, console: Console | None = None, max_frames: int | None = None) -> None:
    """Refresh every `interval` s until q, Ctrl-C or `max_frames`. The terminal's mode is restored on
    every way out; a resize only changes the next frame's width (Rich reads the size per frame)."""
    console = console or Console()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    frames = 0
    try:
        if fd is not None:
            tty.setcbreak(fd)  # keys arrive one by one, no echo; Ctrl-C still raises KeyboardInterrupt
        top.snapshot()  # rate baseline
        with Live(console=console, auto_refresh=False, transient=False, redirect_stderr=False) as live:
            while max_frames is None or frames < max_frames:
                if "q" in _keys_ready(fd, interval).lower():
                    break
                live.update(top.render(top.snapshot()), refresh=True)
                frames += 1
    except KeyboardInterrupt:
        pass
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
