"""The data path with real frames: packets/s that a filter on the receiving end of a veth pair processes,
bpfgate against iptables, nftables and bare drop programs, in one run.

    sudo .venv/bin/python bench/bench_datapath.py [--quick] [--seconds 2] [--reps 3] [--cpu N] [--object PATH]
                                                  [--test-run]

Each case is its own pair of network namespaces (a sandbox: tx -- rx over one veth pair). An injector in
tx (AF_PACKET, PACKET_QDISC_BYPASS, sendmmsg of 256 frames a call: 64-byte UDP/IPv4 to rx port 9, 64
source ports) runs pinned to one CPU for --seconds; a veth delivers each frame on the sending CPU
(softirq, or the peer's NAPI for native XDP), so that one CPU carries the whole receive side. Processed
= the packets the filter's own counter saw drop (its drop rule, the bare programs' counters, the
iptables/nft rule counters; "no filter": the rx stack's UDP NoPorts), divided by the time. Every case
drops the traffic at its last rule, after rules of every shape that match nothing:
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
gets every entry in bg_cls.
--test-run times the same bpfgate cases (and the bare programs) with BPF_PROG_TEST_RUN instead of frames:
ns per packet of the program alone, on one of the injector's frames (less noise from a loaded machine).
Reps run the cases interleaved (a noisy neighbour hits them alike);
figures are medians with min-max and the ratio to the bare drop program of the same hook. A benchmark: it
prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import random
import re
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

from bpfgate import attach  # noqa: E402
from bpfgate.engine import Engine  # noqa: E402
from bpfgate.engine import engine as engine_mod  # noqa: E402
from bpfgate.kernel.testrun import test_run  # noqa: E402
from bpfgate.policy.compile import compile_hook  # noqa: E402
from bpfgate.kernel.objects import BpfObject  # noqa: E402
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
    sent, t0 = 0, time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        n = libc.sendmmsg(s.fileno(), msgs, BATCH, 0)
        if n < 0:
            if ctypes.get_errno() in (105, 11):   # ENOBUFS / EAGAIN: the device is full, go on
                continue
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        sent += n
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}))


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
        self.pps: list[float] = []
        self.sent_pps: list[float] = []

    def setup(self) -> None: ...

    def count(self) -> int:
        raise NotImplementedError

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
        return sum(self.obj.map("drops")[0])

    def close(self) -> None:
        attach.detach(self.att)
        self.obj.close()


class Bpfgate(Case):
    def __init__(self, sb, name, hook, n_rules, rng, worst: bool, obj: str | None = None):
        super().__init__(sb, name, hook)
        decoy = (self.tx_if.ip4, self.rx_if.ip4) if worst else None
        hp = HookPolicy.model_validate({"default": "allow", "rules": mixed_rules(n_rules, rng, decoy)})
        packaged = engine_mod.OBJECT
        engine_mod.OBJECT = obj or packaged
        t0 = time.perf_counter()
        try:
            self.eng = Engine.attach(self.rx_if.name, hook, hp, netns_name=self.rx.netns, ct=False,
                                     limits=LIMITS, **({"mode": "native"} if hook == "xdp" else {}))
        finally:
            engine_mod.OBJECT = packaged
        self.attach_s = time.perf_counter() - t0

    def count(self) -> int:
        return self.eng.counters()["sink"].packets

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


# ---- BPF_PROG_TEST_RUN ----------------------------------------------------------------------------------

REPEAT = 200_000


class _AllInBgCls(Engine):
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
        prealloc = engine_mod.prealloc_for(compiled)
        if old:   # its bg_cls sized as that build's attach sized it
            engine_mod.MAPS = tuple(m for m in maps if m != "bg_cls_short")
            n = len(compiled.cls)
            prealloc = {"bg_cls": min(3 * n, engine_mod.HASH_MAX)} if n >= engine_mod.PREALLOC_MIN else {}
        try:
            sizes = engine_mod.rule_array_sizes(max(compiled.rules) + 1)
            eng = (_AllInBgCls if old else Engine).load(hook, ct=False, prealloc=prealloc, max_entries=sizes)
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
        bare = BpfObject.open(build_bare(tmp))
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


def measure(case: Case, seconds: float, cpu: int) -> None:
    before = case.count()
    r = case.tx.run([sys.executable, os.path.abspath(__file__), "--inject", case.tx_if.name, case.rx_mac,
                     case.tx_if.ip4, case.rx_if.ip4, str(seconds), str(cpu)], timeout=seconds + 60, check=True)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    time.sleep(0.05)
    case.pps.append((case.count() - before) / res["seconds"])
    case.sent_pps.append(res["sent"] / res["seconds"])


def build_bare(tmp: str) -> str:
    out = os.path.join(tmp, "bare_drop.bpf.o")
    arch = os.uname().machine
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}-linux-gnu", "-c",
                    os.path.join(HERE, "bare_drop.bpf.c"), "-o", out], check=True)
    return out


def mpps(v: list[float]) -> str:
    return f"{statistics.median(v) / 1e6:6.3f} Mpps (min {min(v) / 1e6:.3f} - max {max(v) / 1e6:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 and 10k rules only, no 100k cases")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    ap.add_argument("--object", help="also the bpfgate cases with this engine object (e.g. main's build)")
    ap.add_argument("--test-run", action="store_true", help="BPF_PROG_TEST_RUN ns/packet instead of frames")
    a = ap.parse_args()
    if a.test_run:
        test_run_main(a, [1, 10_000] if a.quick else [1, 10_000, 100_000])
        return
    header("data path: packets/s processed on the receiving end of a veth pair (one CPU)")
    print(f"# {a.reps} reps x {a.seconds:g} s per case, interleaved; injector and receive side on CPU {a.cpu}; "
          f"64-byte UDP/IPv4 frames from {SPORTS} source ports")
    rng = random.Random(15)
    sizes = [1, 10_000] if a.quick else [1, 10_000, 100_000]
    with tempfile.TemporaryDirectory() as tmp, Sandbox() as sb:
        bare = build_bare(tmp)
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
            for rep in range(a.reps):
                for c in cases:
                    measure(c, a.seconds, a.cpu)
                print(f"# rep {rep + 1}/{a.reps} done", flush=True)
        finally:
            for c in cases:
                c.close()
    floor = {c.hook: statistics.median(c.pps) for c in cases if isinstance(c, Bare)}
    stack = statistics.median(cases[0].pps)
    width = max(28, *(len(c.name) for c in cases))
    print(f"{'case':{width}s} {'processed':42s} {'sent':>10s}  ratio")
    for c in cases:
        base = floor.get(c.hook)
        ratio = (f"{statistics.median(c.pps) / base:5.2f} x bare {c.hook}" if base
                 else f"{statistics.median(c.pps) / stack:5.2f} x no filter")
        print(f"{c.name:{width}s} {mpps(c.pps)}  {statistics.median(c.sent_pps) / 1e6:6.3f} M  {ratio}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inject":
        ifname, mac, src, dst, seconds, cpu = sys.argv[2:8]
        inject(ifname, mac, src, dst, float(seconds), int(cpu))
    else:
        main()
