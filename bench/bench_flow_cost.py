"""Per-packet cost of flow accounting (bpf/flows.bpf.c) and of the capture filter (bpf/capture.bpf.c),
measured with BPF_PROG_TEST_RUN against an empty TC program in the same run.

    sudo .venv/bin/python bench/bench_flow_cost.py [--repeat 1000000] [--reps 7] [--json]

Each rep runs every case once, interleaved (a noisy neighbour hits all cases alike); figures are the
median of the reps with min-max, the cost above the empty program, and the ratio to it. A benchmark,
not a test: it prints, it asserts nothing.
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

from bpfgate.inspect.capture import CaptureFilter  # noqa: E402
from bpfgate.inspect.flows import Flow, read_table, top_flows  # noqa: E402
from bpfgate.kernel.objects import BpfObject  # noqa: E402
from bpfgate.kernel.maps import possible_cpus  # noqa: E402
from bpfgate.kernel.testrun import test_run  # noqa: E402


def tcp_frame(family: int, flags: int = dpkt.tcp.TH_ACK, payload: int = 64) -> bytes:
    tcp = dpkt.tcp.TCP(sport=40000, dport=443, flags=flags, seq=1, ack=1, data=b"p" * payload)
    if family == 4:
        ip = dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"), p=6, data=tcp)
        ip.len = len(ip)
        etype = 0x0800
    else:
        ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, "fd00::1"),
                          dst=socket.inet_pton(socket.AF_INET6, "fd00::2"), nxt=6, hlim=64, data=tcp)
        ip.plen = len(tcp)
        etype = 0x86DD
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=etype, data=ip))


def fill_flows(obj: BpfObject, n: int) -> None:
    """Put n unrelated UDP/IPv4 connections in the tracker's table (bg_ct), so lookups hit a populated hash."""
    table = obj.map("bg_ct")
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    keys, vals = [], []
    for i in range(n):
        k = table.key_type()
        k.family, k.proto = 4, 17
        k.src[0], k.src[1], k.src[2], k.src[3] = 198, 19, (i >> 8) & 0xFF, i & 0xFF
        k.dst[0], k.dst[3] = 198, 1
        k.sport, k.dport = 1024 + (i % 60000), 53
        keys.append(k)
        v = table.value_type()
        v.first_ns = v.last_ns = now
        v.packets[0], v.bytes[0] = 1, 100
        vals.append(v)
    table.update_batch(keys, vals)


def main() -> None:
    args = test_run_args(__doc__)

    objs = []

    def load(name: str, **kw) -> BpfObject:
        obj = BpfObject.open(name, rodata=kw.get("rodata"))
        for m, n in kw.get("sizes", {}).items():
            obj.set_max_entries(m, n)
        objs.append(obj.load())
        return obj

    empty = load("selftest").program("bg_empty_tc")
    flows = load("flows")
    flows_big = load("flows")
    fill_flows(flows_big, 60_000)
    cap_miss = load("capture", rodata={"cfg_snaplen": 64, **CaptureFilter.parse("udp", 53).rodata()},
                    sizes={"capture_scratch": possible_cpus()})
    v4, v6 = tcp_frame(4), tcp_frame(6)
    cases = [
        ("empty tc program (floor)", empty, v4),
        ("flows, ipv4 tcp, existing flow", flows.program("bg_flow_ingress"), v4),
        ("flows, ipv6 tcp, existing flow", flows.program("bg_flow_ingress"), v6),
        ("flows, ipv4, table holding 60k flows", flows_big.program("bg_flow_ingress"), v4),
        ("capture filter, packet not matching", cap_miss.program("bg_cap_ingress"), v4),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _, prog, frame in cases:  # warm-up: first runs pay for page faults and cold caches
        test_run(prog, frame, repeat=10_000)
    for _ in range(args.reps):
        for name, prog, frame in cases:
            samples[name].append(test_run(prog, frame, repeat=args.repeat).duration_ns)
    floor = statistics.median(samples[cases[0][0]])
    rows = []
    for name, _, _ in cases:
        s = samples[name]
        med = statistics.median(s)
        rows.append({"case": name, "median_ns": med, "min_ns": min(s), "max_ns": max(s),
                     "above_floor_ns": med - floor, "ratio_to_empty": med / floor if floor else None})
    reads = read_costs(flows_big, args.reps)
    for o in objs:
        o.close()
    if args.json:
        print(json.dumps({"repeat": args.repeat, "reps": args.reps, "cpus": os.cpu_count(), "results": rows,
                          "table_reads_ms": reads}, indent=2))
        return
    header("flow accounting / capture filter cost per packet")
    print(f"BPF_PROG_TEST_RUN, {args.repeat} packets per call, median of {args.reps} calls (ns per packet)")
    print(f"{'case':40} {'median':>7} {'min-max':>11} {'+floor':>7} {'ratio':>6}")
    for r in rows:
        print(f"{r['case']:40} {r['median_ns']:7.1f} {r['min_ns']:5.0f}-{r['max_ns']:<5.0f} "
              f"{r['above_floor_ns']:7.1f} {r['ratio_to_empty']:6.2f}")
    print("\nreading a table of 60k flows from Python (ms, median of the reps, min-max)")
    for name, s in reads.items():
        print(f"{name:40} {statistics.median(s):7.1f} {min(s):5.0f}-{max(s):<5.0f}")


def read_costs(obj: BpfObject, reps: int) -> dict[str, list[float]]:
    """What `flows`/`top` pay per refresh: batched read, then decode all, or pick and decode the top 20."""
    table = obj.map("bg_ct")
    out: dict[str, list[float]] = {"batched read (read_table)": [], "read + decode all": [],
                                   "read + top 20 decoded (top's frame)": []}
    for _ in range(reps):
        t0 = time.perf_counter()
        entries = read_table(table)
        t1 = time.perf_counter()
        [Flow.from_kernel(k, v, {}) for k, v in entries]
        t2 = time.perf_counter()
        [Flow.from_kernel(k, v, {}) for k, v in top_flows(read_table(table), "bytes", 20, raw=True)]
        t3 = time.perf_counter()
        out["batched read (read_table)"].append((t1 - t0) * 1e3)
        out["read + decode all"].append((t2 - t0) * 1e3)
        out["read + top 20 decoded (top's frame)"].append((t3 - t2) * 1e3)
    return out


if __name__ == "__main__":
    main()
