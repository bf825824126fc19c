"""The event pipeline: ring buffers of several programs merged into one stream of typed records.

    stream = EventStream([syn.event_source(), attempts.event_source()])
    for rec in stream.iter(timeout=5):          # ctypes records (BTF layouts), or stream.aiter() in asyncio
        print(stream.describe(rec))             # {"type": "conn_attempt", "time": "...Z", "src": ...}
    stream.lost                                  # exact: reserves that failed in the kernel

Every record starts with struct bg_event_hdr; its `type` picks the record layout (read from the
source object's BTF) and the JSON form (an EventKind in KINDS). A new producer (policy `log` rules)
plugs in with register_kind(EventKind(type_id, "rule_log", "bg_rule_log_event", fields)); its
`fields(rec, ctx)` turns a record into type-specific keys, and may use ctx.rule_name(id) for names.

JSON keys common to every event (stable): type, time (ISO-8601 UTC), epoch (seconds, float), mono_ns
(the kernel's CLOCK_MONOTONIC stamp; syn_flood uses the coarse clock, one-jiffy resolution), cpu,
source (which program family produced it). Loss is an event too:
{"type": "events_lost", "source", "lost" (new since the last report), "lost_total"}.
"""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import select
import socket
import time
from collections import ChainMap
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Mapping

from bpfgate import contract
from bpfgate.errors import BadInput, BpfgateError, NotSupported, from_errno
from bpfgate.kernel import libbpf as L
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.maps import Map
from bpfgate.kernel.ringbuf import Handler, PerfBuffer, RingBuffer

C = contract.constants()  # bg_common.h: record type ids, bg_stats indexes
# enum bg_stat: indexes of the per-CPU bg_stats array every event producer keeps
STAT_EVENTS, STAT_EVENTS_LOST = C.BG_STAT_EVENTS, C.BG_STAT_EVENTS_LOST

TCP_FLAG_NAMES = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"),
                  (0x40, "ECE"), (0x80, "CWR"))

# ---- time ---------------------------------------------------------------------------------------------


class Clock:
    """CLOCK_MONOTONIC (bpf_ktime_get_ns) -> wall clock. The offset is sampled once; `resync()` after
    the wall clock steps (NTP), so a long-running stream stays right."""

    def __init__(self) -> None:
        self.offset_ns = 0
        self.resync()

    def resync(self) -> None:
        # the tightest of a few samples: a preemption between the two reads would skew one of them
        best = None
        for _ in range(5):
            m0 = time.monotonic_ns()
            w = time.time_ns()
            m1 = time.monotonic_ns()
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, w - (m0 + m1) // 2)
        self.offset_ns = best[1]

    def wall_ns(self, mono_ns: int) -> int:
        return mono_ns + self.offset_ns

    def epoch(self, mono_ns: int) -> float:
        return self.wall_ns(mono_ns) / 1e9

    def iso(self, mono_ns: int) -> str:
        return iso8601(self.wall_ns(mono_ns))


def iso8601(wall_ns: int) -> str:
    """'2026-11-24T13:30:00.123456Z' (UTC, microseconds)."""
    sec, ns = divmod(wall_ns, 1_000_000_000)
    return f"{_second(sec)}.{ns // 1000:06d}Z"


@lru_cache(maxsize=4)
def _second(sec: int) -> str:
    # events come in bursts within the same second: format the date part once per second
    return datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")

# ---- transport: ring buffer, or perf buffer on kernels without one ------------------------------------


def ring_size(n: int) -> int:
    """A valid ring buffer size (bytes): a power of two, at least one page."""
    if n < mmap.PAGESIZE or n & (n - 1):
        raise BadInput("size the ring buffer", f"{n} bytes: must be a power of two >= {mmap.PAGESIZE}")
    return n


_valid_ring_size = ring_size  # for open_producer, whose `ring_size` parameter shadows it

TRANSPORTS = ("auto", "ringbuf", "perf")
_RINGBUF_MAP_TYPE = 27


def ringbuf_supported() -> bool:
    """Whether this kernel has BPF ring buffers (5.8+); otherwise events go through the perf buffer."""
    return L.libbpf_probe_bpf_map_type(_RINGBUF_MAP_TYPE, None) == 1


def prepare_transport(obj: Any, transport: str = "auto") -> str:
    """Before load: pick how `obj`'s programs emit events (their `cfg_perf_events` constant) and, on a
    kernel without ring buffers, do not create the `events` ring buffer map at all."""
    if transport not in TRANSPORTS:
        raise BpfgateError("choose the event transport", f"{transport!r}: one of {', '.join(TRANSPORTS)}")
    has_ringbuf = ringbuf_supported()
    if transport == "auto":
        transport = "ringbuf" if has_ringbuf else "perf"
    if transport == "ringbuf" and not has_ringbuf:
        raise NotSupported("BPF ring buffer", "the kernel has no BPF ring buffers", min_kernel="5.8",
                           hint="use the perf transport")
    if transport == "perf":
        obj.set_rodata({"cfg_perf_events": 1})
        if not has_ringbuf:
            m = L.bpf_object__find_map_by_name(obj._ptr, b"events")
            if m and _set_autocreate(m, False) != 0:
                raise BpfgateError("skip the ring buffer map", "libbpf refused (too old?)")
    return transport

_set_autocreate = L._fn("bpf_map__set_autocreate", ctypes.c_int, ctypes.c_void_p, ctypes.c_bool) \
    if L.has("bpf_map__set_autocreate") else (lambda m, on: -1)

# ---- formatting helpers the kinds share ---------------------------------------------------------------


def open_producer(name: str, *, transport: str = "auto", ring_size: int | None = None,
                  max_entries: dict[str, int] | None = None) -> tuple[Any, str]:
    """Open and load event-producing object `name` (bg_emit.h): its transport chosen, its ring buffer
    and other maps sized before load. Returns (loaded object, transport); nothing is left open on error."""
    from bpfgate.kernel.objects import BpfObject

    obj = BpfObject.open(name)
    try:
        for map_name, n in (max_entries or {}).items():
            obj.set_max_entries(map_name, n)
        chosen = prepare_transport(obj, transport)
        if ring_size and chosen == "ringbuf":
            obj.set_max_entries("events", _valid_ring_size(ring_size))
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj, chosen


def addr_str(family: int, raw: Any) -> str:
    """An address from a 16-byte field (IPv4 in the first 4 bytes)."""
    b = bytes(raw)
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, b[:4])
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, b[:16])
    return b.hex()


def addr_bytes(addr: str) -> tuple[int, bytes]:
    """'198.18.0.1' -> (4, 16 bytes, IPv4 first); '::1' -> (6, 16 bytes). ValueError if not an address."""
    try:
        return 4, socket.inet_pton(socket.AF_INET, addr) + bytes(12)
    except OSError:
        pass
    try:
        return 6, socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        raise ValueError(f"not an IP address: {addr!r}") from None


def tcp_flags_str(flags: int) -> str:
    """0x12 -> 'SYN|ACK'."""
    return "|".join(name for bit, name in TCP_FLAG_NAMES if flags & bit)

# ---- event kinds ---------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a kind's fields() may need beyond the record: names of interfaces and rules, the clock."""

    clock: Clock
    interfaces: Mapping[int, str] = field(default_factory=dict)
    rules: dict[int, str] = field(default_factory=dict)
    namer: Callable[[int], str | None] | None = None  # the source's own names (rule ids are per engine)

    def ifname(self, ifindex: int) -> str | None:
        return self.interfaces.get(ifindex)

    def rule_name(self, rule_id: int) -> str | None:
        if self.namer is not None:
            name = self.namer(rule_id)
            if name is not None:
                return name
        return self.rules.get(rule_id)


@dataclass(frozen=True)
class EventKind:
    type_id: int  # bg_event_hdr.type
    name: str  # the JSON "type"
    struct: str  # the record's struct name in bpf/include (layout read from BTF)
    fields: Callable[[Any, Context], dict]

KINDS: dict[int, EventKind] = {}


def register_kind(kind: EventKind) -> EventKind:
    old = KINDS.get(kind.type_id)
    if old is not None and old != kind:
        raise BpfgateError("register event kind", f"type {kind.type_id} is already {old.name!r}")
    KINDS[kind.type_id] = kind
    return kind


def _attempt_fields(rec: Any, ctx: Context) -> dict:
    return {
        "interface": ctx.ifname(rec.ifindex),
        "ifindex": rec.ifindex,
        "family": rec.family,
        "src": addr_str(rec.family, rec.saddr),
        "sport": rec.sport,
        "dst": addr_str(rec.family, rec.daddr),
        "dport": rec.dport,
        "flags": tcp_flags_str(rec.tcp_flags),
        "len": rec.pkt_len,
    }


def _flood_fields(rec: Any, ctx: Context) -> dict:
    until = rec.block_until_ns
    return {
        "interface": ctx.ifname(rec.ifindex),
        "ifindex": rec.ifindex,
        "family": rec.src.family,
        "src": addr_str(rec.src.family, rec.src.addr),
        "window_syns": rec.window_syns,
        "rate": rec.rate,
        "blocked": bool(until),
        "block_until": ctx.clock.iso(until) if until else None,
    }

register_kind(EventKind(C.BG_EV_CONN_ATTEMPT, "conn_attempt", "bg_attempt_event", _attempt_fields))
register_kind(EventKind(C.BG_EV_SYN_FLOOD, "syn_flood", "bg_syn_flood_event", _flood_fields))
register_kind(EventKind(C.BG_EV_TEST, "test", "bg_test_event", lambda rec, ctx: {"seq": rec.seq, "len": rec.pkt_len}))

# ---- sources and the stream -----------------------------------------------------------------------------


def RingReader(ringbuf: Map, types: dict[int, Any], handler: Handler | None = None) -> RingBuffer:
    """The ring buffer consumer of the kernel layer (mmap'd pages, no callback per record), records
    typed by their bg_event_hdr.type."""
    return RingBuffer(ringbuf, types=types, handler=handler)


class PerfReader(PerfBuffer):
    """The perf buffer fallback, records typed by their header like RingReader (slower: libbpf calls
    back into Python once per record)."""

    def __init__(self, perf_map: Map, types: dict[int, Any], handler: Handler | None = None,
                 page_cnt: int = 64):
        self._types = types
        super().__init__(perf_map, handler=handler, page_cnt=page_cnt)
        self.fd = self.epoll_fd()

    def _decode(self, addr: int, size: int) -> Any:
        rt = self._types.get(ctypes.c_uint16.from_address(addr).value) if size >= 2 else None
        if rt is not None and size >= ctypes.sizeof(rt):
            return rt.from_buffer_copy((ctypes.c_char * ctypes.sizeof(rt)).from_address(addr))
        return ctypes.string_at(addr, size)

    def consume(self) -> int:
        """Read every CPU's buffer. Not poll(0): the stream's own epoll wait already took the perf fds'
        readiness (perf_poll clears it), so libbpf's epoll would report nothing ready."""
        before = self.received
        n = L.perf_buffer__consume(self._ptr)
        self._flush()
        self._raise_pending()
        if n < 0:
            raise from_errno("consume perf buffer", -n)
        return self.received - before


@dataclass
class EventSource:
    """One producer: its ring buffer, its bg_stats (loss), the BTF its record layouts come from."""

    name: str
    ringbuf: Map  # the BPF_MAP_TYPE_RINGBUF, or the PERF_EVENT_ARRAY when transport is "perf"
    stats: Map | None
    btf: Btf
    interfaces: dict[int, str] = field(default_factory=dict)
    transport: str = "ringbuf"
    perf_pages: int = 64  # per CPU, perf transport only
    rule_names: Callable[[int], str | None] | None = None  # rule id -> name (policy engine sources)

    @classmethod
    def from_object(cls, obj: Any, name: str, *, transport: str = "ringbuf", stats: str = "bg_stats",
                    interfaces: dict[int, str] | None = None, perf_pages: int = 64) -> "EventSource":
        """An object's `events` ring buffer (or `perf_events` for the perf transport) and bg_stats."""
        buf = obj.map("perf_events" if transport == "perf" else "events")
        # the caller's dict itself: interfaces attached later still get their names
        return cls(name, buf, obj.map(stats), obj.btf, interfaces if interfaces is not None else {},
                   transport, perf_pages)

    @classmethod
    def from_pins(cls, name: str, ringbuf_pin: str, object_path: str, *, stats_pin: str | None = None,
                  interfaces: dict[int, str] | None = None) -> "EventSource":
        """A producer another process runs (e.g. a pinned gate): its pinned maps, layouts from its .o."""
        stats = Map.from_pin(stats_pin, ctypes.c_uint32, ctypes.c_uint64) if stats_pin else None
        return cls(name, Map.from_pin(ringbuf_pin), stats, Btf.from_elf(object_path),
                   interfaces if interfaces is not None else {})

    def record_types(self) -> dict[int, Any]:
        """type id -> ctypes struct, for every registered kind this object's BTF knows."""
        out = {}
        for tid, kind in KINDS.items():
            try:
                out[tid] = self.btf.struct(kind.struct)
            except BpfgateError:
                continue  # not a record this object produces
        return out

    def counters(self) -> tuple[int, int]:
        """(submitted, lost) as counted by the programs, summed over CPUs."""
        if self.stats is None:
            return 0, 0
        return sum(self.stats.get(STAT_EVENTS, [0])), sum(self.stats.get(STAT_EVENTS_LOST, [0]))


class EventStream:
    """Merge the events of several sources. Records come out as ctypes structs (fast); describe()
    makes the JSON form. With `handler`, records are handed over in batches from poll()."""

    def __init__(self, sources: Iterable[EventSource], *, handler: Handler | None = None,
                 clock: Clock | None = None, rules: dict[int, str] | None = None):
        self.sources = list(sources)
        if not self.sources:
            raise BpfgateError("open event stream", "no event sources")
        self.clock = clock or Clock()
        # live view of every source's names (attach() after the stream opened still names events)
        self.ctx = Context(self.clock, ChainMap(*(s.interfaces for s in self.sources)), dict(rules or {}))
        self._ctx_of = {s.name: Context(self.clock, self.ctx.interfaces, self.ctx.rules, s.rule_names)
                        for s in self.sources if s.rule_names is not None}
        self._kind_of: dict[type, tuple[EventKind, str]] = {}
        self._rings: list[RingBuffer | PerfReader] = []
        self._reported_lost = {s.name: 0 for s in self.sources}
        self._handler = handler
        self._ep = select.epoll()
        try:
            for s in self.sources:
                self._open_source(s)
        except BaseException:
            self.close()
            raise

    def _open_source(self, s: EventSource) -> None:
        types = s.record_types()
        for tid, rt in types.items():
            self._kind_of[rt] = (KINDS[tid], s.name)
        if s.transport == "perf":
            rb = PerfReader(s.ringbuf, types, handler=self._handler, page_cnt=s.perf_pages)
        else:
            rb = RingReader(s.ringbuf, types, handler=self._handler)
        self._rings.append(rb)
        self._ep.register(rb.fd, select.EPOLLIN)  # readable while records wait

    def add_source(self, s: EventSource) -> None:
        """A producer that appeared after the stream opened (e.g. a policy engine attached later)."""
        if s.name in self._reported_lost:
            raise BpfgateError("add event source", f"the stream already has a source named {s.name!r}")
        self._open_source(s)
        self.sources.append(s)
        self._reported_lost[s.name] = 0
        self.ctx.interfaces.maps.append(s.interfaces)
        if s.rule_names is not None:
            self._ctx_of[s.name] = Context(self.clock, self.ctx.interfaces, self.ctx.rules, s.rule_names)

    # ---- reading -----------------------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to timeout_ms for any source, then consume every source; returns records consumed."""
        try:
            self._ep.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        except InterruptedError:
            pass
        return sum(rb.consume() for rb in self._rings)

    def drain(self) -> list[Any]:
        out: list[Any] = []
        for rb in self._rings:
            out.extend(rb.drain())
        return out

    def iter(self, timeout: float | None = None, poll_ms: int = 100) -> Iterator[Any]:
        """Yield records as they arrive; stop after `timeout` seconds (None: until the caller stops)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            left = poll_ms if deadline is None else max(0, min(poll_ms, int((deadline - time.monotonic()) * 1000)))
            self.poll(left)
            yield from self.drain()

    __iter__ = iter

    async def aiter(self) -> AsyncIterator[Any]:
        """asyncio: wake on the sources' epoll fds, yield what is there."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(self._ep.fileno(), ready.set)
        try:
            while True:
                self.poll(0)
                for rec in self.drain():
                    yield rec
                await ready.wait()
                ready.clear()
        finally:
            loop.remove_reader(self._ep.fileno())

    # ---- accounting ----------------------------------------------------------------------------------------

    @property
    def received(self) -> int:
        return sum(rb.received for rb in self._rings)

    @property
    def lost(self) -> int:
        return sum(s.counters()[1] for s in self.sources)

    @property
    def submitted(self) -> int:
        return sum(s.counters()[0] for s in self.sources)

    def loss_events(self) -> list[dict]:
        """One events_lost record per source whose loss grew since the last call (empty if none)."""
        out = []
        now = time.monotonic_ns()
        for s in self.sources:
            total = s.counters()[1]
            new = total - self._reported_lost[s.name]
            if new > 0:
                self._reported_lost[s.name] = total
                out.append({**self._common("events_lost", now, -1, s.name), "lost": new, "lost_total": total})
        return out

    # ---- JSON form -------------------------------------------------------------------------------------------

    def _common(self, type_name: str, mono_ns: int, cpu: int, source: str) -> dict:
        return {"type": type_name, "time": self.clock.iso(mono_ns), "epoch": round(self.clock.epoch(mono_ns), 6),
                "mono_ns": mono_ns, "cpu": cpu, "source": source}

    def describe(self, rec: Any) -> dict:
        """The stable JSON object for one record (see the module docstring for the keys)."""
        if isinstance(rec, bytes):
            tid = int.from_bytes(rec[:2], "little") if len(rec) >= 2 else -1
            ts = int.from_bytes(rec[8:16], "little") if len(rec) >= 16 else 0
            return {**self._common("unknown", ts, -1, "?"), "type_id": tid, "len": len(rec), "data": rec.hex()}
        kind, source = self._kind_of[type(rec)]
        ctx = self._ctx_of.get(source, self.ctx)
        return {**self._common(kind.name, rec.hdr.ts_ns, rec.hdr.cpu, source), **kind.fields(rec, ctx)}

    def kind(self, rec: Any) -> str:
        return "unknown" if isinstance(rec, bytes) else self._kind_of[type(rec)][0].name

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        for rb in self._rings:
            rb.close()
        self._rings = []
        if not self._ep.closed:
            self._ep.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

