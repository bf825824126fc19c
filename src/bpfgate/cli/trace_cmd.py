"""`bpfgate trace tcp` and `bpfgate trace drops`: live events, one line (or JSON object) each.

Runs until Ctrl-C (or SIGTERM, --duration, --count); every hook is detached on the way out, then a
summary (events, lost) goes to stderr, or as a last JSON object with --json. Lost events are reported
as they happen, never dropped silently.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds
from bpfgate.errors import BpfgateError

_BACKEND = click.Choice(["auto", "tp_btf", "tracepoint"])


def register(app: click.Group) -> None:
    app.add_command(trace)


@click.group()
def trace() -> None:
    """Trace TCP connections (with PIDs) and packet drops (with kernel reasons), from tracepoints."""


def _filter_options(f):
    f = click.option("--netns", "netns", multiple=True, metavar="NAME",
                     help="Only this network namespace (ip netns name, /proc/PID/ns/net, or inode; repeatable). "
                          "Filtered in the kernel.")(f)
    f = click.option("--cgroup", "cgroups", multiple=True, metavar="PATH",
                     help="Only sockets owned by processes of this cgroup v2 (path or id; repeatable).")(f)
    f = click.option("--addr", "addrs", multiple=True, metavar="IP[/LEN]",
                     help="Only flows with this address (or prefix) at either end (repeatable).")(f)
    f = click.option("--port", "ports", multiple=True, metavar="PORT",
                     help="Only flows with this port at either end (repeatable).")(f)
    f = click.option("--pid", "pids", multiple=True, metavar="PID", help="Only this owner PID (repeatable).")(f)
    return f


def _run_options(f):
    f = click.option("--backend", type=_BACKEND, default="auto", show_default=True,
                     help="tp_btf (BTF raw tracepoints), tracepoint (classic, needs tracefs), or auto.")(f)
    f = click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N events.")(f)
    f = click.option("--duration", type=Seconds(min=0, min_open=True), default=None,
                     help="Stop after this many seconds.")(f)
    f = click.option("--json", "as_json", is_flag=True,
                     help="One JSON object per line (keys: bpfgate.trace.format).")(f)
    return f


@trace.command("tcp")
@_run_options
@_filter_options
@click.option("--events", "events", default=None, metavar="LIST",
              help="Comma-separated events to trace (default all): connect, accept, close, connect_failed, "
                   "retransmit, reset_rx, reset_tx. The kernel sends only these: less to consume.")
def trace_tcp(as_json, duration, count, backend, netns, pids, ports, addrs, cgroups, events) -> None:
    """Connect, accept, close (duration, bytes, final state), failed connects with their cause
    (refused, timeout, unreachable), retransmits and resets, each with the socket owner's PID."""
    from bpfgate.trace import Filter, TcpTracer
    from bpfgate.trace.format import TCP_HEADER, tcp_line

    flt = Filter.parse(pids=pids, ports=ports, addrs=addrs, cgroups=cgroups, netns=netns)
    chosen = None if events is None else [e.strip() for e in events.split(",") if e.strip()]
    with TcpTracer(filters=flt, prefer=backend, events=chosen) as tracer:
        _loop(tracer, "tcp", as_json, duration, count, TCP_HEADER, tcp_line, lambda: {})


@trace.command("drops")
@_run_options
@_filter_options
@click.option("--reason", "reasons", multiple=True, metavar="NAME",
              help="Only events with this drop reason (e.g. NO_SOCKET, TC_INGRESS; repeatable). Counts cover all.")
@click.option("--all", "include_unspecified", is_flag=True,
              help="Also show NOT_SPECIFIED drops as events (always counted).")
def trace_drops(as_json, duration, count, backend, netns, pids, ports, addrs, cgroups, reasons,
                include_unspecified) -> None:
    """Packets the kernel dropped (skb:kfree_skb) with the drop reason: per-flow events while running,
    per-reason counts at the end. Drops by a bpfgate TC program name the program."""
    from bpfgate.trace import DropTracer, Filter, TcpTracer
    from bpfgate.trace.format import DROP_HEADER, drop_line

    flt = Filter.parse(pids=pids, ports=ports, addrs=addrs, cgroups=cgroups, netns=netns)
    with ExitStack() as stack:
        # socket owners only (no tcp events): a drop on a socket opened from now on carries its owner's
        # PID; drops are traced without PIDs where that tracepoint is missing
        try:
            owners = stack.enter_context(TcpTracer(events=(), filters=flt, prefer=backend))
        except BpfgateError as e:
            owners = None
            term.err.print(f"bpfgate: warning: drops without PIDs ({e})", markup=False)
        tracer = stack.enter_context(DropTracer(filters=flt, prefer=backend, reasons=reasons,
                                                include_unspecified=include_unspecified, tcp=owners))
        _loop(tracer, "drops", as_json, duration, count, DROP_HEADER, drop_line, lambda: {"counts": tracer.counts()})


@contextmanager
def _stop_requested() -> Iterator[list]:
    """Ctrl-C / SIGTERM set a flag the loop checks between polls (no exception mid-output, so the
    summary counts exactly what was printed); the poll returns early on the signal."""
    stop: list = []
    handler = lambda signum, frame: stop.append(signum)  # noqa: E731
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _loop(tracer, what: str, as_json: bool, duration, count, header: str, line, extra) -> None:
    backends = tracer.backends()
    used = sorted({b["backend"] for b in backends if b["backend"]})
    if as_json:
        term.print_json_line({"type": "trace_started", "trace": what, "backends": backends,
                              "filters": tracer.filters.describe()})
    else:
        term.err.print(f"tracing {what} with {', '.join(used)} ({len(backends) - len(tracer.missing())}/"
                       f"{len(backends)} tracepoints); Ctrl-C to stop", markup=False)
        term.out.print(header, markup=False)
    for m in tracer.missing():
        term.err.print(f"bpfgate: warning: running without {m}", markup=False)
    for m in tracer.degraded():
        term.err.print(f"bpfgate: note: without {m}", markup=False)
    deadline = None if duration is None else time.monotonic() + duration
    printed = [0]
    try:
        _events(tracer, as_json, deadline, count, line, printed)
    except BrokenPipeError:  # `bpfgate trace tcp | head`: the reader is gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    shown = printed[0]
    # Ctrl-C is how a trace normally ends: the caller's `with` detaches everything after this summary
    summary = {"type": "trace_summary", "trace": what, "events": shown, "lost": tracer.lost,
               "submitted": tracer.submitted, **extra()}
    if as_json:
        term.print_json_line(summary)
        return
    term.err.print(f"{shown} events shown, {tracer.lost} lost", markup=False)
    if summary.get("counts") is not None:
        term.table("drops by reason", ("reason", "packets"), summary["counts"].items())


def _events(tracer, as_json: bool, deadline, count, line, shown: list) -> None:
    """Print events until stopped; shown[0] counts exactly the events printed."""
    with _stop_requested() as stop:
        while not stop and (deadline is None or time.monotonic() < deadline) and (count is None or shown[0] < count):
            left = 100 if deadline is None else max(0, min(100, int((deadline - time.monotonic()) * 1000)))
            for ev in tracer.poll(left):
                if ev["type"] == "events_lost":
                    _lost(ev, as_json)
                    continue
                if as_json:
                    term.print_json_line(ev, flush=False)  # one flush per poll below
                else:
                    term.out.print(line(ev), markup=False, highlight=False)
                shown[0] += 1
                if count is not None and shown[0] >= count:
                    break
            if as_json:
                term.flush()


def _lost(ev: dict, as_json: bool) -> None:
    if as_json:
        term.print_json_line(ev)
    else:
        term.err.print(f"bpfgate: warning: {ev['lost']} events lost (the kernel could not hand them over; "
                       f"{ev['lost_total']} in total)", markup=False)
