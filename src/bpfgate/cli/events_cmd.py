"""`bpfgate events`: stream inspection events (connection attempts, SYN floods) as they happen.

Also holds what the inspection commands (events, syn, metrics) share: device options, attaching the
programs, and leaving nothing attached on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds

DURATION_HELP = "stop after this many seconds (default: until Ctrl-C)"


def dev_options(fn: Callable) -> Callable:
    """--dev (repeatable, required) and --netns."""
    fn = click.option("--netns", metavar="NAME", help="the interfaces are in this network namespace")(fn)
    return click.option("--dev", "devs", multiple=True, required=True, metavar="IF",
                        help="interface to watch (repeatable)")(fn)


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGINT/SIGTERM end the command through normal unwinding (so every `finally` detaches what we
    attached); a second signal during cleanup is ignored rather than cutting the cleanup short."""

    def handler(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def open_syn(stack: ExitStack, devs: tuple[str, ...], netns: str | None, *, rate: int, block: float,
             ring_size: int | None = None) -> Any:
    from bpfgate.inspect.syn import SynCounter

    syn = stack.enter_context(SynCounter(rate=rate, block=block, ring_size=ring_size))
    for dev in devs:
        syn.attach(dev, netns)
    if block:
        use_engines(syn, devs, netns)
    return syn


def use_engines(syn: Any, devs: tuple[str, ...], netns: str | None) -> None:
    """Where a policy engine runs at a device's XDP or tc-ingress, floods are blocked by temporary engine
    rules (removed when they expire and when the command ends: syn.close()), not by the XDP block list."""
    from bpfgate.inspect.syn import EngineBlocker, engine_for_blocking

    for dev in devs:
        hook = engine_for_blocking(dev, netns)
        if hook is not None:
            syn.use_engine(EngineBlocker(dev, hook, netns))


def flood_event(syn: Any, ev: dict) -> dict:
    """A syn_flood event after blocking its source through the engine where that applies."""
    if syn is not None and ev.get("type") == "syn_flood" and syn.engine_blockers:
        return syn.on_flood(ev)
    return ev


def open_attempts(stack: ExitStack, devs: tuple[str, ...], netns: str | None, ports: tuple[int, ...],
                  ring_size: int | None = None) -> Any:
    from bpfgate.inspect.attempts import ALL_PORTS, AttemptLog

    log = stack.enter_context(AttemptLog(ports or (ALL_PORTS,), ring_size=ring_size))
    for dev in devs:
        log.attach(dev, netns)
    return log


def pump(stream: Any, duration: float | None, on_record: Callable[[Any], bool] | None,
         tick: Callable[[], None] | None = None, every: float = 0.25) -> None:
    """Poll `stream` until `duration` ends (None: until a signal) or on_record returns True; call
    tick() every `every` seconds (loss reports, live views), whether events arrive or not."""
    now = time.monotonic()
    end = None if duration is None else now + duration
    next_tick = now + every
    while end is None or now < end:
        wait = next_tick - now if end is None else min(next_tick, end) - now
        stream.poll(max(0, int(wait * 1000)))
        for rec in stream.drain():
            if on_record is not None and on_record(rec):
                return
        now = time.monotonic()
        if now >= next_tick:
            if tick is not None:
                tick()
            next_tick = now + every


def human_line(ev: dict) -> str:
    t = ev["time"][11:26]
    if ev["type"] == "conn_attempt":
        return (f"{t} attempt  {ev['interface'] or ev['ifindex']}  {_ep(ev['src'], ev['sport'])} -> "
                f"{_ep(ev['dst'], ev['dport'])}  {ev['flags']}")
    if ev["type"] == "syn_flood":
        action = f"blocked until {ev['block_until'][11:19]}" if ev["blocked"] else "reported"
        if ev.get("blocked_by"):
            action += f" by {ev['blocked_by']}"
        if ev.get("block_error"):
            action = f"NOT blocked: {ev['block_error']}"
        return (f"{t} flood    {ev['interface'] or ev['ifindex']}  {ev['src']}  {ev['window_syns']} SYN/s "
                f"> {ev['rate']}  {action}")
    if ev["type"] == "rule_log":
        return (f"{t} rule     {ev['interface'] or ev['ifindex']} {ev['hook']}  {ev['rule'] or ev['rule_id']} "
                f"{ev['action']}  {_ep(ev['src'] or '-', ev['sport'])} -> {_ep(ev['dst'] or '-', ev['dport'])}  "
                f"proto {ev['proto']} {ev['flags']} len {ev['len']}")
    if ev["type"] == "events_lost":
        return f"{t} LOST     {ev['lost']} events from {ev['source']} (total {ev['lost_total']})"
    return f"{t} {ev['type']}  " + " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("time", "type"))


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def emit(ev: dict, as_json: bool) -> None:
    if as_json:
        term.print_json_line(ev)
    elif ev["type"] == "events_lost":
        term.err.print(human_line(ev), markup=False)
    else:
        term.out.print(human_line(ev), markup=False)
        sys.stdout.flush()


def register(app: click.Group) -> None:
    @app.command("events")
    @dev_options
    @click.option("--port", "ports", type=click.IntRange(0, 65535), multiple=True,
                  help="log SYNs to this destination port (repeatable; default: every port)")
    @click.option("--syn-rate", type=click.IntRange(min=0), default=0, show_default=True,
                  help="also watch SYN floods: SYNs/s from one source that raise an event (0: off)")
    @click.option("--block", type=Seconds(min=0), default=0.0, metavar="SECONDS",
                  help="drop a flooding source at XDP for this long (needs --syn-rate)")
    @click.option("--ring-size", type=int, default=None, metavar="BYTES",
                  help="ring buffer size per program (power of 2, >= page size)")
    @click.option("--duration", type=Seconds(min=0), default=None, help=DURATION_HELP)
    @click.option("--count", type=click.IntRange(min=1), default=None, help="stop after this many events")
    @click.option("--rules/--no-rules", "with_rules", default=True, show_default=True,
                  help="also stream the `log` events of policy engines attached on IF")
    @click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
    def events(devs, netns, ports, syn_rate, block, ring_size, duration, count, with_rules, as_json):
        """Stream connection attempts (TC ingress) and SYN-flood events (XDP) from IF.

        JSON keys: type, time (ISO-8601 UTC), epoch, mono_ns, cpu, source, then per type:
        conn_attempt: interface, ifindex, family, src, sport, dst, dport, flags, len;
        syn_flood: interface, ifindex, family, src, window_syns, rate, blocked, block_until;
        rule_log (policy engine `log` rules): interface, ifindex, hook, rule, rule_id, action, family,
        proto, src, sport, dst, dport, ct_state, flags, len;
        events_lost: lost (new), lost_total.
        """
        from bpfgate.errors import BadInput, BpfgateError
        from bpfgate.inspect.events import EventStream

        if block and not syn_rate:
            raise BadInput("bpfgate events", "--block needs --syn-rate")
        seen = 0
        syn = None
        with exit_on_signals(), ExitStack() as stack:
            sources = [open_attempts(stack, devs, netns, ports, ring_size).event_source()]
            if syn_rate:
                syn = open_syn(stack, devs, netns, rate=syn_rate, block=block, ring_size=ring_size)
                sources.append(syn.event_source())
            engine_srcs: list = []
            if with_rules:
                from bpfgate.inspect.rules import attached, close_sources, engine_source, engine_sources, source_name

                engine_srcs += engine_sources(devs, netns)
                stack.callback(close_sources, engine_srcs)
                sources += engine_srcs
            stream = stack.enter_context(EventStream(sources))

            def new_engines() -> None:
                """Engines attached on IF after the command started join the stream (checked every tick)."""
                known = {s.name for s in stream.sources}
                for dev, hook in attached(netns, devs):
                    if source_name(dev, hook) not in known:
                        try:
                            src = engine_source(dev, hook, netns)
                        except BpfgateError:
                            continue   # detached again in between, or not pinned yet: next tick
                        engine_srcs.append(src)
                        stream.add_source(src)
            if not as_json:
                term.err.print(f"watching {', '.join(devs)} (Ctrl-C to stop)", markup=False)

            def on_record(rec: Any) -> bool:
                nonlocal seen
                emit(flood_event(syn, stream.describe(rec)), as_json)
                seen += 1
                return bool(count and seen >= count)

            def tick() -> None:
                for ev in stream.loss_events():
                    emit(ev, as_json)
                if syn is not None and syn.engine_blockers:
                    syn.sweep()   # engine rules whose block expired are deleted
                if with_rules:
                    new_engines()

            try:
                pump(stream, duration, on_record, tick)
            finally:
                tick()
                if not as_json:
                    term.err.print(f"{stream.received} events, {stream.lost} lost", markup=False)
