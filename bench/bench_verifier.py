"""Verifier cost of the engine per hook: instructions the kernel's verifier processed to load each program
(bpf_prog_info.verified_insns; its limit is 1,000,000 per program), or the load error. Load time is what a
user waits for at attach; run this on every kernel the engine must load on (a 6.1 guest: see
scripts/kernels). --ns: also ns/packet (BPF_PROG_TEST_RUN) of a TCP SYN no rule of a small policy
matches, to compare two builds' data path (--object: another build, e.g. main's).

    .venv/bin/python bench/bench_verifier.py [--object PATH] [--hooks tc-ingress,...] [--ns] [--json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import time

from common import fmt, header, reps

from bpfgate.engine import engine as engine_mod
from bpfgate.engine import frames
from bpfgate.engine.engine import Engine
from bpfgate.errors import BpfgateError, VerifierError
from bpfgate.kernel.testrun import test_run
from bpfgate.policy.compile import compile_hook
from bpfgate.policy.model import Hook, HookPolicy
from bpfgate.policy.packet import Packet


NS_RULES = [{"name": "web", "protocol": "tcp", "dst_port": 80, "action": "drop"},
            {"name": "net", "src": "203.0.113.0/24", "action": "drop"},
            {"name": "one", "src": "198.51.100.7/32", "dst": "192.0.2.1/32", "protocol": "udp", "dst_port": 53,
             "action": "drop"}]


def ns_per_packet(eng: Engine, hook: Hook) -> list[float]:
    hp = HookPolicy.model_validate({"default": "allow", "rules": NS_RULES})
    eng.load_policy(compile_hook(hp, hook, ifindex=lambda _n: 1))
    frame = frames.build(Packet(family=4, src=ipaddress.ip_address("198.18.0.1"), dst=ipaddress.ip_address("198.18.0.2"), proto=6, sport=40000, dport=9,
                                tcp_flags=0x02))
    return reps(lambda: float(test_run(eng.program, frame, repeat=200_000).duration_ns), n=7)


def measure(hook: Hook, ct: bool, ns: bool = False) -> dict:
    t0 = time.perf_counter()
    try:
        eng = Engine.load(hook, ct=ct)
    except VerifierError as e:   # the log's last lines say where
        tail = "\n".join(e.summary.splitlines()[-25:])
        return {"hook": hook.value, "ct": ct, "error": f"{e}\n{tail}"}
    except BpfgateError as e:
        return {"hook": hook.value, "ct": ct, "error": str(e)}
    try:
        row = {"hook": hook.value, "ct": ct, "load_s": round(time.perf_counter() - t0, 2),
               "verified_insns": {p.name: p.info().verified_insns for p in eng.programs}}
        if ns:
            row["ns_per_packet"] = ns_per_packet(eng, hook)
    finally:
        eng.obj.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--object", help="an engine object other than the packaged one (e.g. main's build)")
    ap.add_argument("--hooks", default="tc-ingress,tc-egress,xdp", help="comma-separated hooks")
    ap.add_argument("--ns", action="store_true", help="also ns/packet of a packet no rule matches (test_run)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.object:
        engine_mod.OBJECT = args.object
        raw = open(args.object, "rb").read()   # an older build lacks the maps added since
        engine_mod.MAPS = tuple(m for m in engine_mod.MAPS if m.encode() in raw)
    rows = [measure(Hook(h), ct, args.ns) for h in args.hooks.split(",") for ct in (True, False)]
    if args.json:
        print(json.dumps(rows))
        return
    header("engine verifier cost (instructions processed per program)")
    for r in rows:
        if "error" in r:
            what = r["error"].replace("\n", "\n    ")
        else:
            what = ", ".join(f"{n} {i:,}" for n, i in r["verified_insns"].items()) + f" ({r['load_s']} s)"
            if "ns_per_packet" in r:
                what += "; " + fmt(r["ns_per_packet"], "ns/packet")
        print(f"{r['hook']:<12} ct={'on ' if r['ct'] else 'off'} {what}")


if __name__ == "__main__":
    main()
