"""Local TCP with and without sockmap acceleration (`bpfgate accel`), in one run.

A child process in a scratch cgroup (bgbench-accel-*) opens loopback connections to two ports: one opted in
(sock_ops puts both sockets in the sockhash, sk_msg moves each message to the peer), one not (plain TCP,
same process, same cgroup). Rounds alternate between the two so that machine noise hits both alike:
  bulk: one connection, the sender writes 64 KiB chunks, a thread reads (MB/s);
  rr:   request/response, 64 B each way, one at a time (round trip p50 / p99, microseconds).
Python drives the sockets: the figures include its per-call cost on both sides, so the ratio, not the
absolute value, is what to read. Never run while tests run.

    .venv/bin/python bench/bench_accel.py [--bulk-mb 256] [--rr 20000] [--reps 5] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import bulk_rr_args, fmt, header, median

from bpfgate import accel, cgroups

CHILD = r"""
import json, os, socket, sys, threading, time
bench_dir, cg, ports = sys.argv[1], sys.argv[2], sys.argv[6:]
bulk_mb, rr_n, reps = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
open(cg + "/cgroup.procs", "w").write(str(os.getpid()))
sys.path.insert(0, bench_dir)
from common import round_trips

def pair(port):
    ls = socket.create_server(("127.0.0.1", int(port)))
    c = socket.create_connection(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    for x in (c, s):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, s

def bulk(port):
    c, s = pair(port)
    total, chunk = bulk_mb << 20, b"x" * 65536
    def sink():
        n = 0
        while n < total:
            n += len(s.recv(1 << 20))
    t = threading.Thread(target=sink)
    t0 = time.perf_counter()
    t.start()
    for _ in range(total // len(chunk)):
        c.sendall(chunk)
    t.join()
    dt = time.perf_counter() - t0
    c.close(); s.close()
    return total / dt / 1e6

def rr(port):
    c, s = pair(port)
    def echo():
        while True:
            b = s.recv(64)
            if not b:
                return
            s.sendall(b)
    threading.Thread(target=echo, daemon=True).start()
    try:
        return round_trips(c, rr_n)
    finally:
        c.close()

out = {p: {"bulk": [], "p50": [], "p99": []} for p in ports}
for _ in range(reps):
    for p in ports:
        out[p]["bulk"].append(bulk(p))
        p50, p99 = rr(p)
        out[p]["p50"].append(p50)
        out[p]["p99"].append(p99)
print(json.dumps(out))
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    args = bulk_rr_args(__doc__, rr=20000)
    root = cgroups.cgroup2_mount()
    cg = os.path.join(root, f"bgbench-accel-{os.getpid()}")
    os.mkdir(cg)
    fast, plain = free_port(), free_port()
    try:
        accel.enable(cg, ports=[fast])
        bench_dir = os.path.dirname(os.path.abspath(__file__))   # the child imports common from it
        r = subprocess.run([sys.executable, "-c", CHILD, bench_dir, cg, str(args.bulk_mb), str(args.rr),
                            str(args.reps), str(fast), str(plain)], capture_output=True, text=True, check=True)
        res = json.loads(r.stdout)
        t = accel.totals(cg)
    finally:
        accel.remove(cg)
        os.rmdir(cg)
    with_, without = res[str(fast)], res[str(plain)]
    if args.json:
        print(json.dumps({"accelerated": with_, "plain": without, "redirected_bytes": t.redirected_bytes}))
        return
    header("local TCP: sockmap acceleration (sk_msg redirect) vs plain loopback TCP, same process and cgroup")
    for name, r in (("accelerated", with_), ("plain", without)):
        print(f"{name:12s} bulk {fmt(r['bulk'], 'MB/s', digits=0)}")
        print(f"{name:12s} rr p50 {fmt(r['p50'], 'us')}; p99 {fmt(r['p99'], 'us')}")
    print(f"ratio accelerated/plain: bulk x{median(with_['bulk']) / median(without['bulk']):.2f}, "
          f"rr p50 x{median(with_['p50']) / median(without['p50']):.2f}, "
          f"p99 x{median(with_['p99']) / median(without['p99']):.2f}")
    print(f"(the sockhash carried {t.redirected_bytes} bytes: the accelerated runs went through it)")


if __name__ == "__main__":
    main()
