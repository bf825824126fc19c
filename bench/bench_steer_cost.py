"""Per-packet cost of egress steering (bpf/steer.bpf.c) against a pass-through program, measured with
BPF_PROG_TEST_RUN in one run.

    sudo .venv/bin/python bench/bench_steer_cost.py [--repeat 1000000] [--reps 7] [--json]

The programs run in a throwaway network namespace with one veth whose far end is the next hop (a permanent
neighbour entry), so the route lookup and the redirect helpers do their real work; BPF_PROG_TEST_RUN frees
the packet instead of sending it. Cases: the empty TC program (floor); steering with no rule matching (parse
+ tracker + three rule lookups); an explicit rule, IPv4 and IPv6, with the next hop checked (forwarding on
the target) and unchecked (forwarding off: no route lookup); symmetric return of a tracked connection's
reply. Each rep runs every case once, interleaved; figures are medians with min-max, the cost above the
empty program and the ratio to it. A benchmark, not a test: it prints, it asserts nothing.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import time

import dpkt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header, test_run_args  # noqa: E402

from bpfgate import contract  # noqa: E402
from bpfgate.kernel.objects import BpfObject  # noqa: E402
from bpfgate.kernel.testrun import test_run  # noqa: E402
from bpfgate.sandbox import Sandbox  # noqa: E402
from bpfgate.steer import IF_RETURN, rules  # noqa: E402

SERVICE = {4: "198.18.250.1", 6: "fd00:fa::1"}
CLIENT = {4: "198.18.99.7", 6: "fd00:99::7"}
TC_ACT_REDIRECT = 7


def frame(family: int, src: str, dst: str, sport: int, dport: int) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_ACK, seq=1, ack=1, data=b"p" * 64)
    if family == 4:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
        ip.len = len(ip)
        etype = 0x0800
    else:
        ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                          nxt=6, hlim=64, data=tcp)
        ip.plen = len(tcp)
        etype = 0x86DD
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=etype, data=ip))


def reply_flow(obj: BpfObject, family: int, ifindex: int) -> None:
    """A connection client -> service that arrived on `ifindex`: its replies are steered back there."""
    ct = obj.map("bg_ct")
    k = contract.struct("steer", "bg_ct_key")()
    k.family, k.proto, k.sport, k.dport = family, 6, 40000, 80
    n = 4 if family == 4 else 16
    k.src[:n] = list(socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, CLIENT[family]))
    k.dst[:n] = list(socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, SERVICE[family]))
    v = contract.struct("steer", "bg_ct_value")()
    v.first_ns = v.last_ns = time.monotonic_ns()
    v.flags = 1  # BG_CTF_REPLY
    v.ext.in_ifindex = ifindex
    v.ext.peer_mac[:] = [2, 0, 0, 0, 0, 9]
    ct.update(bytes(k), bytes(v))


def main() -> None:
    args = test_run_args(__doc__)
    with Sandbox() as sb:
        host, peer = sb.host("bench"), sb.host("nexthop")
        link = sb.link(host, peer)
        dev, nh = link.end(host), link.end(peer)
        for fam, addr in ((4, nh.ip4), (6, nh.ip6)):
            host.run(["ip", "neigh", "replace", addr, "dev", dev.name, "lladdr", "02:00:00:00:00:09",
                      "nud", "permanent"], check=True)
        with host.entered():   # BPF_PROG_TEST_RUN runs in the caller's network namespace
            rows = measure(args, host, dev)
    if args.json:
        print(json.dumps({"repeat": args.repeat, "reps": args.reps, "cpus": os.cpu_count(), "results": rows},
                         indent=2))
        return
    header("egress steering cost per packet")
    print(f"BPF_PROG_TEST_RUN, {args.repeat} packets per call, median of {args.reps} calls (ns per packet)")
    print(f"{'case':52} {'median':>7} {'min-max':>11} {'+floor':>7} {'ratio':>6}")
    for r in rows:
        print(f"{r['case']:52} {r['median_ns']:7.1f} {r['min_ns']:5.0f}-{r['max_ns']:<5.0f} "
              f"{r['above_floor_ns']:7.1f} {r['ratio_to_empty']:6.2f}")


def measure(args, host, dev) -> list[dict]:
    objs = []

    def load(name: str) -> BpfObject:
        objs.append(BpfObject.open(name).load())
        return objs[-1]

    try:
        empty = load("selftest").program("bg_empty_tc")
        steer = load("steer")
        prog = steer.program("bg_steer_egress")
        ifindex = dev.index
        steer.map("steer_devs").update(ifindex, ifindex)
        ifv = steer.map("steer_ifs").value_type()
        ifv.mac[:] = [2, 0, 0, 0, 0, 1]
        ifv.flags = IF_RETURN
        steer.map("steer_ifs").update(ifindex, ifv)
        for i, fam in enumerate((4, 6)):
            r = rules.make(SERVICE[fam], dev.name, dev.peer.addr(fam), "tcp", 443)
            steer.map("steer_rules").update(bytes(rules.key_of(r)), bytes(rules.value_of(r, i, ifindex)))
            reply_flow(steer, fam, ifindex)
        miss = frame(4, "198.18.77.1", CLIENT[4], 5555, 40000)
        rule4, rule6 = frame(4, SERVICE[4], CLIENT[4], 443, 40001), frame(6, SERVICE[6], CLIENT[6], 443, 40001)
        back4, back6 = frame(4, SERVICE[4], CLIENT[4], 80, 40000), frame(6, SERVICE[6], CLIENT[6], 80, 40000)
        fwd = [f"net.ipv4.conf.{dev.name}.forwarding", f"net.ipv6.conf.{dev.name}.forwarding"]
        cases = [("empty tc program (floor)", empty, miss, None),
                 ("steer: no rule, no tracked reply (pass-through)", prog, miss, None),
                 ("steer: rule ipv4, next hop checked (route lookup)", prog, rule4, 1),
                 ("steer: rule ipv6, next hop checked (route lookup)", prog, rule6, 1),
                 ("steer: rule ipv4, unchecked (forwarding off)", prog, rule4, 0),
                 ("steer: rule ipv6, unchecked (forwarding off)", prog, rule6, 0),
                 ("steer: symmetric return ipv4", prog, back4, None),
                 ("steer: symmetric return ipv6", prog, back6, None)]
        samples: dict[str, list[float]] = {c[0]: [] for c in cases}
        retvals: dict[str, int] = {}

        def run(case, repeat):
            name, p, data, forwarding = case
            if forwarding is not None:
                for key in fwd:
                    host.sysctl(key, forwarding)
            res = test_run(p, data, repeat=repeat)
            retvals[name] = res.retval
            return res.duration_ns

        for case in cases:   # warm-up: first runs pay for page faults and cold caches
            run(case, 10_000)
        for _ in range(args.reps):
            for case in cases:
                samples[case[0]].append(run(case, args.repeat))
        stats = steer.map("steer_stats")
        counted = {k: sum(stats.lookup(v)) for k, v in (("steered", 0), ("returned", 1), ("unverified", 8))}
    finally:
        for o in objs:
            o.close()
    floor = statistics.median(samples[cases[0][0]])
    rows = []
    for name, *_ in cases:
        s = samples[name]
        med = statistics.median(s)
        rows.append({"case": name, "median_ns": med, "min_ns": min(s), "max_ns": max(s), "above_floor_ns": med - floor,
                     "ratio_to_empty": med / floor if floor else None,
                     "redirected": retvals[name] == TC_ACT_REDIRECT})
    if not all(r["redirected"] for r in rows[2:]):
        print(f"warning: a steering case did not redirect ({counted}): its figure is not the steering path",
              file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
