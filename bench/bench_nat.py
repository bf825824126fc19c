"""NAT and load balancing (bpf/nat.bpf.c): per-packet cost with BPF_PROG_TEST_RUN against an empty TC
program (same run), the cost of a flow's first packet, and Maglev table build time and disruption.

    sudo .venv/bin/python bench/bench_nat.py [--repeat 1000000] [--reps 7] [--json]

Steady state: BPF_PROG_TEST_RUN runs the program `repeat` times on ONE skb, so a translated packet comes
back translated. The flows measured here are therefore built to translate on every run: flow A's entry
translates to B and flow B's to A (stateful: two original entries with live state; stateless: two 1:1
rules), each run pays a full established-flow translation (lookup, the partner entry kept alive, counters,
address+port rewrite with both checksums). A first packet (new flow: rule, Maglev pick, SNAT port search,
two entries inserted) is timed with repeat=1, a fresh flow per call (median of many; it includes the
timer's own overhead, shown by the empty program timed the same way).
A benchmark: it prints, it asserts nothing.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import socket
import statistics
import sys
import time

import dpkt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header, test_run_args  # noqa: E402

from bpfgate.kernel.objects import BpfObject  # noqa: E402
from bpfgate.kernel.testrun import test_run  # noqa: E402
from bpfgate.nat import maglev, rules  # noqa: E402
from bpfgate.nat.gateway import NAT_DST, NAT_SRC, Gateway  # noqa: E402
from bpfgate.nat.rules import Config  # noqa: E402

CLIENT4, A4, B4 = "198.18.0.1", "198.18.200.1", "198.18.1.2"
CLIENT6, A6, B6 = "fd00::1", "fd00:200::1", "fd00:1::2"


def frame(src: str, dst: str, sport: int, dport: int, proto: str = "tcp", flags: int = dpkt.tcp.TH_ACK) -> bytes:
    l4 = (dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=1, ack=1, data=b"p" * 64) if proto == "tcp"
          else dpkt.udp.UDP(sport=sport, dport=dport, data=b"p" * 64))
    if ipaddress.ip_address(src).version == 4:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6 if proto == "tcp" else 17, data=l4)
        ip.len = len(ip)
        etype = 0x0800
    else:
        ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                          nxt=6 if proto == "tcp" else 17, hlim=64, data=l4)
        ip.plen = len(l4)
        etype = 0x86DD
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=etype, data=ip))


class Bench:
    def __init__(self) -> None:
        self.obj = BpfObject.open("nat").load()
        names = ("bg_ct", "nat_in_dst", "nat_out_src", "nat_snat", "lb_svc", "lb_backends", "lb_slots", "nat_stats")
        self.gw = Gateway("bench", None, {n: self.obj.map(n) for n in names}, Config())
        self.ct = self.obj.map("bg_ct")

    def rule(self, r) -> None:
        for m, k, v in self.gw._entries(r):
            self.gw.maps[m].update(bytes(k), bytes(v))

    def flow(self, src: str, sport: int, dst: str, dport: int, side: int, to: str, to_port: int,
             backend: int = 0) -> None:
        """A live, established original entry translating `side` to to:to_port."""
        k, v = self.ct.key_type(), self.ct.value_type()
        fam = ipaddress.ip_address(src).version
        k.family, k.proto, k.sport, k.dport = fam, 6, sport, dport
        n = 4 if fam == 4 else 16
        ctypes.memmove(k.src, ipaddress.ip_address(src).packed, n)
        ctypes.memmove(k.dst, ipaddress.ip_address(dst).packed, n)
        v.first_ns = v.last_ns = time.monotonic_ns()   # established: live 600 s after its last packet
        v.flags = 1
        v.ext.nat_flags, v.ext.nat_port, v.ext.backend_id = side, to_port, backend
        ctypes.memmove(v.ext.nat_addr, ipaddress.ip_address(to).packed, n)
        self.ct.update(k, v)


def main() -> None:
    args = test_run_args(__doc__, lambda ap: ap.add_argument(
        "--first-packets", type=int, default=2000, help="fresh flows timed one call each"))

    empty_obj = BpfObject.open("selftest").load()
    empty = empty_obj.program("bg_empty_tc")
    b = Bench()
    ing, egr = b.obj.program("bg_nat_ingress"), b.obj.program("bg_nat_egress")
    # stateful DNAT: client -> A:80 becomes B:80 and client -> B:80 becomes A:80
    for c, a, bb in ((CLIENT4, A4, B4), (CLIENT6, A6, B6)):
        b.flow(c, 40000, a, 80, NAT_DST, bb, 80)
        b.flow(c, 40000, bb, 80, NAT_DST, a, 80)
    # stateful SNAT at egress: client:40001 -> server becomes A:40001 and back
    b.flow(CLIENT4, 40001, B4, 443, NAT_SRC, A4, 40001)
    b.flow(A4, 40001, B4, 443, NAT_SRC, CLIENT4, 40001)
    # load balancing, established: like DNAT plus the check that the flow's backend still exists
    b.flow(CLIENT4, 40002, A4, 80, NAT_DST, B4, 80, backend=1)
    b.flow(CLIENT4, 40002, B4, 80, NAT_DST, A4, 80, backend=1)
    b.gw.maps["lb_backends"].update(1, {"port": 80, "family": 4, "svc": 1})
    # stateless 1:1 pair
    b.rule(rules.dnat("sl1", "tcp", f"{A4}:81", f"{B4}:81", stateless=True))
    b.rule(rules.dnat("sl2", "tcp", f"{B4}:81", f"{A4}:81", stateless=True))
    cases = [
        ("empty tc program (floor)", empty, frame(CLIENT4, A4, 40000, 80)),
        ("nat, ipv4 tcp, no rule, no flow (pass)", ing, frame(CLIENT4, "198.18.9.9", 40000, 80)),
        ("DNAT stateful, ipv4 tcp, established", ing, frame(CLIENT4, A4, 40000, 80)),
        ("DNAT stateful, ipv6 tcp, established", ing, frame(CLIENT6, A6, 40000, 80)),
        ("DNAT stateless, ipv4 tcp", ing, frame(CLIENT4, A4, 40000, 81)),
        ("SNAT stateful, ipv4 tcp, established (egress)", egr, frame(CLIENT4, B4, 40001, 443)),
        ("LB, ipv4 tcp, established", ing, frame(CLIENT4, A4, 40002, 80)),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _, prog, fr in cases:
        test_run(prog, fr, repeat=10_000)
    for _ in range(args.reps):
        for name, prog, fr in cases:
            samples[name].append(test_run(prog, fr, repeat=args.repeat).duration_ns)
    floor = statistics.median(samples[cases[0][0]])
    rows = [{"case": n, "median_ns": statistics.median(s), "min_ns": min(s), "max_ns": max(s),
             "above_floor_ns": statistics.median(s) - floor} for n, s in samples.items()]

    # first packets: a fresh flow per call
    b.rule(rules.dnat("d", "tcp", f"{A4}:8080", f"{B4}:8080"))
    b.rule(rules.snat("s", "198.18.0.0/24", A4, ports="20000-60000"))
    svc = rules.service("lb", "tcp", f"{A4}:9090", [f"198.18.1.{i}" for i in range(2, 12)])
    table = maglev.build(svc.weights(), svc.table_size)
    ids = {be.name: i + 10 for i, be in enumerate(svc.backends)}
    for be in svc.backends:
        b.gw.maps["lb_backends"].update(ids[be.name], {"port": 9090, "family": 4, "svc": 1})
        b.gw.maps["lb_backends"].lookup(ids[be.name])
    for i, name in enumerate(table):
        b.gw.maps["lb_slots"].update(i, ids[name])
    b.gw.maps["lb_svc"].update(0, {"base": 0, "size": svc.table_size, "seed": 7})
    b.gw.maps["nat_in_dst"].update(bytes(b.gw._svc_key(svc)), bytes(b.gw._target(A4, svc=1)))
    syn = dpkt.tcp.TH_SYN
    first = {"empty program, one call per packet (timer floor)": [], "DNAT first packet (SYN)": [],
             "LB first packet (Maglev pick)": [], "SNAT first packet (port search)": []}
    for i in range(args.first_packets):
        sp = 10000 + i
        first["empty program, one call per packet (timer floor)"].append(
            test_run(empty, frame(CLIENT4, A4, sp, 8080, flags=syn)).duration_ns)
        first["DNAT first packet (SYN)"].append(test_run(ing, frame(CLIENT4, A4, sp, 8080, flags=syn)).duration_ns)
        first["LB first packet (Maglev pick)"].append(test_run(ing, frame(CLIENT4, A4, sp, 9090, flags=syn)).duration_ns)
        first["SNAT first packet (port search)"].append(
            test_run(egr, frame(CLIENT4, B4, sp, 443, flags=syn)).duration_ns)
    first_rows = [{"case": n, "median_ns": statistics.median(s), "p10_ns": sorted(s)[len(s) // 10],
                   "p90_ns": sorted(s)[9 * len(s) // 10]} for n, s in first.items()]
    stats = {k: v for k, v in b.gw.stats().items() if v}
    b.obj.close()
    empty_obj.close()

    mag = maglev_figures(args.reps)
    out = {"repeat": args.repeat, "reps": args.reps, "per_packet": rows, "first_packet": first_rows,
           "maglev": mag, "nat_stats": stats}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    header("NAT / load balancing cost per packet")
    print(f"BPF_PROG_TEST_RUN, {args.repeat} packets per call, median of {args.reps} calls (ns per packet)")
    print(f"{'case':48} {'median':>7} {'min-max':>11} {'+floor':>7}")
    for r in rows:
        print(f"{r['case']:48} {r['median_ns']:7.1f} {r['min_ns']:5.0f}-{r['max_ns']:<5.0f} {r['above_floor_ns']:7.1f}")
    print(f"\nfirst packet of a flow: one call per packet, {args.first_packets} fresh flows (ns, median, p10-p90)")
    for r in first_rows:
        print(f"{r['case']:48} {r['median_ns']:7.0f} {r['p10_ns']:5.0f}-{r['p90_ns']:<5.0f}")
    print(f"\nprogram counters over the run: {stats}")
    print(f"\nMaglev table of {maglev.DEFAULT_SIZE} slots: build time (ms, median of {args.reps}, min-max) and "
          "slots moved by one change (ideal: the backend's share)")
    print(f"{'backends':>8} {'build ms':>9} {'min-max':>13} {'remove one':>11} {'add one':>8} {'ideal':>7}")
    for m in mag:
        print(f"{m['backends']:8} {m['build_ms']:9.1f} {m['min_ms']:6.1f}-{m['max_ms']:<6.1f} "
              f"{100 * m['moved_remove']:10.3f}% {100 * m['moved_add']:7.3f}% {100 / m['backends']:6.3f}%")


def maglev_figures(reps: int) -> list[dict]:
    out = []
    for n in (10, 100, 1000):
        bes = [(f"198.18.{i // 250}.{i % 250 + 1}", 1) for i in range(n)]
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            t = maglev.build(bes)
            times.append((time.perf_counter() - t0) * 1e3)
        removed = maglev.build(bes[:-1])
        added = maglev.build([*bes, ("198.18.99.99", 1)])
        out.append({"backends": n, "build_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
                    "moved_remove": maglev.disruption(t, removed), "moved_add": maglev.disruption(t, added)})
    return out


if __name__ == "__main__":
    main()
