"""Kernel layer figures: ring buffer events decoded per second in Python, map batch update rate vs
single updates, BPF_PROG_TEST_RUN floor (empty TC / XDP program). Run as root:

    .venv/bin/python bench/bench_kernel_layer.py
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import fmt, header, median, reps  # noqa: E402

from bpfgate.kernel.objects import BpfObject  # noqa: E402
from bpfgate.kernel.ringbuf import RingBuffer  # noqa: E402
from bpfgate.kernel.testrun import test_run  # noqa: E402

PKT = bytes(64)
N_EVENTS = 100_000  # fits the 4 MiB ring: nothing lost by design; loss is still counted and printed


def ringbuf_rate(obj: BpfObject) -> None:
    ev_t = obj.btf.struct("bg_test_event")
    stats = obj.map("bg_stats")
    rb = RingBuffer(obj.map("events"), record_type=ev_t, lost_map=stats, lost_index=1)
    prog = obj.program("bg_selftest_ringbuf")
    received = 0

    def once() -> float:
        nonlocal received
        test_run(prog, PKT, repeat=N_EVENTS)  # produce first, then time the Python side alone
        t = time.perf_counter()
        n = rb.consume()
        dt = time.perf_counter() - t
        received += len(rb.drain())
        assert n == N_EVENTS, n
        return N_EVENTS / dt

    r = reps(once)
    print(f"ring buffer decode ({ctypes.sizeof(ev_t)}-byte record -> ctypes struct): "
          f"{fmt(r, 'M events/s', 1e-6, 2)}; lost {rb.lost}")
    rb.close()


def batch_rate(obj: BpfObject) -> None:
    m = obj.map("test_hash")
    kt, vt = m.key_type, m.value_type
    n = 50_000
    keys = b"".join(bytes(kt(port=i)) for i in range(n))
    vals = b"".join(bytes(vt(packets=i, bytes=i)) for i in range(n))

    def raw() -> float:
        t = time.perf_counter()
        m.update_batch_raw(keys, vals, n)
        return (time.perf_counter() - t) / n

    def single() -> float:
        k, v = kt(port=1), vt(packets=1, bytes=1)
        t = time.perf_counter()
        for i in range(5000):
            k.port = i
            m[k] = v
        return (time.perf_counter() - t) / 5000

    r_raw, r_single = reps(raw), reps(single)
    print(f"map batch update (packed, {n} entries/call): {fmt(r_raw, 'us/entry', 1e6, 2)}")
    print(f"map single update from Python:               {fmt(r_single, 'us/entry', 1e6, 2)}")
    print(f"batch speed-up: x{median(r_single) / median(r_raw):.1f}")
    t = time.perf_counter()
    got = sum(1 for _ in m.lookup_batch())
    print(f"map batch lookup: {got} entries in {(time.perf_counter() - t) * 1e3:.1f} ms")


def floor(obj: BpfObject) -> None:
    for name in ("bg_empty_tc", "bg_empty_xdp"):
        prog = obj.program(name)
        r = reps(lambda: test_run(prog, PKT, repeat=2_000_000).duration_ns)
        print(f"test_run floor {name}: {fmt(r, 'ns/packet')}")


def main() -> None:
    header("bench_kernel_layer: ring buffer decode, map batch ops, test_run floor")
    with BpfObject.open("selftest") as obj:
        obj.load()
        ringbuf_rate(obj)
        batch_rate(obj)
        floor(obj)


if __name__ == "__main__":
    main()
