"""Packet capture in the kernel (bpf/capture.bpf.c): only packets matching the filter leave the kernel,
each cut to the snaplen, with its direction, hook and (when the gate reports it) verdict.

    filt = CaptureFilter.parse(proto="tcp", port=443, host="198.18.0.0/15")
    with Capture("eth0", filt, snaplen=128) as cap:          # attaches at ingress + egress
        for pkt in cap.packets(timeout_ms=100):              # CapturedPacket: data, lengths, wall time
            ...
    capture_to_file("out.pcapng", "eth0", filt, count=100, pcapng=True)

The record (struct bg_capture_event in capture.h) carries a verdict and rule id. The capture program
runs first at TC, before any decision, so its verdict is "unknown", except with `--rule NAME`
(rule_capture): the filter is then that policy rule's match and the verdict its action, labelled
"verdict=drop (rule NAME)" (see rule_capture for what that label does and does not promise).

When a policy engine is attached on the interface, `--rule NAME` and `--engine` use the engine itself
(EngineCapture): it writes the same record, hook "gate", with its real verdict and the deciding rule's id,
after its decision, into its pinned ring buffer bg_capture_ring, while its pinned config bg_capture_cfg
says so (enabled, snaplen, rule id + 1 or 0 for every packet). The config is switched off again when the
capture ends (count, duration, Ctrl-C, SIGTERM); a capture killed with SIGKILL leaves it on until the next
capture of that engine takes it over (the config names its owner's pid) and ends.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

from bpfgate import contract
from bpfgate.errors import BadInput, BpfgateError, NotSupported
from bpfgate.inspect.capture_expr import SIDES, compile_expression
from bpfgate.inspect.events import Clock
from bpfgate.inspect.flows import DIR_NAMES, open_pair
from bpfgate.inspect.pcap import PcapWriter, open_writer
from bpfgate.kernel.btf import require_helper
from bpfgate.kernel.maps import possible_cpus
from bpfgate.kernel.ringbuf import RingBuffer
from bpfgate.signals import signals_deferred, sigterm_as_interrupt

C = contract.constants("capture")
MAX_SNAPLEN = C.BG_CAPTURE_MAX  # an skb is at most 64 KiB
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}
HOOKS = C.names("bg_capture_hook", {"BG_HOOK_TC": "tc", "BG_HOOK_XDP": "xdp", "BG_HOOK_GATE": "gate"})
VERDICTS = C.names("bg_capture_verdict", {"BG_VERDICT_UNKNOWN": "unknown", "BG_VERDICT_PASS": "pass",
                                          "BG_VERDICT_DROP": "drop", "BG_VERDICT_REDIRECT": "redirect"})
STAT_EVENTS, STAT_EVENTS_LOST = C.BG_STAT_EVENTS, C.BG_STAT_EVENTS_LOST


def _op() -> str:
    return "capture filter"


@dataclass(frozen=True)
class CaptureFilter:
    """What to capture: every packet (all None), or IP packets matching every given option.
    port matches source or destination (TCP/UDP); host is a CIDR matching source or destination."""

    proto: int | None = None
    port: int | None = None
    host: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port_side: str = "any"        # any | src | dst (a rule's src_port / dst_port)
    host_side: str = "any"        # any | src | dst (a rule's src / dst CIDR)
    verdict: int = 0              # label of every record (capture --rule: the rule's action), 0 unknown
    rule_id: int = 0
    rule: str | None = None       # the rule's name (capture --rule)
    expression: str | None = None  # a tcpdump-style expression (capture_expr), ANDed with the options above
    terms: tuple = ()              # its compiled terms (struct bg_capture_term as dicts)

    @classmethod
    def parse(cls, proto: str | int | None = None, port: int | None = None, host: str | None = None,
              expression: str | None = None) -> "CaptureFilter":
        terms = tuple(compile_expression(expression)) if expression else ()
        p = None
        if proto is not None:
            name = str(proto).lower()
            if name in PROTOCOLS:
                p = PROTOCOLS[name]
            elif name.isdigit() and 0 < int(name) < 256:
                p = int(name)
            else:
                raise BadInput(_op(), f"unknown protocol {proto!r}", hint=f"one of {', '.join(PROTOCOLS)} or 1-255")
        if port is not None and not 0 < int(port) < 65536:
            raise BadInput(_op(), f"port {port} out of range 1-65535")
        if port is not None and p not in (None, 6, 17):
            raise BadInput(_op(), "a port needs protocol tcp or udp")
        net = None
        if host is not None:
            try:
                net = ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise BadInput(_op(), f"not an address or CIDR: {host!r}") from None
        return cls(p, int(port) if port is not None else None, net, expression=expression if terms else None,
                   terms=terms)

    def rodata(self) -> dict:
        """The load-time constants of bpf/capture.bpf.c (addresses 16 bytes, IPv4-mapped, as u32 words)."""
        out: dict = {"cfg_ip_only": int(any(v is not None for v in (self.proto, self.port, self.host)))}
        if self.proto is not None:
            out["cfg_proto"] = self.proto
        if self.port is not None:
            out["cfg_port"] = self.port
            out["cfg_port_side"] = SIDES[self.port_side]
        if self.verdict:
            out.update(cfg_verdict=self.verdict, cfg_rule_id=self.rule_id)
        if self.terms:
            out.update(cfg_expr_len=len(self.terms), cfg_expr=list(self.terms))
        if self.host is not None:
            if self.host.version == 4:
                addr = b"\0" * 10 + b"\xff\xff" + self.host.network_address.packed
                mask = b"\xff" * 12 + self.host.netmask.packed
            else:
                addr, mask = self.host.network_address.packed, self.host.netmask.packed
            out.update(cfg_host_on=1, cfg_host_family=self.host.version, cfg_host_side=SIDES[self.host_side],
                       cfg_host=list(struct.unpack("=4I", addr)), cfg_mask=list(struct.unpack("=4I", mask)))
        return out

    def describe(self) -> str:
        parts = [name for name, n in PROTOCOLS.items() if n == self.proto] or ([str(self.proto)] if self.proto else [])
        side = {"any": "", "src": "src ", "dst": "dst "}
        if self.port:
            parts.append(f"{side[self.port_side]}port {self.port}")
        if self.host:
            parts.append(f"{side[self.host_side]}host {self.host}")
        if self.expression:
            parts.append(f"({self.expression})" if parts else self.expression)
        what = " and ".join(parts) or "all packets"
        return f"rule {self.rule} ({what})" if self.rule else what


@dataclass(frozen=True)
class CapturedPacket:
    mono_ns: int  # CLOCK_MONOTONIC (kernel)
    wall_ns: int
    ifindex: int
    direction: str
    hook: str
    verdict: str
    rule_id: int
    pkt_len: int  # length on the wire (before the snaplen)
    data: bytes
    rule: str | None = None  # capture --rule: the rule's name (verdict is that rule's action)
    decided: bool = False    # recorded by the policy engine after its decision (hook: the engine's hook)

    def comment(self) -> str:
        """The pcapng packet comment: where it was seen and what was decided."""
        if self.decided:   # the engine's own decision: the verdict and the rule are the real ones
            rule = self.rule or (f"#{self.rule_id}" if self.rule_id else "-")
            return f"bpfgate verdict={self.verdict} rule={rule} hook={self.hook} dir={self.direction}"
        if self.rule:
            return f"bpfgate hook={self.hook} dir={self.direction} verdict={self.verdict} (rule {self.rule})"
        rule = f" rule={self.rule_id}" if self.rule_id else ""
        return f"bpfgate hook={self.hook} dir={self.direction} verdict={self.verdict}{rule}"

    def to_json(self, clock: Clock) -> dict:
        return {"time": clock.iso(self.mono_ns), "epoch": round(self.wall_ns / 1e9, 9), "ifindex": self.ifindex,
                "direction": self.direction, "hook": self.hook, "verdict": self.verdict,
                "rule_id": self.rule_id or None, "rule": self.rule, "len": self.pkt_len, "caplen": len(self.data),
                **summarize(self.data)}


def summarize(frame: bytes) -> dict:
    """family/proto/src/dst/ports of an Ethernet frame, for JSON lines (best effort, no deps)."""
    if len(frame) < 14:
        return {}
    etype, off = struct.unpack_from("!H", frame, 12)[0], 14
    if etype == 0x8100 and len(frame) >= 18:
        etype, off = struct.unpack_from("!H", frame, 16)[0], 18
    if etype == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        out = {"family": 4, "proto": frame[off + 9], "src": socket.inet_ntop(socket.AF_INET, frame[off + 12:off + 16]),
               "dst": socket.inet_ntop(socket.AF_INET, frame[off + 16:off + 20])}
        l4 = off + ihl
    elif etype == 0x86DD and len(frame) >= off + 40:
        out = {"family": 6, "proto": frame[off + 6], "src": socket.inet_ntop(socket.AF_INET6, frame[off + 8:off + 24]),
               "dst": socket.inet_ntop(socket.AF_INET6, frame[off + 24:off + 40])}
        l4 = off + 40
    else:
        return {"ethertype": f"0x{etype:04x}"}
    if out["proto"] in (6, 17) and len(frame) >= l4 + 4:
        out["sport"], out["dport"] = struct.unpack_from("!HH", frame, l4)
    return out


class Capture:
    """The capture program attached to `dev` (`direction`: ingress, egress or both) while open."""

    def __init__(self, dev: str, filt: CaptureFilter | None = None, *, netns_name: str | None = None,
                 snaplen: int = MAX_SNAPLEN, direction: str = "both", method: str = "auto",
                 clock: Clock | None = None, ring_size: int = 1 << 23):
        if not 0 < snaplen <= MAX_SNAPLEN:
            raise BadInput("capture", f"snaplen {snaplen} out of range 1-{MAX_SNAPLEN}")
        if ring_size < 4096 or ring_size & (ring_size - 1):
            raise BadInput("capture", f"ring buffer size {ring_size} is not a power of two >= 4096")
        self.dev, self.snaplen, self.filter = dev, snaplen, filt or CaptureFilter()
        self.clock = clock or Clock()
        rodata = {"cfg_snaplen": snaplen, **self.filter.rodata()}
        sizes = {"capture_scratch": possible_cpus(), "capture_events": ring_size}
        self.obj, self.hooks = open_pair("capture", "bg_cap", dev, direction, netns_name=netns_name, method=method,
                                         rodata=rodata, sizes=sizes)
        try:
            self._hdr = self.obj.btf.struct("bg_capture_event")
            self._hsize = ctypes.sizeof(self._hdr)
            self._stats = self.obj.map("bg_stats")
            self._ring = RingBuffer(self.obj.map("capture_events"), record_type=None)
        except BaseException:
            self.close()
            raise

    def _decode(self, raw: bytes) -> CapturedPacket:
        h = self._hdr.from_buffer_copy(raw[: self._hsize])
        data = raw[self._hsize: self._hsize + h.cap_len]
        return CapturedPacket(mono_ns=h.hdr.ts_ns, wall_ns=self.clock.wall_ns(h.hdr.ts_ns), ifindex=h.ifindex,
                              direction=DIR_NAMES[h.dir & 1], hook=HOOKS.get(h.hook, str(h.hook)),
                              verdict=VERDICTS.get(h.verdict, str(h.verdict)), rule_id=h.rule_id,
                              pkt_len=h.pkt_len, data=data, rule=self.filter.rule)

    def packets(self, timeout_ms: int = 100) -> list[CapturedPacket]:
        """Wait up to timeout_ms, then every packet captured so far, oldest first."""
        self._ring.poll(timeout_ms)
        return [self._decode(raw) for raw in self._ring.drain()]

    def wait(self, timeout_ms: int = 100) -> None:
        """Wait up to timeout_ms for a packet, taking none."""
        self._ring.wait(timeout_ms)

    @property
    def lost(self) -> int:
        """Packets that matched but found no room in the ring buffer (the reader fell behind)."""
        return sum(self._stats.get(STAT_EVENTS_LOST, [0]))

    @property
    def matched(self) -> int:
        return sum(self._stats.get(STAT_EVENTS, [0])) + self.lost

    def close(self) -> None:
        hooks, self.hooks = getattr(self, "hooks", None), None
        if hooks is not None:
            hooks.close()
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
            self._ring = None
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_ENGINE_CFG = contract.record("engine", "bg_capture_cfg", "enabled snaplen rule_id_plus_1 lost owner_pid")
_ENGINE_REC = contract.struct("engine", "bg_capture_event")   # then cap_len packet bytes


class EngineCapture:
    """Capture by the policy engine attached on `dev` at `hook`, after its decision: records carry its
    real verdict and the deciding rule. rule_id: only packets that rule decided; None: every packet.
    `names`: rule id -> name (the comments name the rule). Same reading API as Capture."""

    def __init__(self, dev: str, hook: Any, *, netns_name: str | None = None, rule_id: int | None = None,
                 snaplen: int = MAX_SNAPLEN, names: dict[int, str] | None = None, clock: Clock | None = None):
        from bpfgate.engine import Engine
        from bpfgate.policy.model import Hook

        if not 0 < snaplen <= MAX_SNAPLEN:
            raise BadInput("capture", f"snaplen {snaplen} out of range 1-{MAX_SNAPLEN}")
        self.dev, self.snaplen, self.names = dev, snaplen, dict(names or {})
        self.hook = getattr(hook, "value", str(hook))   # what the comments name: tc-ingress, tc-egress, xdp
        self.clock = clock or Clock()
        self._ring = None
        self._cfg = None
        self.engine = Engine.open(dev, hook, netns_name)
        try:
            if self.engine.hook is Hook.XDP:   # the engine copies the frame with bpf_xdp_load_bytes there
                require_helper("xdp_load_bytes", f"capture by the engine on {dev} at XDP")
            if "bg_capture_cfg" not in self.engine.maps or "bg_capture_ring" not in self.engine.maps:
                raise NotSupported("capture", f"the engine on {dev} was attached by an older bpfgate: no capture maps",
                                   hint="detach and attach it again (or capture with --proto/--port/--host)")
            cfg = self.engine.maps["bg_capture_cfg"]
            cur = _ENGINE_CFG.unpack(bytes(cfg[0]))
            if cur[0] and cur[4] != os.getpid() and os.path.exists(f"/proc/{cur[4]}"):
                raise BpfgateError("capture", f"another capture of the engine on {dev} is running (pid {cur[4]})",
                                   hint="stop it first")
            # else free, or left on by a capture killed with SIGKILL: taken over
            self._ring = RingBuffer(self.engine.maps["bg_capture_ring"], record_type=None)
            self._ring.drain()   # nothing left from an earlier capture
            self._cfg = cfg
            cfg[0] = _ENGINE_CFG.pack(1, snaplen, 0 if rule_id is None else rule_id + 1, 0, os.getpid())
        except BaseException:
            self.close()
            raise

    def _decode(self, raw: bytes) -> CapturedPacket:
        size = ctypes.sizeof(_ENGINE_REC)
        h = _ENGINE_REC.from_buffer_copy(raw[:size])
        ts = h.hdr.ts_ns
        return CapturedPacket(mono_ns=ts, wall_ns=self.clock.wall_ns(ts), ifindex=h.ifindex,
                              direction=DIR_NAMES[h.dir & 1], hook=self.hook,
                              verdict=VERDICTS.get(h.verdict, str(h.verdict)), rule_id=h.rule_id,
                              pkt_len=h.pkt_len, data=raw[size: size + h.cap_len], rule=self.names.get(h.rule_id),
                              decided=True)

    def packets(self, timeout_ms: int = 100) -> list[CapturedPacket]:
        self._ring.poll(timeout_ms)
        return [self._decode(raw) for raw in self._ring.drain()]

    def wait(self, timeout_ms: int = 100) -> None:
        """Wait up to timeout_ms for a packet, taking none."""
        self._ring.wait(timeout_ms)

    @property
    def lost(self) -> int:
        if self._cfg is None:
            return 0
        return _ENGINE_CFG.unpack(bytes(self._cfg[0]))[3]

    @property
    def matched(self) -> int:
        return self._read + self.lost

    _read = 0

    def disable(self) -> None:
        """Switch the engine's capture off (idempotent)."""
        if self._cfg is not None:
            self._cfg[0] = _ENGINE_CFG.pack(0, 0, 0, 0, 0)
            self._cfg = None

    def close(self) -> None:
        self.disable()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        eng, self.engine = getattr(self, "engine", None), None
        if eng is not None:
            eng.close()

    def __enter__(self) -> "EngineCapture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_capture(dev: str, netns_name: str | None = None, rule: str | None = None) -> tuple[Any, int | None, dict, str]:
    """The engine on `dev` to capture from (`rule`: the one whose policy has that rule): (hook, rule id or
    None, rule id -> name, direction). NotFound when no engine is attached there or no policy has `rule`."""
    from bpfgate.errors import NotFound
    from bpfgate.inspect.rules import RuleReader, attached

    op = f"capture --rule {rule}" if rule else "capture --engine"
    engines = attached(netns_name, [dev])
    if not engines:
        raise NotFound(op, f"no policy engine is attached on {dev}",
                       hint="apply a policy first, or use --proto/--port/--host")
    found = []
    with RuleReader(netns_name, [dev]) as reader:
        for d, hook in engines:
            try:
                ids = reader._engine(d, hook).rule_ids()
            except BpfgateError:
                continue
            if rule is None or rule in ids:
                found.append((hook, ids))
    hooks = ", ".join(getattr(h, "value", h) for _d, h in engines)
    if not found:
        raise NotFound(op, f"no rule {rule!r} in the policy on {dev} ({hooks})")
    if len(found) > 1:
        what = f"rule {rule!r} is in the policies of" if rule else "engines are attached at"
        raise BpfgateError(op, f"{what} several hooks on {dev}: {hooks}")
    hook, ids = found[0]
    name = getattr(hook, "value", hook)
    return hook, (ids[rule] if rule else None), {i: n for n, i in ids.items()}, \
        ("egress" if name == "tc-egress" else "ingress")


def engine_has_capture(dev: str, hook: Any, netns_name: str | None = None) -> bool:
    """The engine attached there has the capture maps (attached by a bpfgate that knows them)."""
    from bpfgate.engine import pin_dir

    return os.path.exists(os.path.join(pin_dir(dev, hook, netns_name), "bg_capture_cfg"))


@dataclass
class CaptureSummary:
    written: int
    matched: int  # matched in the kernel (written + cut by --count + lost)
    lost: int
    path: str | None
    interrupted: bool

    def to_json(self) -> dict:
        return dict(self.__dict__)


def rule_capture(rule: str, dev: str, netns_name: str | None = None) -> tuple[CaptureFilter, str, list[str]]:
    """--rule NAME: the capture filter of a policy rule running in an engine attached on `dev`, and the
    direction to capture (the engine hook's). The rule's match is compiled into the capture program's own
    filter where it is expressible (one protocol, one port on the source or destination side, one CIDR on
    the source or destination side); anything else is a NotSupported naming it. Records carry the rule's
    action as their verdict ("verdict=drop (rule NAME)"): what the rule does to packets it matches. A
    packet an earlier rule of the policy matches first gets that rule's action instead, though capture
    labels it with this rule's (capture runs before the engine and does not see its decision): the third
    value names the earlier rules that may do that (shadowing()), for a warning."""
    from bpfgate.errors import NotFound
    from bpfgate.inspect.rules import DEFAULT_RULE, RuleReader, attached

    op = f"capture --rule {rule}"
    engines = attached(netns_name, [dev])
    if not engines:
        raise NotFound(op, f"no policy engine is attached on {dev}", hint="apply a policy first, or use --proto/--port/--host")
    found = []
    with RuleReader(netns_name, [dev]) as reader:
        for d, hook in engines:
            try:
                eng = reader._engine(d, hook)
                ids = eng.rule_ids()
                if rule not in ids:
                    continue
                pol = eng.policy()
            except BpfgateError:
                continue
            match = [r for r in pol.rules if r.name == rule]
            found.append((getattr(hook, "value", hook), ids[rule], match[0] if match else None, pol))
    if not found:
        hooks = ", ".join(getattr(h, "value", h) for _d, h in engines)
        raise NotFound(op, f"no rule {rule!r} in the policy on {dev} ({hooks})")
    if len(found) > 1:
        raise BpfgateError(op, f"rule {rule!r} is in the policies of several hooks on {dev}: "
                           f"{', '.join(f[0] for f in found)}")
    hook, rule_id, r, pol = found[0]
    if r is None or rule == DEFAULT_RULE:
        raise NotSupported(op, "the default rule matches what no other rule does: not expressible as a filter")
    return rule_filter(r, rule_id, hook), ("egress" if hook == "tc-egress" else "ingress"), shadowing(pol, rule)


def shadowing(policy: Any, name: str) -> list[str]:
    """Rules before `name` in the policy that may match some of its packets first (first match wins), so
    those packets get their verdict, not `name`'s. Conservative: a rule is left out only when it provably
    matches none of them (another protocol, disjoint ports or addresses on the same side)."""
    rules = list(policy.rules)
    idx = next(i for i, r in enumerate(rules) if r.name == name)
    me = rules[idx]
    return [r.name for r in rules[:idx] if not _disjoint(me, r)]


def _disjoint(a: Any, b: Any) -> bool:
    pa, pb = a.matching("protocol"), b.matching("protocol")
    if pa is not None and pb is not None and not set(pa) & set(pb):
        return True
    for attr in ("src_port", "dst_port", "src", "dst"):
        if not isinstance(a.matching(attr), tuple) and a.matching(attr) is not None or \
                not isinstance(b.matching(attr), tuple) and b.matching(attr) is not None:
            return False   # a named set (SetRef): its elements change live, so never provably disjoint
    for attr in ("src_port", "dst_port"):
        pa, pb = a.matching(attr), b.matching(attr)
        if pa is not None and pb is not None and not any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in pa for lo2, hi2 in pb):
            return True
    for attr in ("src", "dst"):
        na, nb = a.matching(attr), b.matching(attr)
        if na is not None and nb is not None and not any(
                x.version == y.version and x.overlaps(y) for x in na for y in nb):
            return True
    return False


def rule_filter(r: Any, rule_id: int = 0, hook: str = "tc-ingress") -> CaptureFilter:
    """A policy rule (bpfgate.policy.model.Rule) as a CaptureFilter, or NotSupported naming every part of
    its match that the capture filter cannot express."""
    op = f"capture --rule {r.name}"
    bad: list[str] = []
    for attr, what in (("tcp_flags", "tcp_flags"), ("icmp_type", "icmp_type"), ("icmp_code", "icmp_code"),
                       ("vlan", "vlan"), ("ct", "ct state")):
        if getattr(r, attr) is not None:
            bad.append(what)
    bad += [f"negated {f}" for f in r.negated]
    sets = [f for f in ("src", "dst", "src_port", "dst_port") if getattr(r, f) is not None
            and not isinstance(getattr(r, f), tuple)]
    if sets:   # a named set: a capture filter holds one address and one port
        raise NotSupported(op, "not expressible as a capture filter: " + ", ".join(
            bad + [f"{f} names set {getattr(r, f)}" for f in sets]), hint="capture with --proto/--port/--host instead")
    proto = None
    if r.protocol is not None:
        if len(r.protocol) > 1:
            bad.append(f"{len(r.protocol)} protocols")
        else:
            proto = r.protocol[0]
    port, port_side = None, "any"
    sides = [(side, ports) for side, ports in (("src", r.src_port), ("dst", r.dst_port)) if ports is not None]
    if len(sides) > 1:
        bad.append("both a source and a destination port")
    elif sides:
        side, ports = sides[0]
        if len(ports) > 1:
            bad.append(f"{len(ports)} {side} ports")
        elif ports[0][0] != ports[0][1]:
            bad.append(f"{side} port range {ports[0][0]}-{ports[0][1]}")
        elif proto not in (6, 17):
            bad.append("ports of a protocol other than tcp/udp")
        else:
            port, port_side = ports[0][0], side
    host, host_side = None, "any"
    nets = [(side, n) for side, n in (("src", r.src), ("dst", r.dst)) if n is not None]
    if len(nets) > 1:
        bad.append("both a source and a destination CIDR")
    elif nets:
        side, n = nets[0]
        if len(n) > 1:
            bad.append(f"{len(n)} {side} CIDRs")
        else:
            host, host_side = n[0], side
    if hook == "xdp" and r.action != "pass":
        bad.append(f"action {r.action} at XDP (capture runs at TC: packets the rule {r.action}s never reach it)")
    if bad:
        raise NotSupported(op, "not expressible as a capture filter: " + ", ".join(bad),
                           hint="capture with --proto/--port/--host instead")
    # a rejected packet is dropped (its answer is a new packet the engine sends back)
    verdict = {word: value for value, word in VERDICTS.items()}["drop" if r.action == "reject" else r.action]
    return CaptureFilter(proto, port, host, port_side, host_side, verdict, rule_id, r.name)


def capture_to_file(path: str | None, dev: str, filt: CaptureFilter | None = None, *, netns_name: str | None = None,
                    snaplen: int = MAX_SNAPLEN, count: int | None = None, duration: float | None = None,
                    direction: str = "both", pcapng: bool = False, method: str = "auto",
                    on_packet: Callable[[CapturedPacket, Clock], None] | None = None,
                    on_ready: Callable[[], None] | None = None,
                    engine: tuple[Any, int | None, dict] | None = None) -> CaptureSummary:
    """Capture to `path` (pcap, or pcapng with verdict comments) until `count` packets, `duration`
    seconds, Ctrl-C or SIGTERM. The file is opened before anything is attached (a bad path fails
    first, with nothing to undo) and is complete whatever stops the capture. engine: (hook, rule id or
    None, rule names) of engine_capture(): the engine captures with its verdicts (EngineCapture; `filt`,
    `direction` and `method` are not used), and its capture is off again when this returns."""
    writer: PcapWriter | None = open_writer(path, pcapng=pcapng, snaplen=snaplen, ifname=dev) if path else None
    written, interrupted = 0, False
    restore = ExitStack()
    restore.enter_context(sigterm_as_interrupt())
    source: Any = None
    matched = lost = 0
    try:
        try:   # a SIGTERM/Ctrl-C just after the capture switched on ends it the same clean way
            if engine is not None:
                hook, rule_id, names = engine
                source = EngineCapture(dev, hook, netns_name=netns_name, rule_id=rule_id, snaplen=snaplen,
                                       names=names)
            else:
                source = Capture(dev, filt, netns_name=netns_name, snaplen=snaplen, direction=direction,
                                 method=method)
            with source as cap:
                if on_ready:
                    on_ready()
                deadline = None if duration is None else time.monotonic() + duration

                def take() -> bool:
                    """Write what the ring holds, up to `count` (True when reached). Ctrl-C/SIGTERM wait
                    for the end: a packet taken from the ring is always written."""
                    nonlocal written
                    with signals_deferred():
                        for pkt in cap.packets(0):
                            if writer:
                                writer.write(pkt.wall_ns, pkt.data, pkt.pkt_len, comment=pkt.comment(),
                                             direction=pkt.direction)
                            if on_packet:
                                on_packet(pkt, cap.clock)
                            written += 1
                            if engine is not None:
                                cap._read = written
                            if count is not None and written >= count:
                                return True
                    return False

                try:
                    while not take():
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            break
                        cap.wait(200 if left is None else min(200, int(left * 1000)))
                except KeyboardInterrupt:
                    interrupted = True
                    take()  # what the hook saw before the Ctrl-C is still in the ring: keep it
                matched, lost = cap.matched, cap.lost
        except KeyboardInterrupt:
            interrupted = True
    finally:
        if source is not None:
            source.close()    # the engine's capture is off whatever ended it
        if writer:
            writer.close()
        restore.close()
    return CaptureSummary(written, matched, lost, path, interrupted)

