"""Policy engine classifier cost and apply time, against the empty program, an LPM-trie-only filter and
nftables/iptables, in one run.

ns/packet: BPF_PROG_TEST_RUN (TC program, `repeat` runs per call, kernel's average) on a TCP SYN that
matches no rule (every shape visited: the worst case), at 1, 100, 10k, 100k rules, for:
  ports    tcp/udp single destination ports (1 shape)
  cidr4    IPv4 source CIDRs of lengths /8../32 spread over the address space (stage 0: prefix classes)
  cidr6    IPv6 source CIDRs of lengths /16../128 spread over the address space
           (+ "deepest-prefix hit": a packet from inside the longest prefix, stage 0's longest walk)
  5tuple   src /24, dst /32, tcp, one destination port
  lpm4/6   the kernel LPM trie alone with the same prefixes (bg_bench_lpm: parse + one trie lookup)
Apply: compile time, batch load of the compiled entries (the kernel part; bg_cls sized as Engine.attach
sizes them: bg_cls/bg_pfx preallocated from 32k entries), one live rule added.
Peers (each in a throwaway network namespace): `nft -f` of a 100k-element set, `iptables-restore` of 10k rules.
Run as root:  .venv/bin/python bench/bench_classifier.py [--quick]
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from common import fmt, header, median, reps

from bpfgate.engine import Engine, frames
from bpfgate.engine.engine import prealloc_for
from bpfgate.errors import PolicyError
from bpfgate.kernel.testrun import test_run
from bpfgate.policy.compile import Limits, compile_hook
from bpfgate.policy.model import Hook, HookPolicy, Rule
from bpfgate.policy.packet import Packet

QUICK = "--quick" in sys.argv
SIZES = [1, 100, 10_000] if QUICK else [1, 100, 10_000, 100_000]
REPEAT = 200_000
REPS = 5
LIMITS = Limits(max_shapes=32, max_entries=1 << 20)
SRC4, DST4 = ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.18.0.2")
SRC6, DST6 = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::2")


def spread_prefixes(rng: random.Random, n: int, v6: bool) -> list:
    """n distinct prefixes of mixed lengths spread over the space, none covering the test source."""
    width, lo = (128, 16) if v6 else (32, 8)
    probe = SRC6 if v6 else SRC4
    net_t = ipaddress.IPv6Network if v6 else ipaddress.IPv4Network
    out: set = set()
    while len(out) < n:
        plen = rng.randint(lo, width)
        addr = rng.getrandbits(width) >> (width - plen) << (width - plen)
        net = net_t((addr, plen))
        if probe not in net:
            out.add(net)
    return sorted(out, key=lambda x: (x.prefixlen, int(x.network_address)))


def rules_for(mix: str, n: int, rng: random.Random) -> list[dict]:
    if mix == "ports":
        return [{"name": f"p{i}", "protocol": "tcp" if i < 65000 else "udp", "dst_port": i % 65000 + 1,
                 "action": "drop"} for i in range(n)]
    if mix in ("cidr4", "cidr6"):
        return [{"name": f"c{i}", "src": str(p), "action": "drop"}
                for i, p in enumerate(spread_prefixes(rng, n, mix == "cidr6"))]
    if mix == "5tuple":
        return [{"name": f"t{i}", "src": f"10.{rng.randrange(256)}.{rng.randrange(256)}.0/24",
                 "dst": f"{rng.randrange(11, 200)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}/32",
                 "protocol": "tcp", "dst_port": rng.randrange(1, 65536), "action": "drop"} for i in range(n)]
    raise ValueError(mix)


def miss_frame(v6: bool) -> bytes:
    p = Packet(family=6 if v6 else 4, src=SRC6 if v6 else SRC4, dst=DST6 if v6 else DST4, proto=6,
               sport=40000, dport=9, tcp_flags=0x02)
    return frames.build(p)


def deep_hit_frame(hp: HookPolicy, v6: bool) -> bytes:
    """A packet from inside the longest source prefix of the policy: stage 0 walks to its deepest probe."""
    net = max((n for r in hp.rules for n in r.src or ()), key=lambda n: n.prefixlen)
    p = Packet(family=6 if v6 else 4, src=net.network_address, dst=DST6 if v6 else DST4, proto=6,
               sport=40000, dport=9, tcp_flags=0x02)
    return frames.build(p)


def ns_per_packet(prog, frame: bytes) -> list[float]:
    return reps(lambda: float(test_run(prog, frame, repeat=REPEAT).duration_ns), n=REPS)


def bench_engine(mix: str, n: int, rng: random.Random, results: dict) -> None:
    hp = HookPolicy.model_validate({"default": "allow", "rules": rules_for(mix, n, rng)})
    t0 = time.perf_counter()
    try:
        compiled = compile_hook(hp, Hook.TC_INGRESS, limits=LIMITS, ifindex=lambda _n: 1)
    except PolicyError as e:
        print(f"{mix:7s} {n:>7d} rules  refused by the compiler: {e}", flush=True)
        return
    t_compile = time.perf_counter() - t0
    def timed_load(**kw) -> tuple[Engine, float]:
        eng = Engine.load("tc-ingress", ct=False, **kw)
        t0 = time.perf_counter()
        eng.load_policy(compiled, limits=LIMITS)
        return eng, time.perf_counter() - t0

    big = n == SIZES[-1]
    t_pre = []
    for _ in range(REPS if big else 0):   # into a classifier table allocated per entry (small policies' way)
        eng, t = timed_load()
        eng.close()
        t_pre.append(t)
    t_load = []
    for i in range(REPS if big else 1):   # as attach() sizes the tables; the last engine is measured below
        eng, t = timed_load(prealloc=prealloc_for(compiled))
        t_load.append(t)
        if i < (REPS if big else 1) - 1:
            eng.close()
    with eng:
        ns = ns_per_packet(eng.program, miss_frame(mix == "cidr6"))
        hit = ns_per_packet(eng.program, deep_hit_frame(hp, mix == "cidr6")) if mix.startswith("cidr") else None
        shapes = len(compiled.conf().shapes)
        add = []
        if n == SIZES[-1]:   # one live rule added (and removed) through the API, 20 times
            for i in range(20):
                r = Rule.model_validate({"name": f"live{i}", "protocol": "tcp", "dst_port": 7, "action": "drop"})
                t0 = time.perf_counter()
                eng.add_rule(r, 0)
                add.append(time.perf_counter() - t0)
                eng.delete_rule(f"live{i}")
    results[(mix, n)] = median(ns)
    if hit:
        results[(mix + "-hit", n)] = median(hit)
    print(f"{mix:7s} {n:>7d} rules  {len(compiled.cls):>7d} entries {shapes:>2d} shapes  ns/pkt {fmt(ns, 'ns')}"
          f"  compile {t_compile * 1e3:8.1f} ms  load {fmt(t_load, 'ms', 1e3)}"
          + (f"  deepest-prefix hit {fmt(hit, 'ns')}" if hit else "")
          + (f"  load per-entry alloc {fmt(t_pre, 'ms', 1e3)}  live add {fmt(add, 'ms', 1e3, 3)}" if add else ""),
          flush=True)


def bench_lpm(v6: bool, n: int, rng: random.Random, results: dict) -> None:
    name = "lpm6" if v6 else "lpm4"
    with Engine.load("tc-ingress", ct=False, max_entries={"bg_bench_lpm4": max(n, 1), "bg_bench_lpm6": max(n, 1)},
                     also=("bg_bench_lpm",)) as e:
        prefixes = spread_prefixes(rng, n, v6)
        keys = b"".join(struct.pack("=I", p.prefixlen) + p.network_address.packed for p in prefixes)
        e.obj.map("bg_bench_lpm6" if v6 else "bg_bench_lpm4").update_batch_raw(keys, struct.pack("=I", 1) * n, n)
        ns = ns_per_packet(e.obj.program("bg_bench_lpm"), miss_frame(v6))
    results[(name, n)] = median(ns)
    print(f"{name:7s} {n:>7d} prefixes                        ns/pkt {fmt(ns, 'ns')}", flush=True)


def netns_run(argv: list[str], stdin: str) -> float:
    """Run argv in a fresh throwaway network namespace; seconds taken (namespace setup excluded)."""
    ns = f"bgbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        t0 = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", ns] + argv, input=stdin, text=True, check=True,
                       capture_output=True, timeout=120)
        return time.perf_counter() - t0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def peers() -> None:
    rng = random.Random(5)
    if shutil.which("nft"):
        addrs: set = set()
        while len(addrs) < 100_000:
            addrs.add(rng.getrandbits(32))
        elems = ", ".join(str(ipaddress.IPv4Address(a)) for a in addrs)
        text = ("table ip bg {\n set s { type ipv4_addr; }\n"
                " chain c { type filter hook input priority 0; ip saddr @s drop; }\n}\n"
                f"add element ip bg s {{ {elems} }}\n")
        t = reps(lambda: netns_run(["nft", "-f", "-"], text), n=REPS, warmup=0)
        print(f"peer    nft -f, 100k-element set            {fmt(t, 'ms', 1e3)}")
    else:
        print("peer    nft not installed")
    if shutil.which("iptables-restore"):
        lines = ["*filter", ":INPUT ACCEPT [0:0]"]
        lines += [f"-A INPUT -p tcp --dport {i % 65000 + 1} -j DROP" for i in range(10_000)]
        text = "\n".join(lines + ["COMMIT", ""])
        t = reps(lambda: netns_run(["iptables-restore"], text), n=REPS, warmup=0)
        print(f"peer    iptables-restore, 10k rules          {fmt(t, 'ms', 1e3)}")
    else:
        print("peer    iptables-restore not installed")


def main() -> None:
    header("policy engine classifier: ns/packet (BPF_PROG_TEST_RUN, TC, no-match SYN) and apply time")
    print(f"# repeat {REPEAT} per call, {REPS} reps; ratio = t(N)/t(1) of medians; 'floor' = empty program")
    results: dict = {}
    with Engine.load("tc-ingress", ct=False, also=("bg_bench_empty",)) as base:
        floor = ns_per_packet(base.obj.program("bg_bench_empty"), miss_frame(False))
    print(f"floor   empty program                      ns/pkt {fmt(floor, 'ns')}", flush=True)
    rng = random.Random(1)
    for v6 in (False, True):
        for n in SIZES:
            bench_lpm(v6, n, rng, results)
    for mix in ("ports", "cidr4", "cidr6", "5tuple"):
        rng = random.Random(2)
        for n in SIZES:
            bench_engine(mix, n, rng, results)
    print("\n# ratios t(N)/t(1), and minus the floor")
    fl = median(floor)
    for mix in ("ports", "cidr4", "cidr6", "5tuple", "lpm4", "lpm6", "cidr4-hit", "cidr6-hit"):
        base_t = results[(mix, 1)]
        row = "  ".join(f"{n}: {results[(mix, n)] / base_t:.2f} ({results[(mix, n)] - fl:.0f} ns)" for n in SIZES
                        if (mix, n) in results)
        print(f"{mix:7s} {row}")
    for fam, mix in (("4", "cidr4"), ("6", "cidr6")):
        n = SIZES[-1]
        if (mix, n) in results:
            print(f"cidr{fam} vs lpm{fam} at {n}: {results[(mix, n)] / results[('lpm' + fam, n)]:.2f}x (miss), "
                  f"{results[(mix + '-hit', n)] / results[('lpm' + fam, n)]:.2f}x (deepest-prefix hit)")
    print()
    peers()


if __name__ == "__main__":
    main()
