"""SYN counter and SYN-flood detector at XDP (bpf/syn.bpf.c).

    with SynCounter(rate=200, block=10) as syn:      # >200 SYN/s from one source: event + 10 s drop
        syn.attach("eth0")                           # XDP link: gone when closed, even if we crash
        syn.totals()                                 # {ifindex: SynTotal(syns, blocked)}
        syn.top(10)                                  # busiest sources
        EventStream([syn.event_source()])            # syn_flood events

The block list (map `syn_blocklist`, source -> CLOCK_MONOTONIC expiry) is checked per packet, so a
block ends on time by itself; sweep() only deletes expired entries.

Blocking through the policy engine: when an engine (bpfgate.engine) is attached at the interface's
tc-ingress or XDP, use_engine(EngineBlocker(...)) makes the XDP program only detect; each flood then
becomes a temporary drop rule `syn-flood-<addr>` (TCP SYN without ACK from that source) added live to
the engine, deleted by sweep() when it expires and by close() for every rule still in place. The
releasing process is this one: if it dies without closing, the rules stay (listed in the engine's
policy under their syn-flood- names).

Events go through the `events` ring buffer, or the perf buffer on kernels without ring buffers
(transport="auto" picks; "perf" forces it).

Totals per interface are exact. Per-source counts live in an LRU map (max_sources): a spoofed flood
from more sources than that evicts the quietest ones, so `top` stays right while the long tail is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bpfgate import attach as attach_layer
from bpfgate.errors import BpfgateError
from bpfgate.inspect import events
from bpfgate.inspect.events import EventSource, addr_bytes, addr_str
from bpfgate.kernel import netlink
from bpfgate.signals import signals_deferred

PROGRAM = "bg_syn_xdp"
OWNER = "syn"
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
        obj, self.transport = events.open_producer("syn", transport=transport, ring_size=ring_size,
                                                   max_entries={"syn_sources": max_sources})
        self.obj = obj
        self.prog = obj.program(PROGRAM)
        self.interfaces: dict[int, str] = {}
        self._links: list[attach_layer.Attachment] = []   # XDP links this process holds
        self.engine_blockers: list[EngineBlocker] = []
        self.configure(rate, block)

    # ---- attach ------------------------------------------------------------------------------------

    def attach(self, dev: str | int, netns_name: str | None = None) -> int:
        """Attach to `dev` (in `netns_name`) as an XDP link; returns the ifindex."""
        ifindex = netlink.ifindex(dev, netns_name)
        name = netlink.ifname(dev, netns_name)
        att = attach_layer.xdp.attach(self.prog, attach_layer.Point.device(name, "", netns_name),
                                      attach_layer.Options(owner=OWNER, link=True), pinned=False)
        self._links.append(att)   # XDP: one program per device (bpfgate.attach.order)
        self.interfaces[ifindex] = name
        return ifindex

    def close(self) -> None:
        """Detach everything this counter attached, remove the engine rules it added, free the object."""
        try:
            for b in self.engine_blockers:
                b.close()
        finally:
            self.engine_blockers = []
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
        kernel_block = 0 if self.engine_blockers else int(self.block_s * 1e9)   # the engine blocks instead
        self.obj.map("syn_config")[0] = {"rate": self.rate, "block_ns": kernel_block}

    def use_engine(self, blocker: "EngineBlocker") -> None:
        """Block floods from blocker's interface with engine rules instead of the XDP block list."""
        self.engine_blockers.append(blocker)
        self.configure(self.rate, self.block_s)
        blocker.adopt_leftovers(self.block_s)

    def blocker_for(self, ifindex: int) -> "EngineBlocker | None":
        for b in self.engine_blockers:
            if b.ifindex == ifindex:
                return b
        return None

    def on_flood(self, ev: dict) -> dict:
        """A syn_flood event (EventStream.describe form) seen: block its source through the engine of
        its interface when there is one; returns the event as it should be reported."""
        b = self.blocker_for(ev.get("ifindex", -1))
        if b is None or not self.block_s:
            return ev
        try:
            until = b.block(ev["src"], self.block_s)
        except BpfgateError as e:   # e.g. the engine was detached, or its policy has no room: say so, go on
            return {**ev, "blocked": False, "block_until": None, "block_error": str(e)}
        return {**ev, "blocked": True, "block_until": b.clock_iso(until), "blocked_by": f"engine rule {b.rule_name(ev['src'])}"}

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
        """Entries still in force (expired ones are ignored by the datapath, and by this), engine rules included."""
        now = time.monotonic_ns()
        out = [Block(addr_str(k.family, k.addr), until) for k, until in self.blocklist.items() if until > now]
        for b in self.engine_blockers:
            out += b.blocks()
        return out

    def block(self, source: str, seconds: float) -> None:
        family, raw = _src(source)
        self.blocklist[{"family": family, "addr": raw}] = time.monotonic_ns() + int(seconds * 1e9)

    def unblock(self, source: str) -> bool:
        family, raw = _src(source)
        return self.blocklist.delete({"family": family, "addr": raw})

    def sweep(self) -> list[str]:
        """Delete expired blocks (and expired engine rules); returns the sources released."""
        now = time.monotonic_ns()
        gone = [k for k, until in self.blocklist.items() if until <= now]
        for k in gone:
            self.blocklist.delete(k)
        released = [addr_str(k.family, k.addr) for k in gone]
        for b in self.engine_blockers:
            released += b.sweep()
        return released

    # ---- events ----------------------------------------------------------------------------------------

    def event_source(self) -> EventSource:
        return EventSource.from_object(self.obj, "syn", transport=self.transport, interfaces=self.interfaces)


def _src(source: str) -> tuple[int, list[int]]:
    try:
        family, raw = addr_bytes(source)
    except ValueError as e:
        raise BpfgateError("edit SYN block list", str(e)) from None
    return family, list(raw)


RULE_PREFIX = "syn-flood-"
OWNER = "syn-blocker"   # Rule.owner of its rules: `rules` shows it, `policy export` leaves them out


class EngineBlocker:
    """Temporary drop rules for SYN-flooding sources in the policy engine at (dev, hook): TCP SYN without
    ACK from the source, first in the policy, added and deleted live through the control plane
    (policyctl.add_rule / delete_rule: its lock, its checks, the rules owned by "syn-blocker"), so an `apply`
    running meanwhile waits for it or it for the apply, and the apply keeps its blocks."""

    def __init__(self, dev: str, hook: Any, netns_name: str | None = None):
        from bpfgate.engine import Engine

        self.dev, self.hook, self.netns = dev, getattr(hook, "value", hook), netns_name
        self.ifindex = netlink.ifindex(dev, netns_name)
        self.engine = Engine.open(dev, hook, netns_name)
        self.active: dict[str, int] = {}   # source -> CLOCK_MONOTONIC expiry (ns)
        self.added: list[str] = []          # rule names this process added and has not deleted yet
        self._clock = events.Clock()

    @staticmethod
    def rule_name(source: str) -> str:
        return RULE_PREFIX + source

    def clock_iso(self, mono_ns: int) -> str:
        return self._clock.iso(mono_ns)

    def block(self, source: str, seconds: float) -> int:
        """Add (or extend) the rule for `source`; returns the expiry (CLOCK_MONOTONIC ns)."""
        import ipaddress

        from bpfgate import policyctl
        from bpfgate.policy.model import Rule

        until = time.monotonic_ns() + int(seconds * 1e9)
        if self.engine.store is not None and not self.engine.store.exists():
            raise BpfgateError(f"block {source} through the engine on {self.dev} {self.hook}",
                               "the engine was detached")
        if source not in self.active:
            net = ipaddress.ip_network(source)   # a host address: /32 or /128
            rule = Rule.model_validate({"name": self.rule_name(source), "src": str(net), "protocol": "tcp",
                                        "tcp_flags": "syn,!ack", "action": "drop", "owner": OWNER})
            # a SIGTERM between the rule going live and its bookkeeping would leave it behind at close()
            with signals_deferred():
                if rule.name not in self.engine.rule_ids():   # else left by a run that died: take it over
                    policyctl.add_rule(self.dev, self.hook, rule, netns=self.netns, position=0)
                self.added.append(rule.name)
        self.active[source] = until
        return until

    def adopt_leftovers(self, seconds: float) -> list[str]:
        """Blocks left in the engine by a run that died (SIGKILL, power loss) expire `seconds` from now and
        go when this run ends, as its own do: else they would drop their sources' SYNs for good."""
        until = time.monotonic_ns() + int(seconds * 1e9)
        found = [r.name for r in self.engine.policy().rules
                 if r.owner == OWNER and r.name.startswith(RULE_PREFIX) and r.name not in self.added]
        for name in found:
            self.added.append(name)
            self.active[name.removeprefix(RULE_PREFIX)] = until
        return [n.removeprefix(RULE_PREFIX) for n in found]

    def blocks(self) -> list[Block]:
        return [Block(src, until) for src, until in self.active.items()]

    def sweep(self) -> list[str]:
        now = time.monotonic_ns()
        gone = [src for src, until in self.active.items() if until <= now]
        for src in gone:
            self._delete(src)
        return gone

    def _delete(self, source: str) -> None:
        from bpfgate import policyctl
        from bpfgate.errors import NotFound, PolicyError

        name = self.rule_name(source)
        if self.engine.store is not None and not self.engine.store.exists():
            self.active.pop(source, None)
            self.added = [n for n in self.added if n != name]
            return   # the engine was detached: its rules went with it
        with signals_deferred():
            try:
                policyctl.delete_rule(self.dev, self.hook, name, netns=self.netns)
            except (NotFound, PolicyError, KeyError):
                pass   # someone removed it already
            self.active.pop(source, None)
            if name in self.added:
                self.added.remove(name)

    def close(self) -> None:
        """Delete every rule still in place (the engine may have been detached meanwhile: then nothing to do)."""
        try:
            # `added` also holds a rule whose source a signal kept out of `active`
            for src in dict.fromkeys([*self.active, *(n.removeprefix(RULE_PREFIX) for n in self.added)]):
                try:
                    self._delete(src)
                except BpfgateError:
                    pass
        finally:
            self.engine.close()


def engine_for_blocking(dev: str, netns_name: str | None) -> Any:
    """The hook of a policy engine attached at `dev`'s XDP or tc-ingress (XDP first), or None."""
    from bpfgate.inspect.rules import attached

    hooks = {getattr(h, "value", h): h for d, h in attached(netns_name, [dev])}
    for name in ("xdp", "tc-ingress"):
        if name in hooks:
            return hooks[name]
    return None
