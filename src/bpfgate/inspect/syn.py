"""SYN counter and SYN-flood detector at XDP (bpf/syn.bpf.c).

    with SynCounter(rate=200, block=10) as syn:      # >200 SYN/s from one source: event + 10 s drop
        syn.attach("eth0")                           # XDP link: gone when closed, even if we crash
        syn.totals()                                 # {ifindex: SynTotal(syns, blocked)}
        syn.top(10)                                  # busiest sources
        EventStream([syn.event_source()])            # syn_flood events

The block list (map `syn_blocklist`, source -> CLOCK_MONOTONIC expiry) is checked per packet, so a
block ends on time by itself; sweep() only deletes expired entries. The policy engine can take the
block list over by sharing that map.

Events go through the `events` ring buffer, or the perf buffer on kernels without ring buffers
(transport="auto" picks; "perf" forces it).

Totals per interface are exact. Per-source counts live in an LRU map (max_sources): a spoofed flood
from more sources than that evicts the quietest ones, so `top` stays right while the long tail is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bpfgate.errors import BpfgateError
from bpfgate.inspect import events
from bpfgate.inspect.events import EventSource, addr_bytes, addr_str
from bpfgate.kernel import netlink, netns
from bpfgate.kernel.links import Link, attach_xdp_link
from bpfgate.kernel.objects import BpfObject

PROGRAM = "bg_syn_xdp"
BLOCKLIST = "syn_blocklist"


@dataclass(frozen=True)
class SynTotal:
    syns: int
    blocked: int


@dataclass(frozen=True)
class SynSource:
    ifindex: int
    family: int
    source: str
    syns: int
    last_ns: int


@dataclass(frozen=True)
class Block:
    source: str
    until_ns: int  # CLOCK_MONOTONIC


class SynCounter:
    """Load bg_syn_xdp, attach it to interfaces, read counters, set flood detection, edit the block list."""

    def __init__(self, *, rate: int = 0, block: float = 0.0, max_sources: int = 16384,
                 ring_size: int | None = None, transport: str = "auto"):
        obj = BpfObject.open("syn")
        try:
            obj.set_max_entries("syn_sources", max_sources)
            self.transport = events.prepare_transport(obj, transport)
            if ring_size and self.transport == "ringbuf":
                obj.set_max_entries("events", events.ring_size(ring_size))
            obj.load()
        except BaseException:
            obj.close()
            raise
        self.obj = obj
        self.prog = obj.program(PROGRAM)
        self.interfaces: dict[int, str] = {}
        self._links: list[Link] = []
        self.configure(rate, block)

    # ---- attach ------------------------------------------------------------------------------------

    def attach(self, dev: str | int, netns_name: str | None = None) -> int:
        """Attach to `dev` (in `netns_name`) as an XDP link; returns the ifindex."""
        ifindex = netlink.ifindex(dev, netns_name)
        with netns.entered(netns_name):
            link = attach_xdp_link(self.prog, ifindex)
        self._links.append(link)
        self.interfaces[ifindex] = str(dev)
        return ifindex

    def close(self) -> None:
        """Detach everything this counter attached, then free the object."""
        for link in self._links:
            link.close()
        self._links = []
        self.obj.close()

    def __enter__(self) -> "SynCounter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- configuration -------------------------------------------------------------------------------

    def configure(self, rate: int, block: float = 0.0) -> None:
        """rate: SYNs/s from one source that count as a flood (0: off); block: seconds to drop it (0: no)."""
        if rate < 0 or block < 0:
            raise BpfgateError("configure SYN flood detection", "rate and block time must be >= 0")
        if block and not rate:
            raise BpfgateError("configure SYN flood detection", "blocking needs a rate (--rate)")
        self.rate, self.block_s = int(rate), float(block)
        self.obj.map("syn_config")[0] = {"rate": self.rate, "block_ns": int(self.block_s * 1e9)}

    # ---- counters ------------------------------------------------------------------------------------

    def totals(self) -> dict[int, SynTotal]:
        """Per attached interface (zero before the first SYN)."""
        out = {i: SynTotal(0, 0) for i in self.interfaces}
        m = self.obj.map("syn_totals")
        for ifindex, per_cpu in m.items():
            out[ifindex] = SynTotal(sum(v.syns for v in per_cpu), sum(v.blocked for v in per_cpu))
        return out

    def sources(self) -> list[SynSource]:
        out = []
        for k, v in self.obj.map("syn_sources").items():
            out.append(SynSource(k.ifindex, k.src.family, addr_str(k.src.family, k.src.addr), v.syns, v.last_ns))
        return out

    def top(self, n: int = 10, ifindex: int | None = None) -> list[SynSource]:
        srcs = [s for s in self.sources() if ifindex is None or s.ifindex == ifindex]
        return sorted(srcs, key=lambda s: (-s.syns, s.source))[:n]

    # ---- block list ------------------------------------------------------------------------------------

    @property
    def blocklist(self) -> Any:
        return self.obj.map(BLOCKLIST)

    def blocks(self) -> list[Block]:
        """Entries still in force (expired ones are ignored by the datapath, and by this)."""
        now = time.monotonic_ns()
        return [Block(addr_str(k.family, k.addr), until) for k, until in self.blocklist.items() if until > now]

    def block(self, source: str, seconds: float) -> None:
        family, raw = _src(source)
        self.blocklist[{"family": family, "addr": raw}] = time.monotonic_ns() + int(seconds * 1e9)

    def unblock(self, source: str) -> bool:
        family, raw = _src(source)
        return self.blocklist.delete({"family": family, "addr": raw})

    def sweep(self) -> list[str]:
        """Delete expired blocks; returns the sources released."""
        now = time.monotonic_ns()
        gone = [k for k, until in self.blocklist.items() if until <= now]
        for k in gone:
            self.blocklist.delete(k)
        return [addr_str(k.family, k.addr) for k in gone]

    # ---- events ----------------------------------------------------------------------------------------

    def event_source(self) -> EventSource:
        return EventSource.from_object(self.obj, "syn", transport=self.transport, interfaces=self.interfaces)


def _src(source: str) -> tuple[int, list[int]]:
    try:
        family, raw = addr_bytes(source)
    except ValueError as e:
        raise BpfgateError("edit SYN block list", str(e)) from None
    return family, list(raw)
