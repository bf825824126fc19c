"""The data path with real frames: packets/s that a filter on the receiving end of a veth pair processes,
and the receive CPU's time per packet, bpfgate against iptables, nftables and bare drop programs, in one run.

    sudo .venv/bin/python bench/bench_datapath.py [--quick] [--seconds 2] [--reps 3] [--cpu N] [--rx-cpu M]
                                                  [--same-cpu] [--object PATH] [--test-run]

Each case is its own pair of network namespaces (a sandbox: tx -- rx over one veth pair). An injector in
tx (AF_PACKET, PACKET_QDISC_BYPASS, sendmmsg of 256 frames a call: 64-byte UDP/IPv4 to rx port 9, 64
source ports) runs pinned to CPU N (--cpu, default the highest) for --seconds.
A veth delivers each frame on the sending CPU (its backlog softirq, or for native XDP the peer's NAPI
scheduled there): left alone, one CPU carries the injector and the whole receive side, and a filter's cost
only shows as a lower injection rate. So by default the receive side is moved to CPU M (--rx-cpu, default
another CPU the bench may use), in the sandbox's devices only (they go away with it):
  skb cases (no filter, TC, iptables, nft)  RPS: the rx veth's rps_cpus = M, so the backlog (TC ingress,
                                            the stack, netfilter) runs in M's NET_RX softirq
  native XDP cases                          the rx veth's NAPI threaded (after the attach, which makes the
                                            NAPI), its napi/ kernel thread pinned to M
A case the kernel refuses this stays on the injector's CPU and says so ("receive side" column). --same-cpu:
none of this (the veth's own behaviour, as this bench measured before).
Columns:
  processed     the packets the filter's own counter saw drop (its drop rule, the bare programs' counters,
                the iptables/nft rule counters; "no filter": the rx stack's UDP NoPorts) / the injection time
  sent          the frames the injector got accepted / the time. A frame the device refuses (sendmmsg:
                ENOBUFS, the XDP ring full) is sent again; when M falls behind the socket's send buffer
                fills with frames not yet freed and the injector waits ("waits/s": its voluntary context
                switches). Nothing is dropped in between here (softnet_stat's backlog drops: printed if
                any), so sent = processed: whichever side is slower sets the rate.
  on rx         the share of the packets handled on the receive CPU (the filter's per-CPU counters for the
                BPF cases, softnet_stat's processed for the others): the evidence it moved
  rx busy       the receive side's time / wall time: M's NET_RX softirq time (timed at the softirq
                tracepoints by bench/net_rx_time.bpf.c) + the NAPI thread's run time (/proc/PID/schedstat)
  rx CPU per packet  that time / processed packets: what each packet cost the receive side
How to read them: at "rx busy" near 100% the receive side is the bottleneck and processed is its capacity.
Below that the injector (one CPU: ~0.5-1.3 Mpps) is, processed is its rate, and a cheap filter's capacity
shows only as time per packet (which then spreads each softirq run's or thread wake-up's fixed cost over
fewer packets than at saturation: a lightly loaded case can look dearer per packet). A CPU-bound neighbour
on M takes M's time from the receive side (a NAPI thread shares M with it, the softirq is pushed to
ksoftirqd): it lowers processed, and moves time per packet less (the caches it shares still do).
Ratios: processed and capacity (the base's time per packet / the case's) to the bare drop program of the
same hook, or to "no filter" for the stack and netfilter cases; then the targets (bpfgate TC at the most
rules against iptables raw with 1 rule and bare TC, bpfgate XDP against bare XDP).
Every case drops the traffic at its last rule, after rules of every shape that match nothing:
  no filter           the rx stack (UDP, no socket on port 9)
  bare xdp / tc drop  a program that only counts and drops (bench/bare_drop.bpf.c): the floor of the hook
  bpfgate tc / xdp    the policy engine (no conntrack) with 1, 10k, 100k rules: a third each of tcp
    N rules           ports, IPv4 source CIDRs of mixed lengths (stage 0) and 5-tuples, then the drop;
                      the traffic's addresses are in no policy prefix (a blocklist's usual miss: the
                      shapes keyed on an address class are skipped)
    N in-prefix       the same, with one 5-tuple a TCP rule between the traffic's /24 and destination:
                      the addresses fall in class prefixes and every shape is looked up (the worst case)
  iptables raw        PREROUTING: 1, 100, 10k rules (-s CIDR -p tcp --dport P) then the drop
  nft set 100k        an interval set of 100k source prefixes (no match), then the drop
--object PATH adds the bpfgate cases once more with another build of the engine (e.g. main's), with the same
rules: two builds compared in one run. An engine build from before bg_cls_short (the short classifier key)
gets every entry in bg_cls; one from before the shapes' filters, its shorter bg_shape records; one from before
bg_cls_direct, the direct shape's entries in bg_cls_short.
--test-run times the same bpfgate cases (and the bare programs) with BPF_PROG_TEST_RUN instead of frames:
ns per packet of the program alone, on one of the injector's frames (less noise from a loaded machine).
Reps run the cases interleaved (a noisy neighbour hits them alike); figures are medians with min-max. A
benchmark: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import ipaddress
import json
import os
import random
import re
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_classifier import rules_for  # noqa: E402
from common import header  # noqa: E402

from bpfgate import attach, contract  # noqa: E402
from bpfgate.engine import Engine  # noqa: E402
from bpfgate.engine import engine as engine_mod  # noqa: E402
from bpfgate.kernel.testrun import test_run  # noqa: E402
from bpfgate.policy.compile import compile_hook  # noqa: E402
from bpfgate.kernel.links import attach_auto  # noqa: E402
from bpfgate.kernel.objects import BpfObject  # noqa: E402
from bpfgate.policy import layout as L  # noqa: E402
from bpfgate.policy.compile import Limits  # noqa: E402
from bpfgate.policy.model import Hook, HookPolicy  # noqa: E402
from bpfgate.sandbox import Sandbox  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, SPORTS, DPORT = 256, 64, 9
LIMITS = Limits(max_shapes=32, max_entries=1 << 20)


# ---- the injector (runs as a child inside tx) ---------------------------------------------------------

class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def _csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frames(src_mac: bytes, dst_mac: bytes, src: str, dst: str) -> list[bytes]:
    out = []
    for i in range(SPORTS):
        udp = struct.pack("!HHHH", 10000 + i, DPORT, 8 + 18, 0) + bytes(18)   # checksum 0: none (IPv4)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        out.append(dst_mac + src_mac + b"\x08\x00" + ip + udp)
    return out


def inject(ifname: str, dst_mac: str, src: str, dst: str, seconds: float, cpu: int) -> None:
    """Send for `seconds` from this CPU; prints {"sent": N, "seconds": T}."""
    os.sched_setaffinity(0, {cpu})
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(263, 20, 1)   # SOL_PACKET, PACKET_QDISC_BYPASS: straight to the driver
    s.bind((ifname, 0))
    frames = udp_frames(s.getsockname()[4], bytes.fromhex(dst_mac.replace(":", "")), src, dst)
    bufs = [ctypes.create_string_buffer(f, len(f)) for f in frames]
    iovs = (_Iovec * BATCH)(*[_Iovec(ctypes.cast(bufs[i % SPORTS], ctypes.c_void_p), len(frames[0]))
                              for i in range(BATCH)])
    msgs = (_Mmsghdr * BATCH)()
    for i in range(BATCH):
        msgs[i].hdr.iov = ctypes.pointer(iovs[i])
        msgs[i].hdr.iovlen = 1
    libc = ctypes.CDLL(None, use_errno=True)
    waits = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    sent, refused, t0 = 0, 0, time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        n = libc.sendmmsg(s.fileno(), msgs, BATCH, 0)
        if n < 0:
            if ctypes.get_errno() in (105, 11):   # ENOBUFS / EAGAIN: the device is full, go on
                refused += 1
                continue
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        sent += n
    waits = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - waits
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0, "refused": refused, "waits": waits}))


# ---- cases -----------------------------------------------------------------------------------------------

def mixed_rules(n: int, rng: random.Random, decoy: tuple[str, str] | None = None) -> list[dict]:
    """n-1 rules of every shape that match nothing of the traffic, then the drop (named sink). With
    `decoy` (the traffic's source and destination), one of the 5-tuples is a TCP rule between the
    traffic's /24 and its destination: UDP misses it, but the traffic's addresses now fall in class
    prefixes, so every shape is looked up (without it, a packet in no policy prefix skips the shapes keyed
    on an address class)."""
    per = (n - 1) // 3
    rules = rules_for("ports", per, rng) + rules_for("cidr4", per, rng)
    rules += rules_for("5tuple", n - 1 - 2 * per, rng)
    if decoy and n > 1:
        src = ipaddress.ip_network(f"{decoy[0]}/24", strict=False)
        rules[-1].update(src=str(src), dst=f"{decoy[1]}/32", protocol="tcp", dst_port=1)
    for r in rules:
        r["name"] = f"{r['name']}-{len(rules)}"
    return rules + [{"name": "sink", "protocol": "udp", "dst_port": DPORT, "action": "drop"}]


class Case:
    made = 0

    def __init__(self, sb: Sandbox, name: str, hook: str):
        self.name, self.hook = name, hook
        Case.made += 1
        self.tx, self.rx = sb.host(f"tx{Case.made}"), sb.host(f"rx{Case.made}")
        self.link = sb.link(self.tx, self.rx)
        self.tx_if, self.rx_if = self.link.end(self.tx), self.link.end(self.rx)
        mac = self.rx.run(["cat", f"/sys/class/net/{self.rx_if.name}/address"], check=True).stdout.strip()
        self.rx_mac = mac
        self.rx_cpu: int | None = None   # None: the injector's CPU (the veth's own behaviour)
        self.mode = "same CPU"
        self.napi: list[int] = []        # the rx veth's NAPI threads, when XDP runs in them
        self.pps: list[float] = []
        self.sent_pps: list[float] = []
        self.on_rx_cpu: list[float] = []      # share of the filter's packets handled on the receive CPU
        self.busy: list[float] = []           # the receive CPU's softirq + NAPI thread time / wall time
        self.ns_per_packet: list[float] = []  # that time per processed packet
        self.waits: list[float] = []          # per s, the injector's waits for its socket's send buffer
        self.backlog_drops = 0                # softnet_stat's dropped (backlog full), every CPU, all reps
        self.refused = 0                      # the injector's sendmmsg calls the device refused, all reps

    def split(self, cpu: int) -> str | None:
        """Move the receive side to `cpu`: the stack's backlog by RPS; XDP (which runs in the veth's NAPI
        poll, scheduled on the sending CPU) by a NAPI thread pinned there. Returns why not, or None."""
        dev = f"/sys/class/net/{self.rx_if.name}"
        if self.hook != "xdp":
            mask = format(1 << cpu, "x")
            every_queue = f"for q in {dev}/queues/rx-*; do echo {mask} > $q/rps_cpus || exit 1; done"
            r = self.rx.run(["sh", "-c", every_queue])
            if r.returncode:
                return f"RPS refused: {(r.stderr or r.stdout).strip()}"
            self.rx_cpu, self.mode = cpu, "RPS"
            return None
        before = napi_threads(self.rx_if.name)
        r = self.rx.run(["sh", "-c", f"echo 1 > {dev}/threaded"])
        if r.returncode:
            return f"threaded NAPI refused: {(r.stderr or r.stdout).strip()}"
        new = sorted(napi_threads(self.rx_if.name) - before)
        if not new:
            return "threaded NAPI: no NAPI thread appeared"
        try:
            for pid in new:
                os.sched_setaffinity(pid, {cpu})
        except OSError as e:
            self.rx.run(["sh", "-c", f"echo 0 > {dev}/threaded"])
            return f"NAPI thread {pid} not pinned: {e}"
        self.rx_cpu, self.mode, self.napi = cpu, "NAPI thread", new
        return None

    def setup(self) -> None: ...

    def count(self) -> int:
        raise NotImplementedError

    def per_cpu(self) -> list[int] | None:
        """The filter's own count per CPU, where it keeps one."""
        return None

    def close(self) -> None: ...


class NoFilter(Case):
    def count(self) -> int:
        snmp = self.rx.run(["cat", "/proc/net/snmp"], check=True).stdout.splitlines()
        udp = [line.split() for line in snmp if line.startswith("Udp:")]
        return int(udp[1][udp[0].index("NoPorts")])


class Bare(Case):
    def __init__(self, sb, name, hook, obj_path):
        super().__init__(sb, name, hook)
        self.obj = BpfObject.open(obj_path)
        self.obj.load()
        prog = self.obj.program("bench_xdp_drop" if hook == "xdp" else "bench_tc_drop")
        if hook == "xdp":
            self.att = attach.attach_xdp(prog, self.rx_if.name, mode="native", netns_name=self.rx.netns,
                                         owner="bench")
        else:
            self.att = attach.attach_tc(prog, self.rx_if.name, "ingress", netns_name=self.rx.netns, owner="bench")

    def count(self) -> int:
        return sum(self.per_cpu())

    def per_cpu(self) -> list[int]:
        return list(self.obj.map("drops")[0])

    def close(self) -> None:
        attach.detach(self.att)
        self.obj.close()


class Bpfgate(Case):
    def __init__(self, sb, name, hook, n_rules, rng, worst: bool, obj: str | None = None):
        super().__init__(sb, name, hook)
        decoy = (self.tx_if.ip4, self.rx_if.ip4) if worst else None
        hp = HookPolicy.model_validate({"default": "allow", "rules": mixed_rules(n_rules, rng, decoy)})
        packaged, maps = engine_mod.OBJECT, engine_mod.MAPS
        engine_mod.OBJECT = obj or packaged
        engine_mod.MAPS = maps_of(obj)
        t0 = time.perf_counter()
        try:
            self.eng = engine_class(obj).attach(self.rx_if.name, hook, hp, netns_name=self.rx.netns, ct=False,
                                     limits=LIMITS, **({"mode": "native"} if hook == "xdp" else {}))
        finally:
            engine_mod.OBJECT, engine_mod.MAPS = packaged, maps
        self.attach_s = time.perf_counter() - t0

    def count(self) -> int:
        return self.eng.counters()["sink"].packets

    def per_cpu(self) -> list[int]:
        per = self.eng.maps["bg_counters"].lookup(self.eng.rule_ids()["sink"])
        return [struct.unpack_from("=Q", bytes(v))[0] for v in per]   # a counter starts with u64 packets

    def close(self) -> None:
        self.eng.detach()


class Iptables(Case):
    def __init__(self, sb, name, n_rules, rng):
        super().__init__(sb, name, "iptables")
        lines = ["*raw", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        lines += [f"-A PREROUTING -s 10.{rng.randrange(256)}.{rng.randrange(256)}.0/24 -p tcp --dport "
                  f"{rng.randrange(1, 65536)} -j DROP" for _ in range(n_rules - 1)]
        lines += [f"-A PREROUTING -p udp --dport {DPORT} -j DROP", "COMMIT", ""]
        self.rx.run(["iptables-restore"], input="\n".join(lines), check=True, timeout=120)

    def count(self) -> int:
        out = self.rx.run(["iptables", "-t", "raw", "-nvxL", "PREROUTING"], check=True, timeout=120).stdout
        return int(out.strip().splitlines()[-1].split()[0])


class NftSet(Case):
    def __init__(self, sb, name, n, rng):
        super().__init__(sb, name, "nft")
        nets = {ipaddress.ip_network((rng.getrandbits(24) << 8, 24)) for _ in range(n)}
        nets = [x for x in nets if not x.overlaps(ipaddress.ip_network("198.18.0.0/15"))]
        elems = ", ".join(map(str, nets))
        text = ("table ip bgbench {\n set s { type ipv4_addr; flags interval; }\n"
                " chain pre { type filter hook prerouting priority -300; ip saddr @s drop;"
                f" udp dport {DPORT} counter drop; }}\n}}\nadd element ip bgbench s {{ {elems} }}\n")
        self.rx.run(["nft", "-f", "-"], input=text, check=True, timeout=300)
        self.elements = len(nets)

    def count(self) -> int:
        out = self.rx.run(["nft", "list", "chain", "ip", "bgbench", "pre"], check=True, timeout=60).stdout
        return int(re.search(r"counter packets (\d+)", out).group(1))


# ---- where the receive side runs -------------------------------------------------------------------------

def napi_threads(ifname: str) -> set[int]:
    """PIDs of the NAPI kernel threads named after `ifname` (every namespace: compare before and after)."""
    want, pids = f"napi/{ifname}-"[:15], set()   # comm is cut at 15 characters
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and open(f"/proc/{p}/comm").read().startswith(want):
                pids.add(int(p))
        except OSError:   # gone meanwhile
            pass
    return pids


def threads_run_s(pids: list[int]) -> float:
    """Seconds the threads have run (/proc/PID/schedstat: nanoseconds, exact)."""
    return sum(int(open(f"/proc/{pid}/schedstat").read().split()[0]) for pid in pids) / 1e9


class NetRxClock:
    """Seconds each CPU has spent in the NET_RX softirq, timed by bench/net_rx_time.bpf.c at the softirq's
    tracepoints."""

    def __init__(self, tmp: str):
        self.obj = BpfObject.open(build(tmp, "net_rx_time"))
        self.obj.load()
        self.links = [attach_auto(self.obj, "net_rx_entry"), attach_auto(self.obj, "net_rx_exit")]

    def seconds(self, cpu: int) -> float:
        return self.obj.map("spent")[0][cpu] / 1e9

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.obj.close()


def softnet() -> dict[int, tuple[int, int]]:
    """Per CPU, /proc/net/softnet_stat: (packets the stack's receive took in, packets dropped with the
    backlog full). Counters of 32 bits."""
    out = {}
    for i, line in enumerate(open("/proc/net/softnet_stat")):
        col = [int(x, 16) for x in line.split()]
        out[col[12] if len(col) > 12 else i] = (col[0], col[1])
    return out


# ---- BPF_PROG_TEST_RUN ----------------------------------------------------------------------------------

REPEAT = 200_000


class _UnfilteredConf:
    """A bg_conf packed for a build from before the shapes' filters: its first 16 bytes (tree_protos came
    after them), then each bg_shape cut to its first 72 bytes (mask, best_prio, id, entries; `filtered` was
    padding)."""
    OLD_HDR, OLD_SHAPE = 16, 72

    def __init__(self, conf):
        self.conf = conf

    def pack(self, overlay: bool = False) -> bytes:
        raw = self.conf.pack(overlay)
        hdr, size = len(raw) - L.MAX_SHAPES * L.SHAPE_SIZE, L.SHAPE_SIZE
        flag = contract.struct("engine", "bg_shape").filtered.offset
        out = bytearray(raw[:self.OLD_HDR])
        for i in range(L.MAX_SHAPES):
            shape = bytearray(raw[hdr + i * size:hdr + i * size + self.OLD_SHAPE])
            shape[flag] = 0
            out += shape
        return bytes(out)


class _NoDirect(Engine):
    """An engine build from before bg_cls_direct: the direct shape's entries in bg_cls_short too (its flagged
    shape id is just an id there; bg_conf.direct was padding)."""

    def _write_cls(self, entries):
        by: dict[str, dict] = {}
        for k, v in entries.items():
            name, raw = ("bg_cls_short", L.short_key(k)) if k[L.KEY_SHAPE_OFF] & L.SHAPE_SHORT else ("bg_cls", k)
            by.setdefault(name, {})[raw] = v
        for name, part in by.items():
            self.maps[name].update_batch_raw(b"".join(part), b"".join(v.pack() for v in part.values()), len(part))

    def _publish(self, conf, overlay: bool = False) -> None:
        """The direct shape's filter holds only its keys in bg_cls_short: unfiltered here, where all are."""
        if isinstance(conf, L.Conf):
            conf = dataclasses.replace(conf, shapes=tuple(
                dataclasses.replace(s, fmask=bytes(L.KEY_SIZE), filter=0) if s.id & L.SHAPE_DIRECT else s
                for s in conf.shapes))
        super()._publish(conf, overlay)

    def _delete_cls(self, keys):
        wide = [k for k in keys if not k[L.KEY_SHAPE_OFF] & L.SHAPE_SHORT]
        short = [L.short_key(k) for k in keys if k[L.KEY_SHAPE_OFF] & L.SHAPE_SHORT]
        for name, part in (("bg_cls", wide), ("bg_cls_short", short)):
            if part:
                self.maps[name].delete_batch(part)


def maps_of(obj: str | None) -> tuple[str, ...]:
    """The engine maps of the build `obj` (None: the packaged one)."""
    if obj is None:
        return engine_mod.MAPS
    raw = open(obj, "rb").read()
    return tuple(m for m in engine_mod.MAPS if m.encode() in raw)


class _Unfiltered(_NoDirect):
    """An engine build from before the shapes' filters."""

    def _publish(self, conf, overlay: bool = False) -> None:
        super()._publish(_UnfilteredConf(conf), overlay)


def engine_class(obj: str | None) -> type[Engine]:
    """The Engine class that writes the maps of the engine build `obj` (None: the packaged one)."""
    if obj is None:
        return Engine
    raw = open(obj, "rb").read()
    if b"bg_cls_short" not in raw:
        return _AllInBgCls
    if b"fmask" not in raw:
        return _Unfiltered
    return Engine if b"bg_cls_direct" in raw else _NoDirect


class _AllInBgCls(_Unfiltered):
    """An engine build from before bg_cls_short: every entry in bg_cls (the flagged shape ids are just ids)."""

    def _write_cls(self, entries):
        if entries:
            vals = b"".join(v.pack() for v in entries.values())
            self.maps["bg_cls"].update_batch_raw(b"".join(entries), vals, len(entries))


class TestRunCase:
    def __init__(self, name: str, prog, frame: bytes, owner=None):
        self.name, self.prog, self.frame, self.owner, self.ns = name, prog, frame, owner, []

    @classmethod
    def engine(cls, name, hook, n_rules, rng, worst: bool, frame: bytes, src: str, dst: str, obj: str | None):
        hp = HookPolicy.model_validate({"default": "allow", "rules": mixed_rules(n_rules, rng, (src, dst) if worst
                                                                                 else None)})
        compiled = compile_hook(hp, Hook(hook), limits=LIMITS, ifindex=lambda _n: 1)
        old = obj is not None and b"bg_cls_short" not in open(obj, "rb").read()
        packaged, maps = engine_mod.OBJECT, engine_mod.MAPS
        engine_mod.OBJECT = obj or packaged
        engine_mod.MAPS = maps_of(obj)
        prealloc = engine_mod.prealloc_for(compiled)
        if old:   # its bg_cls sized as that build's attach sized it
            n = len(compiled.cls)
            prealloc = {"bg_cls": min(3 * n, engine_mod.HASH_MAX)} if n >= engine_mod.PREALLOC_MIN else {}
        try:
            sizes = engine_mod.rule_array_sizes(max(compiled.rules) + 1)
            eng = engine_class(obj).load(hook, ct=False, prealloc=prealloc, max_entries=sizes)
        finally:
            engine_mod.OBJECT, engine_mod.MAPS = packaged, maps
        eng.load_policy(compiled, limits=LIMITS)
        return cls(name, eng.program, frame, eng)

    def measure(self) -> None:
        self.ns.append(float(test_run(self.prog, self.frame, repeat=REPEAT).duration_ns))

    def close(self) -> None:
        if self.owner is not None:
            self.owner.close()


def engine_cases(sizes: list[int], other_object: str | None):
    """(name, hook, rules, their generator, worst, object) of each bpfgate case: both hooks, each size, traffic
    outside and inside the rules' prefixes, main's build and `other_object`. The same rules for both builds:
    each case draws them from its own generator."""
    for hook in ("tc-ingress", "xdp"):
        for n in sizes:
            for worst in (False, True) if n > 1 else (False,):
                for obj in (None, other_object) if other_object else (None,):
                    name = f"bpfgate {'tc' if hook != 'xdp' else 'xdp'} {n} {'in-prefix' if worst else 'rules'}"
                    name += f" [{os.path.basename(obj)}]" if obj else ""
                    yield name, hook, n, random.Random(f"{hook} {n} {worst}"), worst, obj


def test_run_main(a, sizes: list[int]) -> None:
    header("data path, BPF_PROG_TEST_RUN: ns per packet of the program alone (the injector's frame)")
    src, dst = "198.18.0.1", "198.18.0.2"
    frame = udp_frames(bytes(6), bytes(6), src, dst)[0]
    print(f"# {a.reps} reps x {REPEAT} packets per case, interleaved; 64-byte UDP/IPv4 {src} -> {dst}:{DPORT}")
    with tempfile.TemporaryDirectory() as tmp:
        bare = BpfObject.open(build(tmp, "bare_drop"))
        bare.load()
        cases = [TestRunCase("bare xdp drop", bare.program("bench_xdp_drop"), frame),
                 TestRunCase("bare tc drop", bare.program("bench_tc_drop"), frame)]
        try:
            for name, hook, n, rules_rng, worst, obj in engine_cases(sizes, a.object):
                cases.append(TestRunCase.engine(name, hook, n, rules_rng, worst, frame, src, dst, obj))
            for rep in range(a.reps):
                for c in cases:
                    c.measure()
            width = max(len(c.name) for c in cases)
            for c in cases:
                print(f"{c.name:{width}s} {statistics.median(c.ns):6.1f} ns/pkt (min {min(c.ns):.1f} - max "
                      f"{max(c.ns):.1f}, n={len(c.ns)})")
        finally:
            for c in cases:
                c.close()
            bare.close()


def measure(case: Case, seconds: float, cpu: int, clock: NetRxClock) -> None:
    rx_cpu = cpu if case.rx_cpu is None else case.rx_cpu
    before, per_cpu, net = case.count(), case.per_cpu(), softnet()
    busy = clock.seconds(rx_cpu) + threads_run_s(case.napi)
    r = case.tx.run([sys.executable, os.path.abspath(__file__), "--inject", case.tx_if.name, case.rx_mac,
                     case.tx_if.ip4, case.rx_if.ip4, str(seconds), str(cpu)], timeout=seconds + 60, check=True)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    time.sleep(0.05)   # what the receive CPU still holds in its backlog
    t, done = res["seconds"], case.count() - before
    busy = clock.seconds(rx_cpu) + threads_run_s(case.napi) - busy
    case.pps.append(done / t)
    case.sent_pps.append(res["sent"] / t)
    case.busy.append(busy / t)
    case.ns_per_packet.append(busy * 1e9 / done if done else float("nan"))
    case.waits.append(res["waits"] / t)
    case.refused += res["refused"]
    net_after = softnet()
    if per_cpu is not None:   # the filter's own per-CPU count
        took = [b - a for a, b in zip(per_cpu, case.per_cpu())]
    else:                     # the stack's: every packet received on that CPU (little else is on the veth)
        took = [(net_after[c][0] - net[c][0]) % (1 << 32) if c in net else 0 for c in range(max(net_after) + 1)]
    case.on_rx_cpu.append(took[rx_cpu] / sum(took) if sum(took) else float("nan"))
    case.backlog_drops += sum((net_after[c][1] - net[c][1]) % (1 << 32) for c in net if c in net_after)


def build(tmp: str, name: str) -> str:
    out = os.path.join(tmp, f"{name}.bpf.o")
    arch = os.uname().machine
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}-linux-gnu", "-c",
                    os.path.join(HERE, f"{name}.bpf.c"), "-o", out], check=True)
    return out


def mpps(v: list[float]) -> str:
    return f"{statistics.median(v) / 1e6:6.3f} Mpps (min {min(v) / 1e6:.3f} - max {max(v) / 1e6:.3f})"


def pct(v: list[float]) -> str:
    v = [x for x in v if x == x]   # nan: no packet
    return f"{100 * statistics.median(v):3.0f}%" if v else "   -"


def main() -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--quick", action="store_true", help="1 and 10k rules only, no 100k cases")
    ap.add_argument("--seconds", type=float, default=2.0, help="injection time per case and rep")
    ap.add_argument("--reps", type=int, default=3)
    cpus = sorted(os.sched_getaffinity(0))
    ap.add_argument("--cpu", type=int, default=cpus[-1], help="the injector's CPU")
    ap.add_argument("--rx-cpu", type=int, help="the receive side's CPU (default: another one the bench may use)")
    ap.add_argument("--same-cpu", action="store_true",
                    help="leave the receive side on the injector's CPU, as a veth does by itself")
    ap.add_argument("--object", help="also the bpfgate cases with this engine object (e.g. main's build)")
    ap.add_argument("--test-run", action="store_true", help="BPF_PROG_TEST_RUN ns/packet instead of frames")
    a = ap.parse_args()
    if a.test_run:
        test_run_main(a, [1, 10_000] if a.quick else [1, 10_000, 100_000])
        return
    rx_cpu = None
    if not a.same_cpu:
        rx_cpu = a.rx_cpu if a.rx_cpu is not None else next((c for c in cpus if c != a.cpu), None)
        if rx_cpu is None or rx_cpu == a.cpu:
            ap.error("one CPU only: --same-cpu, or --rx-cpu another CPU than --cpu")
    where = (f"receive side on CPU {rx_cpu} (RPS; XDP: a pinned NAPI thread)" if rx_cpu is not None
             else "receive side on the same CPU")
    header("data path: packets/s processed on the receiving end of a veth pair, receive CPU time per packet")
    print(f"# {a.reps} reps x {a.seconds:g} s per case, interleaved; injector on CPU {a.cpu}, {where}; "
          f"64-byte UDP/IPv4 frames from {SPORTS} source ports")
    rng = random.Random(15)
    sizes = [1, 10_000] if a.quick else [1, 10_000, 100_000]
    with tempfile.TemporaryDirectory() as tmp, Sandbox() as sb:
        bare, clock = build(tmp, "bare_drop"), NetRxClock(tmp)
        cases: list[Case] = [NoFilter(sb, "no filter", "stack"), Bare(sb, "bare xdp drop", "xdp", bare),
                             Bare(sb, "bare tc drop", "tc-ingress", bare)]
        for name, hook, n, rules_rng, worst, obj in engine_cases(sizes, a.object):
            c = Bpfgate(sb, name, hook, n, rules_rng, worst, obj)
            print(f"# {c.name}: attached in {c.attach_s:.1f} s", flush=True)
            cases.append(c)
        for n in (1, 100, 10_000):
            cases.append(Iptables(sb, f"iptables raw {n} rules", n, rng))
        if not a.quick:
            cases.append(NftSet(sb, "nft set 100k", 100_000, rng))
        try:
            for c in cases if rx_cpu is not None else ():
                why_not = c.split(rx_cpu)
                if why_not:
                    print(f"# {c.name}: receive side left on the injector's CPU: {why_not}", flush=True)
            for rep in range(a.reps):
                for c in cases:
                    measure(c, a.seconds, a.cpu, clock)
                print(f"# rep {rep + 1}/{a.reps} done", flush=True)
        finally:
            for c in cases:
                c.close()
            clock.close()
    report(cases, sizes, a.cpu)


def median_ns(c: Case) -> float:
    ns = [x for x in c.ns_per_packet if x == x]   # nan: no packet
    return statistics.median(ns) if ns else float("nan")


def report(cases: list[Case], sizes: list[int], cpu: int) -> None:
    base = {c.hook: c for c in cases if isinstance(c, Bare)}
    width = max(28, *(len(c.name) for c in cases))
    print(f"{'case':{width}s} {'processed':38s} {'sent':>7s} {'on rx':>5s} {'rx busy':>7s} "
          f"{'rx CPU per packet':26s} {'waits/s':>7s}  {'receive side':17s} processed, capacity x")
    for c in cases:
        b = base.get(c.hook, cases[0])   # the bare program of the hook, else the bare stack
        ns = [x for x in c.ns_per_packet if x == x]
        per = f"{statistics.median(ns):5.0f} ns ({min(ns):.0f} - {max(ns):.0f})" if ns else "-"
        side = f"CPU {cpu if c.rx_cpu is None else c.rx_cpu} {c.mode}"
        ratio = (f"{statistics.median(c.pps) / statistics.median(b.pps):5.2f} "
                 f"{median_ns(b) / median_ns(c):5.2f} {b.name}")
        print(f"{c.name:{width}s} {mpps(c.pps)} {statistics.median(c.sent_pps) / 1e6:7.3f} {pct(c.on_rx_cpu):>5s} "
              f"{pct(c.busy):>7s} {per:26s} {statistics.median(c.waits):7.0f}  {side:17s} {ratio}")
    for c in cases:
        if c.napi:
            print(f"# {c.name}: NAPI thread {', '.join(map(str, c.napi))}; {c.refused} injector calls refused, "
                  f"{c.backlog_drops} backlog drops (all reps)")
        elif c.refused or c.backlog_drops:
            print(f"# {c.name}: {c.refused} injector calls refused, {c.backlog_drops} backlog drops (all reps)")
    by_name = {c.name: c for c in cases}
    top = sizes[-1]
    print("# the targets, medians of this run: processed, and capacity (the denominator's receive CPU time per "
          "packet / the numerator's)")
    for num, den in ((f"bpfgate tc {top} rules", "iptables raw 1 rules"),
                     (f"bpfgate tc {top} in-prefix", "iptables raw 1 rules"),
                     (f"bpfgate tc {top} rules", "bare tc drop"), (f"bpfgate tc {top} in-prefix", "bare tc drop"),
                     (f"bpfgate xdp {top} rules", "bare xdp drop"), (f"bpfgate xdp {top} in-prefix", "bare xdp drop")):
        n, d = by_name[num], by_name[den]
        print(f"{num:28s} / {den:22s} processed {statistics.median(n.pps) / statistics.median(d.pps):5.2f}   "
              f"capacity {median_ns(d) / median_ns(n):5.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inject":
        ifname, mac, src, dst, seconds, cpu = sys.argv[2:8]
        inject(ifname, mac, src, dst, float(seconds), int(cpu))
    else:
        main()
