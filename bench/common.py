"""Shared benchmark helpers: repeat a measurement, report median and min-max (machines are noisy)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} kernel {platform.release()} cpus {os.cpu_count()} "
          f"python {platform.python_version()}")


def reps(fn: Callable[[], float], n: int = 7, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(n)]


def fmt(values: list[float], unit: str, scale: float = 1.0, digits: int = 1) -> str:
    v = [x * scale for x in values]
    return f"median {statistics.median(v):.{digits}f} {unit} (min {min(v):.{digits}f} - max {max(v):.{digits}f}, n={len(v)})"


def median(values: list[float]) -> float:
    return statistics.median(values)


def bulk_rr_args(doc: str, rr: int) -> argparse.Namespace:
    """The arguments of the TCP benchmarks that time a bulk transfer and request/response round trips:
    --bulk-mb, --rr (round trips per rep, default RR), --reps, --json."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--bulk-mb", type=int, default=256)
    ap.add_argument("--rr", type=int, default=rr, help="round trips per rep")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def round_trips(sock, n: int, size: int = 64) -> tuple[float, float]:
    """n request/response round trips on a connected socket whose peer echoes: SIZE bytes each way, one at a
    time. Returns the round trip's (p50, p99) in microseconds. Stdlib only: benchmark child scripts import it."""
    msg, lat = b"q" * size, []
    for _ in range(n):
        t0 = time.perf_counter()
        sock.sendall(msg)
        got = 0
        while got < size:
            b = sock.recv(size - got)
            if not b:
                raise ConnectionError("the echo closed the connection")
            got += len(b)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


def test_run_args(doc: str, add: Callable[[argparse.ArgumentParser], None] = lambda ap: None) -> argparse.Namespace:
    """The arguments every BPF_PROG_TEST_RUN benchmark takes (--repeat, --reps >= 5, --json), plus its own."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000, help="packets per BPF_PROG_TEST_RUN call")
    ap.add_argument("--reps", type=int, default=7, help="calls per case (>= 5)")
    add(ap)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.reps < 5:
        sys.exit("--reps must be >= 5 (medians of at least five)")
    return args
