"""The steering family's kernel side: programs, pinned maps, rules live, counters (see the package)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from bpfgate import attach, contract
from bpfgate.errors import BadInput, BpfgateError, NotFound, NotSupported
from bpfgate.kernel import netlink, pins
from bpfgate.kernel import netns as netns_
from bpfgate.kernel.maps import Map, sum_values
from bpfgate.kernel.objects import BpfObject

from . import rules
from .rules import Rule

C = contract.constants("steer")
FAMILY = "steer"
MAPS = ("steer_rules", "steer_rule_stats", "steer_ifs", "steer_devs", "steer_stats", "bg_ct")
RULES_MAX = C.BG_STEER_RULES_MAX
IF_RETURN = C.BG_STEER_IF_RETURN
STATS = C.names("bg_steer_stat", {
    "BG_STEER_STAT_STEERED": "steered", "BG_STEER_STAT_RETURNED": "returned",
    "BG_STEER_STAT_RESOLVING": "resolving", "BG_STEER_STAT_NO_NEIGH": "no_neigh",
    "BG_STEER_STAT_IF_GONE": "if_gone", "BG_STEER_STAT_OFF_LINK": "off_link", "BG_STEER_STAT_TOO_BIG": "too_big",
    "BG_STEER_STAT_FIB_ERROR": "fib_error", "BG_STEER_STAT_UNVERIFIED": "unverified",
    "BG_STEER_STAT_TRACKED": "tracked", "BG_STEER_STAT_CT_FULL": "ct_full",
    "BG_STEER_STAT_MAX": None})
FAILURES = ("no_neigh", "if_gone", "off_link", "too_big", "fib_error")
METHODS = ("auto", "tc", "tcx")
DIRECTIONS = ("ingress", "egress")


def pin_dir(netns: str | None = None) -> str:
    return pins.pin_path(FAMILY, netns or "-")


def _pinned(netns: str | None) -> bool:
    return all(os.path.exists(os.path.join(pin_dir(netns), m)) for m in MAPS)


def attached(netns: str | None = None) -> bool:
    """Whether steering is attached in `netns` (its maps pinned)."""
    return _pinned(netns)


@dataclass(frozen=True)
class RuleState:
    """A rule as the kernel has it, with its counters."""

    id: int
    rule: Rule
    ifindex: int
    present: bool   # its interface still exists
    steered: int
    failed: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.rule.to_dict(), "ifindex": self.ifindex, "present": self.present,
                "steered": self.steered, "failed": self.failed}


@dataclass(frozen=True)
class Interface:
    dev: str
    ifindex: int
    symmetric: bool  # replies of connections that arrived here go back out here
    present: bool

    def to_dict(self) -> dict[str, Any]:
        return {"dev": self.dev, "ifindex": self.ifindex, "symmetric": self.symmetric, "present": self.present}


class Steering:
    """The steering of one network namespace, through its pinned maps."""

    def __init__(self, netns: str | None, maps: dict[str, Map]):
        self.netns = netns
        self.maps = maps

    # ---- opening and attaching ------------------------------------------------------------------------

    @classmethod
    def open(cls, netns: str | None = None, *, op: str = "steer") -> "Steering":
        if not _pinned(netns):
            raise NotFound(op, "steering is not attached" + (f" in netns {netns!r}" if netns else ""),
                           hint="bpfgate steer attach DEV...")
        maps = {m: Map.from_pin(os.path.join(pin_dir(netns), m), *_types().get(m, (None, None))) for m in MAPS}
        return cls(netns, maps)

    @classmethod
    def attach(cls, devs: Iterable[str], netns: str | None = None, *, symmetric: Iterable[str] = (),
               method: str = "auto") -> "Steering":
        """Attach steering at ingress and egress of each of `devs` (again on a device where it is attached:
        only its symmetric flag changes). `symmetric`: the devices whose connections' replies go back out
        of them."""
        devs, symmetric = list(devs), set(symmetric)
        op = "steer attach"
        if method not in METHODS:
            raise BpfgateError(op, f"method must be one of {', '.join(METHODS)}, not {method!r}")
        if not devs:
            raise BpfgateError(op, "no interface given")
        if symmetric - set(devs):
            raise BpfgateError(op, f"symmetric return on {', '.join(sorted(symmetric - set(devs)))}: "
                                   "not among the interfaces attached")
        macs = {d: _l2(d, netns, op) for d in devs}   # every check before anything is attached
        obj = _load(netns)
        try:
            for dev in devs:
                if not attach.find(dev, None, netns, owner=FAMILY):
                    _attach_dev(obj, dev, netns, method)
        finally:
            obj.close()
        s = cls.open(netns, op=op)
        for dev in devs:
            ifindex, mac = macs[dev]
            s._set_if(ifindex, mac, dev in symmetric)
        return s

    def _set_if(self, ifindex: int, mac: bytes, symmetric: bool) -> None:
        v = self.maps["steer_ifs"].value_type()
        v.mac[:] = list(mac)
        v.flags = IF_RETURN if symmetric else 0
        self.maps["steer_ifs"].update(ifindex, v)
        with netns_.entered(self.netns):   # the kernel resolves a devmap's ifindex in the caller's namespace
            self.maps["steer_devs"].update(ifindex, ifindex)

    def set_symmetric(self, dev: str, on: bool) -> None:
        ifindex, mac = _l2(dev, self.netns, "steer symmetric")
        if self.maps["steer_ifs"].lookup(ifindex) is None:
            raise NotFound("steer symmetric", f"steering is not attached on {dev}", hint=f"bpfgate steer attach {dev}")
        self._set_if(ifindex, mac, on)

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> "Steering":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- rules ----------------------------------------------------------------------------------------

    def add(self, rule: Rule) -> int:
        """Add `rule` (or replace the rule with the same source/proto/port); its id. Live."""
        op = "steer add"
        ifindex, _ = _l2(rule.dev, self.netns, op)
        if self.maps["steer_ifs"].lookup(ifindex) is None:
            raise BpfgateError(op, f"steering is not attached on {rule.dev}: its next hops are on no attached link",
                               hint=f"bpfgate steer attach {rule.dev} ...")
        key = rules.key_of(rule)
        table = self.maps["steer_rules"]
        old = table.lookup(key)
        if old is not None:
            rule_id = old.id
        else:
            used = {v.id for _, v in table.items()}
            free = next((i for i in range(RULES_MAX) if i not in used), None)
            if free is None:
                raise BpfgateError(op, f"the rule table is full ({RULES_MAX} rules)")
            rule_id = free
            self.maps["steer_rule_stats"].update(rule_id, self.maps["steer_rule_stats"].value_type())
        table.update(key, rules.value_of(rule, rule_id, ifindex))
        return rule_id

    def delete(self, source: str, proto: str | None = None, port: int | None = None) -> bool:
        """Delete the rule with this source/proto/port (the next hop and device do not matter)."""
        probe = rules.make(source, dev="-", via="0.0.0.1", proto=proto, port=port, op="steer del")
        return self.maps["steer_rules"].delete(rules.key_of(probe))

    def clear(self) -> int:
        return self.maps["steer_rules"].clear()

    def rules(self) -> list[RuleState]:
        names = {i.ifindex: i.name for i in netlink.interfaces(self.netns)}
        stats = self.maps["steer_rule_stats"]
        out = []
        for k, v in self.maps["steer_rules"].items():
            rule, rule_id, ifindex = rules.decode(k, v, names.get(v.ifindex, f"ifindex {v.ifindex}"))
            s = sum_values(stats.lookup(rule_id))
            out.append(RuleState(rule_id, rule, ifindex, ifindex in names, s.steered, s.failed))
        return sorted(out, key=lambda r: r.id)

    # ---- what it did ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        m = self.maps["steer_stats"]
        return {name: sum(m.lookup(idx)) for idx, name in STATS.items() if name}

    def interfaces(self) -> list[Interface]:
        names = {i.ifindex: i.name for i in netlink.interfaces(self.netns)}
        return sorted((Interface(names.get(k, f"ifindex {k}"), k, bool(v.flags & IF_RETURN), k in names)
                       for k, v in self.maps["steer_ifs"].items()), key=lambda i: i.ifindex)


# ---- loading and attaching ------------------------------------------------------------------------------

def _types() -> dict[str, tuple[Any, Any]]:
    """(key, value) ctypes of the maps Python reads, from the object's BTF."""
    u32, u64 = ctypes.c_uint32, ctypes.c_uint64
    return {"steer_rules": (rules.key_type(), rules.rule_type()),
            "steer_rule_stats": (u32, contract.struct("steer", "bg_steer_rule_stat")),
            "steer_ifs": (u32, contract.struct("steer", "bg_steer_if")),
            "steer_devs": (u32, u32), "steer_stats": (u32, u64)}


def _l2(dev: str, netns: str | None, op: str) -> tuple[int, bytes]:
    try:
        ifindex, mac = netlink.ethernet_mac(dev, netns)
    except NotFound:
        raise NotFound(op, f"no interface {dev!r}" + (f" in netns {netns!r}" if netns else "")) from None
    if mac is None:
        raise BadInput(op, f"{dev} is not an Ethernet device: steering rewrites or resolves the next hop's "
                               "MAC address (bpf_redirect_neigh needs an L2 device)")
    return ifindex, mac


def _load(netns: str | None) -> BpfObject:
    """The steer object, loaded on the namespace's pinned maps (pinning them the first time)."""
    obj = BpfObject.open("steer")
    reused: list[Map] = []
    try:
        shared = _pinned(netns)
        if shared:
            for name in MAPS:
                m = Map.from_pin(os.path.join(pin_dir(netns), name))
                reused.append(m)
                obj.reuse_map(name, m.fd)
        obj.load()
        if not shared:
            for name in MAPS:
                obj.map(name).pin(os.path.join(pin_dir(netns), name))
    except BaseException:
        obj.close()
        if not _pinned(netns):
            _unpin_maps(netns)
        raise
    finally:
        for m in reused:
            m.close()
    return obj


def _attach_dev(obj: BpfObject, dev: str, netns: str | None, method: str) -> None:
    done: list[attach.Attachment] = []
    try:
        for direction in DIRECTIONS:
            prog = obj.program(f"bg_steer_{direction}")
            point = attach.Point.device(dev, direction, netns)
            if method in ("auto", "tcx"):
                try:
                    # a pin of its own: the layer's default TCX pin path is per hook, not per family
                    pin = pins.pin_path("links", netns or "-", dev, f"tcx-{direction}-{FAMILY}")
                    done.append(attach.tcx.attach(prog, point, attach.Options(owner=FAMILY, pin=pin)))
                    continue
                except NotSupported:
                    if method == "tcx":
                        raise
            done.append(attach.tc.attach(prog, point, attach.Options(owner=FAMILY, method="tc", replace=False)))
    except BaseException:
        for att in done:
            attach.detach(att)
        raise


def _unpin_maps(netns: str | None) -> list[str]:
    removed = []
    for name in MAPS:
        path = os.path.join(pin_dir(netns), name)
        if pins.unpin(path):
            removed.append(f"pin {path}")
    pins.prune_empty(pin_dir(netns))
    return removed


def detach(att: attach.Attachment) -> list[str]:
    """`bpfgate detach` of a steering attachment: the attachment, then the device's entry in the
    namespace's maps once neither of its hooks is left, then the maps with the namespace's last one."""
    done = attach.detach(att)
    left = attach.find(None, None, att.netns, owner=FAMILY)
    if not left:
        return done + _unpin_maps(att.netns)
    if not [a for a in left if a.dev == att.dev] and _pinned(att.netns):
        with Steering.open(att.netns) as s:
            s.maps["steer_ifs"].delete(att.ifindex)
            s.maps["steer_devs"].delete(att.ifindex)
    return done


class SteerCollector:
    """Prometheus, read at scrape time from the namespace's steering (nothing when none is attached):
    bpfgate_steer_packets_total{outcome} (steered, returned, resolving, unverified and each failure reason:
    no_neigh, if_gone, off_link, too_big, fib_error) and bpfgate_steer_rule_packets_total{rule, source, dev,
    result} (result steered | failed)."""

    def __init__(self, netns: str | None = None):
        self.netns = netns

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        total = CounterMetricFamily("bpfgate_steer_packets", "Packets egress steering acted on, by outcome "
                                    "(failures passed unchanged)", labels=["outcome"])
        per_rule = CounterMetricFamily("bpfgate_steer_rule_packets", "Packets of an explicit steering rule",
                                       labels=["rule", "source", "dev", "result"])
        if _pinned(self.netns):
            with Steering.open(self.netns) as s:
                for name, n in s.stats().items():
                    total.add_metric([name], n)
                for r in s.rules():
                    for result, n in (("steered", r.steered), ("failed", r.failed)):
                        per_rule.add_metric([str(r.id), r.rule.source, r.rule.dev, result], n)
        yield from (total, per_rule)
