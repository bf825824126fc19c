"""Cost of `trace tcp` on a loopback connect/accept/close loop, as rate ratios measured in one run.

Conditions, interleaved rep by rep so drift hits them alike:
  none     no tracing
  kernel   trace_tcp's programs attached, the ring buffer drained raw (the BPF side's cost)
  cli      `bpfgate trace tcp --json > file` (programs + decode + JSON: what a user runs; 4 events per
           connection: connect, accept, two closes)
  close    `bpfgate trace tcp --json --events close > file` (tcplife's view: 2 events per connection)
With 2+ CPUs the loop is pinned to CPU 0 and the tracer to CPU 1: the figure is then the cost to the traced
workload (the programs run in its context), not the consumer's competition for its CPU.
Each rep runs the loop in a fresh network namespace (its own loopback, so TIME_WAIT sockets of one rep do
not slow the next) for a fixed time, in a child process; we report connections/s, median of REPS reps
with min-max, and each traced rate as a ratio of the untraced one. Run as root:

    .venv/bin/python bench/bench_trace_tcp.py [--reps 7] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import fmt, header, median  # noqa: E402

PY = sys.executable
BPFGATE = os.path.join(os.path.dirname(PY), "bpfgate")

# the measured loop: connect, accept, close both; prints connections per second
LOOP = r"""
import ctypes, json, os, socket, subprocess, sys, time
if os.cpu_count() >= 2:
    os.sched_setaffinity(0, {0})
if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:   # CLONE_NEWNET: a private loopback
    sys.exit("unshare(CLONE_NEWNET) failed")
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
    f.write("1024 65535")
seconds = float(sys.argv[1])
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(128)
addr = ls.getsockname()
def once():
    c = socket.create_connection(addr)
    a, _ = ls.accept()
    c.close(); a.close()
end = time.perf_counter() + 0.2
while time.perf_counter() < end:       # warm up
    once()
n, t0, c0 = 0, time.perf_counter(), time.process_time()
end = t0 + seconds
while time.perf_counter() < end:
    for _ in range(50):
        once()
    n += 50
# CPU time of this process (the tracepoints run in its context, and loopback softirqs mostly too)
# is far less sensitive to other load on a shared machine than the wall-clock rate
cpu_us = (time.process_time() - c0) * 1e6 / n
print(json.dumps({"rate": n / (time.perf_counter() - t0), "cpu_us": cpu_us, "n": n}))
"""

# the kernel-side condition: attach, drain records without decoding them, report counts on SIGTERM
RAW_TRACER = r"""
import json, signal, sys
from bpfgate.trace import TcpTracer
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
with TcpTracer() as t:
    print("ready", flush=True)
    n = 0
    while not stop:
        n += len(t.poll_raw(100))
    print(json.dumps({"received": n, "lost": t.lost}), flush=True)
"""


def run_loop(seconds: float) -> dict:
    r = subprocess.run([PY, "-c", LOOP, str(seconds)], capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise SystemExit(f"loop failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


class Tracer:
    """A tracer process for the duration of one rep; stop() returns its final report. Its stdout goes to
    a file, not a pipe: a pipe nobody reads during the rep would block the CLI and lose events."""

    def __init__(self, kind: str):
        self.kind = kind
        argv = {"kernel": [PY, "-c", RAW_TRACER], "cli": [BPFGATE, "trace", "tcp", "--json"],
                "close": [BPFGATE, "trace", "tcp", "--json", "--events", "close"]}[kind]
        self.out = tempfile.TemporaryFile("w+")
        pin = (lambda: os.sched_setaffinity(0, {1})) if (os.cpu_count() or 1) >= 2 else None
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.PIPE, text=True, preexec_fn=pin)
        deadline = time.monotonic() + 30
        while not self._lines():  # "ready" / the trace_started line: attached
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{kind} tracer did not start: {self.proc.stderr.read().strip()}")
            time.sleep(0.05)
        self.events = 0

    def _lines(self) -> list[str]:
        self.out.seek(0)
        return self.out.read().splitlines()

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM if self.kind == "kernel" else signal.SIGINT)
        self.proc.wait(120)
        lines = self._lines()
        self.out.close()
        self.events = max(0, len(lines) - 2)
        return json.loads(lines[-1]) if lines else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    header("trace tcp: loopback connect/accept/close loop, connections/s")
    rates: dict[str, list[float]] = {"none": [], "kernel": [], "cli": [], "close": []}
    cpu: dict[str, list[float]] = {k: [] for k in rates}
    lost = {"kernel": 0, "cli": 0, "close": 0}
    shown: dict[str, list[float]] = {"cli": [], "close": []}  # events the CLI printed per second
    run_loop(args.seconds / 4)  # warm caches and the page cache for python itself
    for _ in range(args.reps):
        for cond in rates:
            tracer = Tracer(cond) if cond != "none" else None
            try:
                r = run_loop(args.seconds)
                rates[cond].append(r["rate"])
                cpu[cond].append(r["cpu_us"])
            finally:
                if tracer:
                    report = tracer.stop()
                    lost[cond] += int(report.get("lost", 0))
                    if cond in shown:
                        shown[cond].append(tracer.events / (args.seconds + 0.2))
    base, base_cpu = median(rates["none"]), median(cpu["none"])
    for cond in rates:
        print(f"{cond:<7} rate {fmt(rates[cond], 'conn/s', digits=0)}; loop CPU {fmt(cpu[cond], 'us/conn', digits=2)}")
    for cond in ("kernel", "cli", "close"):
        ratios = [t / n for t, n in zip(rates[cond], rates["none"])]
        cpu_ratios = [t / n for t, n in zip(cpu[cond], cpu["none"])]
        print(f"{cond:<7} rate traced/untraced {median(rates[cond]) / base:.3f} "
              f"(per-rep pairs {fmt(ratios, '', digits=3)})")
        print(f"{cond:<7} CPU per connection traced/untraced {median(cpu[cond]) / base_cpu:.3f} (per-rep pairs "
              f"{fmt(cpu_ratios, '', digits=3)}); events lost {lost[cond]}")
        if cond in shown:
            print(f"{cond:<7} CLI output {fmt(shown[cond], 'events/s', digits=0)} (JSON lines written)")


if __name__ == "__main__":
    main()
