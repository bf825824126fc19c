"""Events decoded per second in Python through bpfgate.inspect's pipeline, with loss counted.

Producer: the real connection-attempt program (bg_attempts_tc) run by BPF_PROG_TEST_RUN on a SYN, so
every run emits one fixed-size record (struct bg_attempt_event, 64 bytes). Produce first, then time the
Python side alone:
  ringbuf    kernel.ringbuf.RingBuffer with a fixed record type (the floor of the layer below)
  stream     inspect.events.EventStream: type dispatch from the header, batch handler
  describe   EventStream + describe(): the JSON-ready dict per event (what `bpfgate events` prints)
  perf       the perf buffer transport (kernels without ring buffers)
Then an overflow run: more records than the ring holds, nobody polling; received + lost == produced.
Run as root:  .venv/bin/python bench/bench_events.py
"""

from __future__ import annotations

import os
import socket
import sys
import time

import dpkt

sys.path.insert(0, os.path.dirname(__file__))
from common import fmt, header, reps  # noqa: E402

from bpfgate.inspect.attempts import ALL_PORTS, AttemptLog  # noqa: E402
from bpfgate.inspect.events import EventStream  # noqa: E402
from bpfgate.kernel.ringbuf import RingBuffer  # noqa: E402
from bpfgate.kernel.testrun import test_run  # noqa: E402

RING = 16 << 20  # 16 MiB: ~230k records of 64 B + 8 B ring header
N = 200_000


def syn_frame() -> bytes:
    tcp = dpkt.tcp.TCP(sport=40000, dport=443, flags=dpkt.tcp.TH_SYN)
    ip = dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"),
                    p=dpkt.ip.IP_PROTO_TCP, data=tcp)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + bytes(ip)


def main() -> None:
    header("bench_events: inspection events decoded per second in Python")
    frame = syn_frame()
    with AttemptLog([ALL_PORTS], ring_size=RING) as log:
        prog = log.prog
        rec_t = log.obj.btf.struct("bg_attempt_event")
        src = log.event_source()
        counted = [0]

        def count(batch: list) -> None:
            counted[0] += len(batch)

        def timed(consume, n: int = N) -> float:
            test_run(prog, frame, repeat=n)
            counted[0] = 0
            t = time.perf_counter()
            consume()
            dt = time.perf_counter() - t
            assert counted[0] == n, (counted[0], n)
            return n / dt

        rb = RingBuffer(src.ringbuf, record_type=rec_t, handler=count)
        r_rb = reps(lambda: timed(rb.consume))
        rb.close()

        with EventStream([src], handler=count) as stream:
            r_stream = reps(lambda: timed(lambda: stream.poll(0)))

        with EventStream([src]) as stream:
            def describe_all() -> None:
                stream.poll(0)
                out = [stream.describe(r) for r in stream.drain()]
                counted[0] = len(out)

            r_desc = reps(lambda: timed(describe_all, N // 4), n=5)
            assert stream.lost == 0

        print(f"record: struct bg_attempt_event, {rec_t and __import__('ctypes').sizeof(rec_t)} bytes; "
              f"{N} per rep (describe: {N // 4})")
        print(f"ringbuf  (fixed type)      {fmt(r_rb, 'M events/s', 1e-6, 2)}")
        print(f"stream   (typed dispatch)  {fmt(r_stream, 'M events/s', 1e-6, 2)}")
        print(f"describe (JSON-ready dict) {fmt(r_desc, 'M events/s', 1e-6, 2)}")

    # the perf buffer fallback (kernels without ring buffers): 16 MiB per CPU, a callback per record
    with AttemptLog([ALL_PORTS], transport="perf") as log:
        src = log.event_source()
        src.perf_pages = 4096
        n_perf = N // 2
        got = [0]
        with EventStream([src], handler=lambda batch: got.__setitem__(0, got[0] + len(batch))) as stream:
            def perf_once() -> float:
                test_run(log.prog, frame, repeat=n_perf)
                got[0] = 0
                t = time.perf_counter()
                stream.poll(0)
                dt = time.perf_counter() - t
                assert got[0] == n_perf, got[0]
                return n_perf / dt

            r_perf = reps(perf_once, n=5)
            lost = stream.lost
        print(f"perf     (fallback)        {fmt(r_perf, 'M events/s', 1e-6, 2)}  lost {lost}")

    # overflow: a ring of 64 KiB, N records produced before anyone polls
    with AttemptLog([ALL_PORTS], ring_size=64 << 10) as log, EventStream([log.event_source()]) as stream:
        test_run(log.prog, frame, repeat=N)
        stream.poll(0)
        got = len(stream.drain())
        print(f"overflow: produced {N}, received {got}, lost {stream.lost} (counted in the kernel), "
              f"received + lost == produced: {got + stream.lost == N}")


if __name__ == "__main__":
    main()
