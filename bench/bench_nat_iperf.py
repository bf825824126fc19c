"""TCP throughput through DNAT: no NAT vs bpfgate DNAT (tc, bpf/nat.bpf.c) vs nftables DNAT, same topology,
same run, interleaved per rep (client -- router -- server in throwaway namespaces, iperf3).

    sudo .venv/bin/python bench/bench_nat_iperf.py [--seconds 3] [--reps 5] [--json]

The router translates a VIP to the server at its client-facing interface. Each rep measures the three
cases back to back; bpfgate's NAT is attached only for its case and nftables' nat table exists only for
its case (so conntrack's hooks do not tax the others). Median Gbit/s with min-max, and ratios to no NAT.
A benchmark: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import header  # noqa: E402

from bpfgate import nat  # noqa: E402
from bpfgate.sandbox import Sandbox  # noqa: E402

VIP = "198.18.200.1"


def iperf(client, dst: str, seconds: float) -> float:
    r = client.run(["iperf3", "-c", dst, "-p", "5201", "-t", str(seconds), "-J"], timeout=seconds + 20, check=True)
    return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.reps < 5:
        sys.exit("--reps must be >= 5 (medians of at least five)")
    res: dict[str, list[float]] = {"no NAT (to the server's address)": [], "bpfgate DNAT (tc)": [],
                                   "nftables DNAT (prerouting)": []}
    with Sandbox() as sb:
        net = sb.routed()
        client, router, server = net.client, net.router, net.server
        ri, si = net.left.end(router), net.right.end(server)
        server.spawn(["iperf3", "-s", "-p", "5201"])
        import time

        time.sleep(0.5)
        nft = (f"table ip bgbench {{\n chain pre {{\n  type nat hook prerouting priority -100;\n"
               f"  ip daddr {VIP} tcp dport 5201 dnat to {si.ip4}:5201\n }}\n}}\n")
        for _ in range(args.reps):
            res["no NAT (to the server's address)"].append(iperf(client, si.ip4, args.seconds))
            gw = nat.Gateway.open(ri.name, router.netns)
            try:
                gw.add_rule(nat.dnat("bench", "tcp", f"{VIP}:5201", f"{si.ip4}:5201"))
                res["bpfgate DNAT (tc)"].append(iperf(client, VIP, args.seconds))
            finally:
                gw.detach()
            router.run(["nft", "-f", "-"], input=nft, check=True)
            try:
                res["nftables DNAT (prerouting)"].append(iperf(client, VIP, args.seconds))
            finally:
                router.run(["nft", "delete", "table", "ip", "bgbench"], check=True)
    base = statistics.median(res["no NAT (to the server's address)"])
    rows = [{"case": k, "median_gbps": statistics.median(v), "min": min(v), "max": max(v),
             "ratio_to_no_nat": statistics.median(v) / base} for k, v in res.items()]
    if args.json:
        print(json.dumps({"seconds": args.seconds, "reps": args.reps, "results": rows}, indent=2))
        return
    header("TCP throughput through DNAT (iperf3, one stream)")
    print(f"{args.seconds:g} s per run, median of {args.reps} interleaved reps (Gbit/s)")
    for r in rows:
        print(f"{r['case']:36} {r['median_gbps']:7.2f}  ({r['min']:.2f}-{r['max']:.2f})  x{r['ratio_to_no_nat']:.2f}")


if __name__ == "__main__":
    main()
