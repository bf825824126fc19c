"""Per-flow accounting in the kernel (bpf/flows.bpf.c), read from Python in batches.

    with FlowMonitor("eth0") as mon:            # attaches at ingress + egress, detaches on close
        ...traffic...
        for f in mon.flows(sort="bytes", n=10):  # only the flows shown are decoded
            print(f.src, f.sport, "->", f.dst, f.dport, f.packets, f.bytes)
        ended = mon.poll_ended()                 # FIN/RST records from the kernel + idle expiry here
        mon.stats()                              # created / ended / expired / evicted / events lost
        mon.keep()                               # optional: stay attached after we exit (pins)

    FlowMonitor("eth0", pinned=True)             # read accounting left running; FlowMonitor.stop("eth0")

The table is the connection tracker's (bpf/include/conntrack.h): one entry per connection, counters per
direction. On an interface where a policy engine tracks flows, the accounting loads on the engine's table
and counts only the directions the engine side does not (docs/conntrack.md): each packet counted once.

Nothing disappears silently: the kernel reports a flow's first FIN or RST once (ring buffer, final
counters); flows idle longer than `idle_timeout` are deleted and reported here (reason "idle"); and
entries the LRU table dropped to make room are counted (created - live - deleted by user space, the
deletions counted in the shared stats map), since the kernel does not say which ones they were.
"""

from __future__ import annotations

import ctypes
import heapq
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable

from bpfgate import attach, contract
from bpfgate.engine.records import Flow as CtEntry
from bpfgate.errors import BpfgateError, NotFound, NotSupported
from bpfgate.inspect.events import Clock, Context, EventKind, EventSource, register_kind, tcp_flags_str
from bpfgate.kernel import netlink, pins
from bpfgate.kernel.maps import Map, possible_cpus
from bpfgate.kernel.objects import BpfObject
from bpfgate.kernel.ringbuf import RingBuffer

C = contract.constants("flows")
DIRECTIONS = ("ingress", "egress")
DIR_NAMES = C.names("bg_dir", {"BG_DIR_INGRESS": "ingress", "BG_DIR_EGRESS": "egress"})  # bg_ct_value.created_dir
END_REASONS = C.names("bg_flow_end_reason", {"BG_FLOW_END_NONE": None, "BG_FLOW_END_FIN": "fin",
                                             "BG_FLOW_END_RST": "rst", "BG_FLOW_END_IDLE": "idle",
                                             "BG_FLOW_END_EVICTED": "evicted"})
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
SORT_KEYS = ("bytes", "packets", "last")
# indexes of flow_stats (enum bg_flow_stat) and bg_stats (enum bg_stat)
STAT_NEW, STAT_ENDED, STAT_UNPARSED = C.BG_FLOW_STAT_NEW, C.BG_FLOW_STAT_ENDED, C.BG_FLOW_STAT_UNPARSED
STAT_CREATE_FAIL, STAT_DELETED = C.BG_FLOW_STAT_CREATE_FAIL, C.BG_FLOW_STAT_DELETED
STAT_EVENTS_LOST = C.BG_STAT_EVENTS_LOST
PINNED_MAPS = ("bg_ct", "flow_stats", "bg_stats", "flow_events")


def pin_dir(dev: str, netns_name: str | None = None) -> str:
    """Where keep() pins a long-running flow accounting: /sys/fs/bpf/bpfgate/flows/<netns|->/<dev>."""
    return pins.pin_path("flows", netns_name or "-", dev)


# ---- attaching a pair of programs ----------------------------------------------------------------------


class TcHooks:
    """Programs attached at TC ingress and/or egress of one interface for the lifetime of this object,
    through the attach layer (recorded: `bpfgate status` names the family, `bpfgate detach` removes them).

    method "tcx" (kernel >= 6.6): links the process holds, placed where the family's slot says (flows and
    capture: first in the TCX chain, so they see every packet before other programs decide); the kernel
    detaches them when the process exits, even on SIGKILL. method "tc": clsact direct-action filters at the
    family's priority (bpfgate.attach.order); the qdisc is removed on close only if we created it and no
    other filter is left. "auto": tcx, else tc.
    Our programs return TC_ACT_UNSPEC/TCX_NEXT: they never change what happens to a packet.
    """

    def __init__(self, dev: str, progs: dict[str, Any], *, netns_name: str | None = None, method: str = "auto",
                 owner: str = "flows"):
        if method not in ("auto", "tcx", "tc"):
            raise BpfgateError("attach", f"method must be auto, tcx or tc, not {method!r}")
        self.dev, self.netns, self.method, self.owner = dev, netns_name, method, owner
        self.ifindex = netlink.ifindex(dev, netns_name)  # NotFound: one line, nothing attached yet
        self.attachments: dict[str, attach.Attachment] = {}  # direction -> attachment
        try:
            for direction, prog in progs.items():
                self._attach(direction, prog)
        except BaseException:
            self.close()
            raise

    @property
    def links(self) -> dict[str, Any]:
        """direction -> the TCX link this process holds (method tcx)."""
        return {d: a.held for d, a in self.attachments.items() if a.held is not None}

    def _attach(self, direction: str, prog: Any) -> None:
        point = attach.Point.device(self.dev, direction, self.netns)
        if self.method in ("auto", "tcx"):
            try:
                self.attachments[direction] = attach.tcx.attach(prog, point, attach.Options(owner=self.owner),
                                                                pinned=False)
                self.method = "tcx"
                return
            except NotSupported:
                if self.method == "tcx":
                    raise
                self.method = "tc"
        self.attachments[direction] = attach.tc.attach(prog, point, attach.Options(owner=self.owner, replace=False))

    def keep(self, pin_dir: str, extra_pins: Iterable[str]) -> None:
        """Pin the held links under `pin_dir` (link_<direction>): the attachments outlive this process; the
        records now own those pins and `extra_pins` (the maps), so `bpfgate detach` removes all of them."""
        extra = list(extra_pins)
        for direction, att in self.attachments.items():
            attach.pin_held(att, os.path.join(pin_dir, f"link_{direction}"), extra)
            extra = []   # the maps belong to the first record; one detach of either removes them with it
        self.attachments = {}

    def close(self) -> None:
        atts, self.attachments = self.attachments, {}
        for att in atts.values():
            try:
                if att.held is not None:
                    att.close()   # the kernel detaches a link when its last fd goes
                else:
                    attach.detach(att)
            except BpfgateError:
                pass  # the interface (or its namespace) is gone, and the filter with it


def open_pair(obj_name: str, prefix: str, dev: str, direction: str, *, netns_name: str | None = None,
              method: str = "auto", rodata: dict | None = None, sizes: dict[str, int] | None = None,
              reuse: dict[str, Map] | None = None) -> tuple[BpfObject, TcHooks]:
    """Load `obj_name` (programs <prefix>_ingress / <prefix>_egress) and attach it at `direction`
    ('ingress', 'egress' or 'both'). reuse: maps to share instead of creating them. The caller closes
    hooks, then the object."""
    dirs = DIRECTIONS if direction == "both" else (direction,)
    if any(d not in DIRECTIONS for d in dirs):
        raise BpfgateError("attach", f"direction must be ingress, egress or both, not {direction!r}")
    netlink.ifindex(dev, netns_name)  # unknown interface: fail before loading anything
    obj = BpfObject.open(obj_name, rodata=rodata)
    try:
        for name, n in (sizes or {}).items():
            obj.set_max_entries(name, n)
        for name, m in (reuse or {}).items():
            obj.reuse_map(name, m.fd)
        obj.load()
        hooks = TcHooks(dev, {d: obj.program(f"{prefix}_{d}") for d in dirs}, netns_name=netns_name, method=method,
                        owner=obj_name)
    except BaseException:
        obj.close()
        raise
    return obj, hooks


# ---- flows ----------------------------------------------------------------------------------------------


def read_table(table: Any, chunk: int = 8192) -> list[tuple[Any, Any]]:
    """Every (key, value) of the flow table, `chunk` per bpf_map_lookup_batch call."""
    return list(table.lookup_batch(chunk))


@dataclass(frozen=True)
class Flow:
    """One connection as the tracker on one interface has it (conntrack.h: bg_ct_key + bg_ct_value):
    src/sport -> dst/dport is the originator's direction; packets/bytes are both directions' sums."""

    family: int
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    direction: str  # the hook that saw its first packet: "ingress" (opened by the peer) or "egress"
    ifindex: int
    interface: str | None
    packets: int
    bytes: int
    first_ns: int  # CLOCK_MONOTONIC
    last_ns: int
    tcp_flags: int
    ended: str | None  # "fin"/"rst" once the kernel reported the end, else None
    packets_orig: int = 0
    bytes_orig: int = 0
    packets_reply: int = 0
    bytes_reply: int = 0

    @classmethod
    def from_kernel(cls, key: Any, val: Any, names: dict[int, str]) -> "Flow":
        c = CtEntry.decode(bytes(key), bytes(val))
        return cls(family=c.family, proto=c.proto, src=str(c.src), sport=c.sport, dst=str(c.dst), dport=c.dport,
                   direction=DIR_NAMES[c.created_dir & 1], ifindex=c.ifindex, interface=names.get(c.ifindex),
                   packets=c.packets_orig + c.packets_reply, bytes=c.bytes_orig + c.bytes_reply,
                   first_ns=c.first_ns, last_ns=c.last_ns, tcp_flags=c.tcp_flags_seen, ended=END_REASONS.get(c.ended),
                   packets_orig=c.packets_orig, bytes_orig=c.bytes_orig, packets_reply=c.packets_reply,
                   bytes_reply=c.bytes_reply)

    @property
    def protocol(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    def to_json(self, clock: Clock) -> dict:
        return {"family": self.family, "proto": self.protocol, "src": self.src, "sport": self.sport,
                "dst": self.dst, "dport": self.dport, "direction": self.direction, "interface": self.interface,
                "ifindex": self.ifindex, "packets": self.packets, "bytes": self.bytes,
                "packets_orig": self.packets_orig, "bytes_orig": self.bytes_orig,
                "packets_reply": self.packets_reply, "bytes_reply": self.bytes_reply,
                "first_seen": clock.iso(self.first_ns), "last_seen": clock.iso(self.last_ns),
                "tcp_flags": tcp_flags_str(self.tcp_flags), "ended": self.ended}


def _flow_end_fields(rec: Any, ctx: Context) -> dict:
    """The `flow_end` event of `bpfgate events` (EventStream): the flow with its final counters."""
    f = Flow.from_kernel(rec.key, rec.val, ctx.interfaces)
    return {**{k: v for k, v in f.to_json(ctx.clock).items() if k != "ended"}, "reason": END_REASONS.get(rec.val.ended)}


register_kind(EventKind(C.BG_EV_FLOW_END, "flow_end", "bg_flow_end_event", _flow_end_fields))


@dataclass(frozen=True)
class FlowEnd:
    flow: Flow
    reason: str  # "fin", "rst" (kernel) or "idle" (expired here)

    def to_json(self, clock: Clock) -> dict:
        return {**self.flow.to_json(clock), "ended": self.reason}


@dataclass(frozen=True)
class FlowStats:
    live: int  # entries in the table now
    created: int  # entries the kernel created
    ended: int  # FIN/RST records the kernel sent
    expired: int  # idle entries deleted (and reported) here
    evicted: int  # entries the full LRU table dropped: created - live - deleted here (exact at rest;
    # while flows are being created the two reads are a moment apart)
    unparsed: int  # packets not IPv4/IPv6: not accounted
    events_lost: int  # flow-end records the ring buffer had no room for

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _sort_attr(sort: str) -> str:
    if sort not in SORT_KEYS:
        raise BpfgateError("sort flows", f"sort by one of {', '.join(SORT_KEYS)}, not {sort!r}")
    return "last_ns" if sort == "last" else sort


def top_flows(flows: Iterable[Any], sort: str = "bytes", n: int | None = None, *, raw: bool = False) -> list[Any]:
    """The first n by `sort`, largest first. raw=True: (key, value) pairs as read_table returns them,
    so only the flows shown need decoding."""
    attr = _sort_attr(sort)
    if raw:  # bg_ct_value: packets and bytes per direction
        key = (lambda e: e[1].last_ns) if attr == "last_ns" else (lambda e: sum(getattr(e[1], attr)))
    else:
        key = lambda f: getattr(f, attr)  # noqa: E731
    return heapq.nlargest(n, flows, key=key) if n else sorted(flows, key=key, reverse=True)


class FlowMonitor:
    """Flow accounting on one interface (both directions by default) while the object is open."""

    def __init__(self, dev: str, *, netns_name: str | None = None, direction: str = "both",
                 max_flows: int = 65536, idle_timeout: float = 60.0, end_grace: float = 5.0,
                 method: str = "auto", clock: Clock | None = None, pinned: bool = False):
        self.dev, self.netns = dev, netns_name
        self.idle_timeout_ns = int(idle_timeout * 1e9)
        self.end_grace_ns = int(end_grace * 1e9)  # ended flows stay listed this long, then go quietly
        self.clock = clock or Clock()
        self.pin_dir = pin_dir(dev, netns_name)
        self.hooks: TcHooks | None = None
        self._maps: list[Map] = []  # opened from pins: ours to close
        self.shared = False  # on a policy engine's conntrack table: the engine's timeouts govern its entries
        self._reported: set[bytes] = set()  # shared table: idle flows reported (never deleted here)
        if pinned:
            self.obj = self._open_pinned()
        else:
            from bpfgate.engine.engine import conntrack_table

            table, tracked = conntrack_table(dev, netns_name)
            self.shared = table is not None
            try:
                rodata = {f"cfg_track_{d}": int(d not in tracked) for d in DIRECTIONS}
                own = {"sizes": {"bg_ct": max_flows}} if table is None else {"reuse": {"bg_ct": table}}
                self.obj, self.hooks = open_pair("flows", "bg_flow", dev, direction, netns_name=netns_name,
                                                 method=method, rodata=rodata, **own)
            finally:
                if table is not None:
                    table.close()  # the loaded object holds the map
        try:
            maps = {name: self._map(name) for name in PINNED_MAPS}
            self.table, self._stats, self._bg_stats = maps["bg_ct"], maps["flow_stats"], maps["bg_stats"]
            self._names = {i.ifindex: i.name for i in netlink.interfaces(netns_name)}
            self._ring_map = maps["flow_events"]
            self._ring = RingBuffer(self._ring_map, record_type=self.obj.btf.struct("bg_flow_end_event"))
        except BaseException:
            self.close()
            raise
        self.expired = 0  # idle flows this reader deleted and reported

    def event_source(self) -> EventSource:
        """The kernel's flow-end records as an EventStream source (then do not also call poll_ended:
        both would consume the same ring buffer)."""
        return EventSource(f"flows:{self.dev}", self._ring_map, self._bg_stats, self.obj.btf, dict(self._names))

    # ---- pinned (long-running) accounting ------------------------------------------------------------

    def _open_pinned(self) -> BpfObject:
        if not os.path.isdir(self.pin_dir):
            raise NotFound(f"read flows on {self.dev}", "no flow accounting is left running there",
                           hint="start it with `bpfgate flows --dev DEV --keep`")
        return BpfObject.open("flows")  # never loaded: only its BTF, for the key/value layouts

    def _map(self, name: str) -> Map:
        if self.hooks is not None:
            m = self.obj.map(name)
            if name == "bg_ct":  # an engine's table, reused: libbpf keeps that object's BTF type ids
                m = Map(m.fd, name=name, key_type=self.obj.btf.struct("bg_ct_key"), map_type=m.map_type,
                        value_type=self.obj.btf.struct("bg_ct_value"), max_entries=m.max_entries)
            return m
        types = {"bg_ct": (self.obj.btf.struct("bg_ct_key"), self.obj.btf.struct("bg_ct_value")),
                 "flow_stats": (ctypes.c_uint32, ctypes.c_uint64), "bg_stats": (ctypes.c_uint32, ctypes.c_uint64)}
        m = Map.from_pin(os.path.join(self.pin_dir, name), *types.get(name, (None, None)))
        self._maps.append(m)
        return m

    def keep(self) -> str:
        """Leave the accounting running after this process: pin the TCX links and the maps, so
        FlowMonitor(..., pinned=True) (`bpfgate flows`, `top`) reads it later. Returns the pin directory."""
        if self.hooks is None or self.hooks.method != "tcx":
            raise NotSupported("keep flow accounting running", "it stays attached through pinned TCX links, and "
                               "this kernel has no TCX (attached as classic tc filters)", min_kernel="6.6")
        if os.path.exists(self.pin_dir):
            raise BpfgateError(f"keep flow accounting on {self.dev}", "already running there",
                               hint="stop it first: bpfgate flows --dev DEV --stop")
        try:
            maps = []
            for name in PINNED_MAPS:
                path = os.path.join(self.pin_dir, name)
                self.obj.map(name).pin(path)
                maps.append(path)
            self.hooks.keep(self.pin_dir, maps)
        except BaseException:
            pins.unpin(self.pin_dir)
            raise
        return self.pin_dir

    @staticmethod
    def stop(dev: str, netns_name: str | None = None) -> None:
        """Detach and forget accounting left running by keep() (unpinning the links detaches them)."""
        d = pin_dir(dev, netns_name)
        found = False
        for att in attach.find(dev, None, netns_name, owner="flows"):
            if any(p.startswith(d + os.sep) for p in att.pins):
                found = bool(attach.detach(att)) or found
        if not pins.unpin(d) and not found:
            raise NotFound(f"stop flow accounting on {dev}", "none is running there")
        for parent in (os.path.dirname(d), os.path.dirname(os.path.dirname(d))):  # <netns>/, flows/
            try:
                os.rmdir(parent)
            except OSError:
                break  # not empty: other accounting still runs

    # ---- reading ---------------------------------------------------------------------------------------

    def flows(self, sort: str | None = None, n: int | None = None) -> list[Flow]:
        """Flows in the table (batched reads); with `sort`, the first n only, and only those decoded."""
        entries = read_table(self.table)
        if sort is not None:
            entries = top_flows(entries, sort, n, raw=True)
        return [self.decode(k, v) for k, v in entries]

    def entries(self) -> list[tuple[Any, Any]]:
        """The raw table: (bg_ct_key, bg_ct_value) ctypes pairs."""
        return read_table(self.table)

    def decode(self, key: Any, val: Any) -> Flow:
        return Flow.from_kernel(key, val, self._names)

    def poll_ended(self, timeout_ms: int = 0) -> list[FlowEnd]:
        """Flow ends since the last call: the kernel's FIN/RST records, then idle flows expired here."""
        self._ring.poll(timeout_ms)
        ended = [FlowEnd(Flow.from_kernel(r.key, r.val, self._names), END_REASONS.get(r.val.ended, "fin"))
                 for r in self._ring.drain()]
        return ended + self.expire()

    def expire(self, now_ns: int | None = None) -> list[FlowEnd]:
        """Delete idle flows (reported, reason 'idle') and ended flows past the grace time (already reported)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        out, gone = [], []
        if self.shared:  # the engine's entries: its timeouts and `ct:` rules need them; report idle ones once
            for key, val in read_table(self.table):
                raw = bytes(key)
                if not val.ended and now - val.last_ns > self.idle_timeout_ns and raw not in self._reported:
                    self._reported.add(raw)
                    out.append(FlowEnd(self.decode(key, val), "idle"))
            self.expired += len(out)
            return out
        for key, val in read_table(self.table):
            idle = now - val.last_ns
            if val.ended and idle > self.end_grace_ns:
                gone.append(key)
            elif not val.ended and idle > self.idle_timeout_ns:
                gone.append(key)
                out.append(FlowEnd(self.decode(key, val), "idle"))
        deleted = sum(self.table.delete(key) for key in gone)  # False: the LRU took it first
        if deleted:
            self._add_deleted(deleted)
        self.expired += len(out)
        return out

    def _add_deleted(self, n: int) -> None:
        """Count our deletions in the shared stats map (CPU 0's slot; the kernel never writes this index),
        so every reader of a long-running table computes the same evictions."""
        per_cpu = self._stats.get(STAT_DELETED) or [0] * possible_cpus()
        per_cpu[0] += n
        self._stats.update(STAT_DELETED, per_cpu)

    def stats(self) -> FlowStats:
        return self.read()[1]

    def read(self) -> tuple[list[tuple[Any, Any]], FlowStats]:
        """The raw table and the stats, consistently: `created` is read before the table and `deleted`
        after it, so a flow created or deleted meanwhile never shows up as a phantom eviction."""
        def total(m: Any, i: int) -> int:
            return sum(m.get(i, [0]))

        created = total(self._stats, STAT_NEW)
        entries = read_table(self.table)
        deleted = total(self._stats, STAT_DELETED)
        live = len(entries)
        return entries, FlowStats(live=live, created=created, ended=total(self._stats, STAT_ENDED),
                                  expired=self.expired, evicted=max(0, created - live - deleted),
                                  unparsed=total(self._stats, STAT_UNPARSED),
                                  events_lost=total(self._bg_stats, STAT_EVENTS_LOST))

    # ---- lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        hooks, self.hooks = getattr(self, "hooks", None), None
        if hooks is not None:
            hooks.close()  # after keep(), the pins hold the links: they stay attached
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
            self._ring = None
        for m in getattr(self, "_maps", []):
            m.close()
        self._maps = []
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> "FlowMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
