"""Inspection of the policy engine (bpfgate.engine) from its pins: `log` rule events in the event
pipeline, per-rule counters for Prometheus and `bpfgate top`.

    srcs = engine_sources(["eth0"], netns)          # one EventSource per engine attached on eth0
    EventStream(srcs)                                # rule_log events named by the rule's NAME
    RuleCollector(netns)                             # bpfgate_rule_{packets,bytes}_total{interface,hook,rule}
    RuleView("eth0", netns).read()                  # [RuleHits] for the top panel

Only the engine's public API is used (Engine.attached / Engine.open / counters / rule_ids / policy).
Rule ids are per engine (slots), so each engine source names its own events. Names follow live edits:
an id never seen, or a check older than NAMES_TTL, re-reads the engine's state.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bpfgate import contract
from bpfgate.errors import BpfgateError
from bpfgate.inspect.events import (
    EventKind,
    EventSource,
    addr_str,
    register_kind,
    tcp_flags_str,
)
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.maps import Map
from bpfgate.kernel.objects import packaged_path
from bpfgate.policy.model import CT_STATES as MODEL_CT_STATES

C = contract.constants("engine")
EV_RULE_LOG = C.BG_EV_RULE_LOG
ENGINE_HOOKS = C.names("bg_engine_hook", {"BG_ENGINE_TC_INGRESS": "tc-ingress", "BG_ENGINE_TC_EGRESS": "tc-egress",
                                          "BG_ENGINE_XDP": "xdp", "BG_ENGINE_CGROUP_INGRESS": "cgroup-ingress",
                                          "BG_ENGINE_CGROUP_EGRESS": "cgroup-egress",
                                          "BG_ENGINE_CGROUP_CONNECT": "cgroup-connect",
                                          "BG_ENGINE_CGROUP_BIND": "cgroup-bind"})
ACTIONS = C.names("bg_action", {"BG_ACT_PASS": "pass", "BG_ACT_DROP": "drop", "BG_ACT_REDIRECT": "redirect",
                                "BG_ACT_REJECT": "reject"})
CT_STATES = {0: None, **{value: word for word, value in MODEL_CT_STATES.items()}}
NAMES_TTL = 0.5                        # seconds a name table is trusted without re-reading the state
DEFAULT_RULE = "(default)"


def _rule_log_fields(rec: Any, ctx: Any) -> dict:
    fam = rec.family
    return {
        "interface": ctx.ifname(rec.ifindex),
        "ifindex": rec.ifindex,
        "hook": ENGINE_HOOKS.get(rec.hook, str(rec.hook)),
        "rule": ctx.rule_name(rec.rule_id),
        "rule_id": rec.rule_id,
        "action": ACTIONS.get(rec.action, str(rec.action)),
        "family": fam,
        "proto": rec.proto,
        "src": addr_str(fam, rec.src) if fam in (4, 6) else None,
        "sport": rec.sport,
        "dst": addr_str(fam, rec.dst) if fam in (4, 6) else None,
        "dport": rec.dport,
        "ct_state": CT_STATES.get(rec.ct_state, str(rec.ct_state)),
        "flags": tcp_flags_str(rec.tcp_flags),
        "len": rec.pkt_len,
    }


register_kind(EventKind(EV_RULE_LOG, "rule_log", "bg_rule_log_event", _rule_log_fields))


def _engine_mod():
    from bpfgate import (
        engine,  # imported late: the inspection commands work without an engine
    )

    return engine


def attached(netns_name: str | None, devs: Iterable[str] | None = None) -> list[tuple[str, Any]]:
    """(dev, hook) of the engines attached in `netns_name`, only on `devs` if given."""
    try:
        found = _engine_mod().Engine.attached(netns_name)
    except (ImportError, OSError):
        return []
    want = None if devs is None else set(devs)
    return [(d, h) for d, h in found if want is None or d in want]


def _u64(v: Any) -> int:
    """A per-CPU u64 as the map decodes it: an int (typed from BTF) or raw bytes."""
    return v if isinstance(v, int) else int.from_bytes(bytes(v), "little")


class _Gone(Exception):
    pass


def _alive(eng: Any) -> bool:
    """Whether the engine is still attached. Checked before every read: reading a detached engine's state
    would recreate its state directory (the engine's reader takes its lock file there)."""
    return eng.store is None or eng.store.exists()


class EngineNames:
    """rule id -> name of one attached engine, re-read after live edits (see module docstring)."""

    def __init__(self, dev: str, hook: Any, netns_name: str | None):
        self.dev, self.hook, self.netns = dev, hook, netns_name
        self._eng: Any = None
        self._names: dict[int, str] = {}
        self._checked = 0.0

    def _refresh(self) -> None:
        self._checked = time.monotonic()
        try:
            if self._eng is None:
                self._eng = _engine_mod().Engine.open(self.dev, self.hook, self.netns)
            self._names = {rid: name for name, rid in self._eng.rule_ids().items()}
        except (BpfgateError, OSError, _Gone):
            self.close()   # detached meanwhile: keep the last names, try again later

    def __call__(self, rule_id: int) -> str | None:
        if rule_id not in self._names or time.monotonic() - self._checked > NAMES_TTL:
            self._refresh()
        return self._names.get(rule_id)

    def close(self) -> None:
        if self._eng is not None:
            try:
                self._eng.close()
            finally:
                self._eng = None


def source_name(dev: str, hook: Any) -> str:
    return f"engine:{dev}/{getattr(hook, 'value', hook)}"


def engine_source(dev: str, hook: Any, netns_name: str | None, *, interfaces: dict[int, str] | None = None
                  ) -> EventSource:
    """The log events of the engine attached at (dev, hook): its pinned `events` ring buffer and
    `bg_stats` (loss), record layouts from the engine object's BTF, names from its state."""
    pdir = _engine_mod().pin_dir(dev, hook, netns_name)
    ring = os.path.join(pdir, "events")
    if not os.path.exists(ring):
        raise BpfgateError(f"read log events of the engine on {dev} {getattr(hook, 'value', hook)}",
                           f"its ring buffer pin {ring} is missing")
    stats = os.path.join(pdir, "bg_stats")
    src = EventSource(source_name(dev, hook), Map.from_pin(ring),
                      Map.from_pin(stats, ctypes.c_uint32, ctypes.c_uint64) if os.path.exists(stats) else None,
                      Btf.from_elf(str(packaged_path("engine"))),  # own Btf: own record types per source
                      interfaces if interfaces is not None else {})
    src.rule_names = EngineNames(dev, hook, netns_name)
    if not src.interfaces:
        from bpfgate.kernel import netlink

        try:
            src.interfaces[netlink.ifindex(dev, netns_name)] = dev
        except BpfgateError:
            pass
    return src


def engine_sources(devs: Iterable[str], netns_name: str | None) -> list[EventSource]:
    """An EventSource per engine attached on any of `devs` (none attached: an empty list)."""
    out: list[EventSource] = []
    try:
        for dev, hook in attached(netns_name, devs):
            out.append(engine_source(dev, hook, netns_name))
    except BaseException:
        close_sources(out)
        raise
    return out


def close_sources(sources: Iterable[EventSource]) -> None:
    for s in sources:
        names = getattr(s, "rule_names", None)
        if isinstance(names, EngineNames):
            names.close()
        for m in (s.ringbuf, s.stats):
            if m is not None:
                m.close()


# ---- counters ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LogStats:
    dev: str
    hook: str
    events: int    # log events submitted to the engine's ring buffer
    lost: int      # log events lost: the ring buffer was full (its reader fell behind, or nobody reads)


@dataclass(frozen=True)
class RuleHits:
    dev: str
    hook: str
    rule: str
    action: str      # pass | drop | redirect (the default rule: allow -> pass, deny -> drop)
    packets: int
    bytes: int


class RuleReader:
    """Per-rule counters of every engine attached in a namespace (optionally only on some devices),
    engines opened once and reopened when one is detached and attached again."""

    def __init__(self, netns_name: str | None = None, devs: Iterable[str] | None = None):
        self.netns = netns_name
        self.devs = None if devs is None else tuple(devs)
        self._open: dict[tuple[str, str], Any] = {}
        self._prog: dict[tuple[str, str], int] = {}
        self.log_stats: list[LogStats] = []   # of the engines of the last read()
        self.redirect_gone: list[tuple[str, str, dict[str, int]]] = []   # (dev, hook, Engine.redirect_stats())

    def _engine(self, dev: str, hook: Any) -> Any:
        """The engine at (dev, hook), opened once; reopened when another engine was attached there since
        (its maps are new: the old object's would read stale counters)."""
        key = (dev, getattr(hook, "value", hook))
        eng = self._open.get(key)
        if eng is not None and _alive(eng) and eng.prog_id != self._prog.get(key):
            self._drop(key)
            eng = None
        if eng is None:
            eng = self._open[key] = _engine_mod().Engine.open(dev, hook, self.netns)
            self._prog[key] = eng.prog_id
        return eng

    def read(self) -> list[RuleHits]:
        out: list[RuleHits] = []
        present = set()
        self.log_stats = []
        self.redirect_gone = []
        for dev, hook in attached(self.netns, self.devs):
            key = (dev, getattr(hook, "value", hook))
            present.add(key)
            try:
                out.extend(self._read_one(dev, hook))
            except (BpfgateError, OSError, _Gone):
                self._drop(key)       # detached between the listing and the read, or pins replaced
                try:
                    out.extend(self._read_one(dev, hook))
                except (BpfgateError, OSError, _Gone):
                    self._drop(key)
        for key in set(self._open) - present:
            self._drop(key)
        return out

    def _read_one(self, dev: str, hook: Any) -> list[RuleHits]:
        eng = self._engine(dev, hook)
        if not _alive(eng):
            raise _Gone
        counters = eng.counters()
        pol = eng.policy()
        h = getattr(hook, "value", hook)
        stats = [sum(_u64(v) for v in (eng.maps["bg_stats"].lookup(i) or [])) for i in (0, 1)]
        # enum bg_stat: BG_STAT_EVENTS, BG_STAT_EVENTS_LOST
        self.log_stats.append(LogStats(dev, h, stats[0], stats[1]))
        self.redirect_gone.append((dev, h, eng.redirect_stats()))
        actions = {r.name: r.action for r in pol.rules}
        actions[DEFAULT_RULE] = "pass" if pol.default == "allow" else "drop"
        return [RuleHits(dev, h, name, actions.get(name, "?"), c.packets, c.bytes) for name, c in counters.items()]

    def _drop(self, key: tuple[str, str]) -> None:
        eng = self._open.pop(key, None)
        if eng is not None:
            try:
                eng.close()
            except BpfgateError:
                pass

    def close(self) -> None:
        for key in list(self._open):
            self._drop(key)

    def __enter__(self) -> RuleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RuleCollector:
    """Prometheus: bpfgate_rule_packets_total / bpfgate_rule_bytes_total {interface, hook, rule} of every
    engine attached in the namespace, read at scrape time; bpfgate_rule_drops_total{interface, hook}
    sums the packets of drop rules (the default rule included when it denies; packets a rate limit drops
    over a pass rule are not in it); bpfgate_rule_log_events_total / _lost_total {interface, hook}: the
    engine's log events and their loss (exact, counted by the engine); bpfgate_redirect_target_gone_total
    {interface, hook, fallback}: packets of redirect rules whose target interface was gone."""

    def __init__(self, netns_name: str | None = None, devs: Iterable[str] | None = None):
        self.reader = RuleReader(netns_name, devs)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        labels = ["interface", "hook", "rule"]
        pk = CounterMetricFamily("bpfgate_rule_packets", "Packets matched by a policy rule", labels=labels)
        by = CounterMetricFamily("bpfgate_rule_bytes", "Bytes matched by a policy rule", labels=labels)
        drops = CounterMetricFamily("bpfgate_rule_drops", "Packets dropped by policy rules whose action is drop",
                                    labels=["interface", "hook"])
        dsum: dict[tuple[str, str], int] = {}
        for h in self.reader.read():
            pk.add_metric([h.dev, h.hook, h.rule], h.packets)
            by.add_metric([h.dev, h.hook, h.rule], h.bytes)
            dsum.setdefault((h.dev, h.hook), 0)
            if h.action == "drop":
                dsum[(h.dev, h.hook)] += h.packets
        for (dev, hook), n in sorted(dsum.items()):
            drops.add_metric([dev, hook], n)
        ev = CounterMetricFamily("bpfgate_rule_log_events", "Log events of `log` rules submitted to the engine's "
                                 "ring buffer", labels=["interface", "hook"])
        lost = CounterMetricFamily("bpfgate_rule_log_events_lost", "Log events lost: the engine's ring buffer was full",
                                   labels=["interface", "hook"])
        for st in self.reader.log_stats:
            ev.add_metric([st.dev, st.hook], st.events)
            lost.add_metric([st.dev, st.hook], st.lost)
        gone = CounterMetricFamily("bpfgate_redirect_target_gone", "Packets of redirect rules whose target "
                                   "interface was gone, by what the rule did instead (passed, dropped)",
                                   labels=["interface", "hook", "fallback"])
        for dev, h, st in self.reader.redirect_gone:
            gone.add_metric([dev, h, "passed"], st["gone_passed"])
            gone.add_metric([dev, h, "dropped"], st["gone_dropped"])
        yield from (pk, by, drops, ev, lost, gone)

    def close(self) -> None:
        self.reader.close()
