"""TCP through `bpfgate proxy`: the kernel splice (sk_skb verdict redirect) vs its user-space relay fallback
(splice(2) through a pipe) vs a plain Python proxy (recv/sendall threads) vs direct, in one run.

A backend process serves two ports on loopback: a sink (reads to the end of stream, answers one byte) and
an echo. Each proxy is its own process (`bpfgate proxy --mode kernel`, `--mode relay`, and the plain one
below). Rounds alternate between the four targets so that machine noise hits all alike:
  bulk: one connection per rep, the client writes 64 KiB chunks, half-closes, waits for the sink's byte (MB/s);
  rr:   one connection, 64 B request, 64 B response, one at a time (round trip p50 / p99, microseconds).
Python drives client and backend: the figures include its per-call cost, so read the ratios. Never run
while tests run.

    .venv/bin/python bench/bench_proxy.py [--bulk-mb 256] [--rr 5000] [--reps 5] [--json]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import bulk_rr_args, fmt, header, median, round_trips

BACKEND = r"""
import socket, sys, threading
sink, echo = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
print(sink.getsockname()[1], echo.getsockname()[1], flush=True)

def drain(c):
    while c.recv(1 << 20):
        pass
    c.sendall(b"k")
    c.close()

def answer(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while b := c.recv(64):
        c.sendall(b)
    c.close()

def serve(ls, fn):
    while True:
        c, _ = ls.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()

threading.Thread(target=serve, args=(sink, drain), daemon=True).start()
serve(echo, answer)
"""

PLAIN = r"""
import socket, sys, threading
to = int(sys.argv[1])
ls = socket.create_server(("127.0.0.1", 0))
print(ls.getsockname()[1], flush=True)

def pump(a, b):
    try:
        while d := a.recv(1 << 16):
            b.sendall(d)
        b.shutdown(socket.SHUT_WR)
    except OSError:
        pass

while True:
    c, _ = ls.accept()
    b = socket.create_connection(("127.0.0.1", to))
    for x in (c, b):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=pump, args=(c, b), daemon=True).start()
    threading.Thread(target=pump, args=(b, c), daemon=True).start()
"""


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def bpfgate_proxy(mode: str, to: int) -> tuple[subprocess.Popen, int]:
    p = start([sys.executable, "-m", "bpfgate", "proxy", "--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{to}",
               "--mode", mode, "--json"])
    ready = json.loads(p.stdout.readline())
    assert ready["path"] == mode, ready
    return p, int(ready["listen"].rsplit(":", 1)[1])


def bulk(port: int, mb: int) -> float:
    c = socket.create_connection(("127.0.0.1", port))
    chunk = b"x" * 65536
    t0 = time.perf_counter()
    for _ in range((mb << 20) // len(chunk)):
        c.sendall(chunk)
    c.shutdown(socket.SHUT_WR)
    assert c.recv(1) == b"k"
    dt = time.perf_counter() - t0
    c.close()
    return (mb << 20) / dt / 1e6


def rr(port: int, n: int) -> tuple[float, float]:
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        return round_trips(c, n)
    finally:
        c.close()


def main() -> None:
    args = bulk_rr_args(__doc__, rr=5000)
    procs = []
    try:
        be = start([sys.executable, "-c", BACKEND])
        procs.append(be)
        sink, echo = map(int, be.stdout.readline().split())
        targets: dict[str, tuple[int, int]] = {"direct": (sink, echo)}
        for mode in ("kernel", "relay"):
            ports = []
            for to in (sink, echo):
                p, port = bpfgate_proxy(mode, to)
                procs.append(p)
                ports.append(port)
            targets[mode] = tuple(ports)
        ports = []
        for to in (sink, echo):
            p = start([sys.executable, "-c", PLAIN, str(to)])
            procs.append(p)
            ports.append(int(p.stdout.readline()))
        targets["python"] = tuple(ports)
        out = {t: {"bulk": [], "p50": [], "p99": []} for t in targets}
        for _ in range(args.reps):
            for name, (s, e) in targets.items():
                out[name]["bulk"].append(bulk(s, args.bulk_mb))
                p50, p99 = rr(e, args.rr)
                out[name]["p50"].append(p50)
                out[name]["p99"].append(p99)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.communicate(timeout=30)
    if args.json:
        print(json.dumps(out))
        return
    header("TCP through bpfgate proxy: kernel splice vs its splice(2) relay vs a plain Python proxy vs direct")
    labels = {"direct": "direct", "kernel": "kernel splice", "relay": "splice(2) relay", "python": "python proxy"}
    for name, r in out.items():
        print(f"{labels[name]:16s} bulk {fmt(r['bulk'], 'MB/s', digits=0)}")
        print(f"{labels[name]:16s} rr p50 {fmt(r['p50'], 'us')}; p99 {fmt(r['p99'], 'us')}")
    k = out["kernel"]
    for other in ("relay", "python", "direct"):
        o = out[other]
        print(f"ratio kernel/{other}: bulk x{median(k['bulk']) / median(o['bulk']):.2f}, "
              f"rr p50 x{median(k['p50']) / median(o['p50']):.2f}, p99 x{median(k['p99']) / median(o['p99']):.2f}")


if __name__ == "__main__":
    main()
