"""Per-packet cost of the policy engine on a cgroup (cgroup_skb egress) against an empty cgroup program.

BPF_PROG_TEST_RUN of the engine's bg_engine_cg_egress (the program `apply` attaches for a cgroup-egress
hook) with 0 / 1 / 100 / 10k rules, conntrack off and on, for a packet no rule matches and one the first
rule drops; the floor is bg_bench_cg_empty (returns 1), the cost any cgroup program has.

    .venv/bin/python bench/bench_cgroup.py        (BG_BENCH_QUICK=1: fewer sizes)
"""

from __future__ import annotations

import ipaddress
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import fmt, header, median, reps

from bpfgate.engine import Engine, frames
from bpfgate.kernel.objects import BpfObject
from bpfgate.kernel.testrun import test_run
from bpfgate.policy.compile import Limits, compile_hook
from bpfgate.policy.model import Hook, HookPolicy
from bpfgate.policy.packet import Packet

QUICK = os.environ.get("BG_BENCH_QUICK") == "1"
SIZES = [0, 1, 100] if QUICK else [0, 1, 100, 10_000]
REPEAT = 200_000
REPS = 5
SRC, DST = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")


def frame(dport: int) -> bytes:
    return frames.build(Packet(family=4, src=SRC, dst=DST, proto=6, sport=40000, dport=dport,
                               tcp_flags=0x10))


def ns_per_packet(prog, data: bytes) -> list[float]:
    return reps(lambda: float(test_run(prog, data, repeat=REPEAT).duration_ns), n=REPS)


def policy(n: int) -> HookPolicy:
    """n rules of two shapes: the first drops tcp to port 5432, then /32 destinations (a blocklist)."""
    rng = random.Random(n)
    rules = [{"name": "db", "protocol": "tcp", "dst_port": 5432, "action": "drop"}] if n else []
    rules += [{"name": f"r{i}", "dst": f"203.0.{rng.randrange(256)}.{rng.randrange(256)}/32", "action": "drop"}
              for i in range(n - 1)]
    seen, uniq = set(), []
    for r in rules:   # random /32s may repeat: one rule each
        if r.get("dst") not in seen:
            seen.add(r.get("dst"))
            uniq.append(r)
    return HookPolicy.model_validate({"default": "allow", "rules": uniq})


def main() -> None:
    header("policy engine on a cgroup (cgroup_skb egress): ns/packet, BPF_PROG_TEST_RUN")
    print(f"# repeat {REPEAT} per call, {REPS} reps; 'over floor' = minus the empty cgroup program's median")
    with BpfObject.open("engine") as obj:
        for name in obj.program_names():
            obj.set_autoload(name, name == "bg_bench_cg_empty")
        obj.load()
        floor = ns_per_packet(obj.program("bg_bench_cg_empty"), frame(80))
    fl = median(floor)
    print(f"floor    empty cgroup program                 {fmt(floor, 'ns')}", flush=True)
    for ct in (False, True):
        for n in SIZES:
            hp = policy(n)
            compiled = compile_hook(hp, Hook.CGROUP_EGRESS, limits=Limits(max_entries=1 << 20))
            with Engine.load("cgroup-egress", ct=ct) as eng:
                eng.load_policy(compiled)
                prog = eng.program
                for what, dport in (("miss", 80), ("hit", 5432)):
                    if what == "hit" and not n:
                        continue
                    t = ns_per_packet(prog, frame(dport))
                    print(f"ct={'on ' if ct else 'off'} {len(hp.rules):>6d} rules {what:4s}  {fmt(t, 'ns')}  "
                          f"over floor {median(t) - fl:.0f} ns ({median(t) / fl:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
