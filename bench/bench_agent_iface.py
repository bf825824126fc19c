"""`bpfgate agent` on a container host, as a user runs it: how soon a new interface matching a policy's pattern
is enforced, and how soon a saved policy file is, with no signal sent.

A policy file naming `bgx*` (one TCP port dropped) in the agent's policy directory, in a named network
namespace (a sandbox made here). Per checkout measured (`--cli LABEL=SRC_DIR`, e.g. the main branch before a
change; default: this checkout), a `bpfgate agent` process with the default --interval (2 s) is started, and
once its first round is done:
  interface  `ip link add bgxN type veth ...` in the namespace: seconds until the engine on bgxN is attached
             (Engine.attached, polled every 5 ms); `reps` interfaces, each made at another point of the
             interval; the first one has no engine loaded ahead yet
  file       the policy file replaced (write, rename) with another port: seconds until the engines' saved
             state changes (the edit made), `reps` times, no SIGHUP
Run as root:  .venv/bin/python bench/bench_agent_iface.py [--reps R] [--cli base=/path/src ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_agent_file import write
from bench_control_plane import stat
from common import header

from bpfgate.engine import Engine
from bpfgate.engine.state import StateStore
from bpfgate.policy.hooks import Hook
from bpfgate.sandbox import Sandbox

POLICY = "interfaces: ['bgx*']\nhooks:\n  tc-ingress:\n    rules:\n      - {name: web, protocol: tcp, dst_port: %d, action: drop}\n"


def until(pred, timeout: float = 30.0) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"not done in {timeout} s")
        time.sleep(0.005)
    return time.perf_counter() - t0


def measure(src: str | None, ns: str, workdir: str, reps: int, label: str) -> dict[str, list[float]]:
    env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
    pdir, state = tempfile.mkdtemp(dir=workdir), tempfile.mkdtemp(dir=workdir)
    path = os.path.join(pdir, "policy.yaml")
    write(path, POLICY % 80)
    out: dict[str, list[float]] = {"interface": [], "file": []}
    agent = subprocess.Popen([sys.executable, "-m", "bpfgate", "agent", "--policy-dir", pdir, "--netns", ns,
                              "--listen", "127.0.0.1:0", "--state-dir", state], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = []
    try:
        time.sleep(3)   # the first round
        for i in range(reps):
            name = f"bgx{i}"
            names.append(name)
            t0 = time.perf_counter()
            subprocess.run(["ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", f"bgy{i}"], check=True)
            until(lambda: (name, Hook.TC_INGRESS) in set(Engine.attached(ns)))
            out["interface"].append(time.perf_counter() - t0)
            print(f"  {label} interface #{i + 1}: {out['interface'][-1]:.3f} s", flush=True)
            time.sleep(0.7 + 0.29 * i)   # the next one lands at another point of the interval
        store = StateStore(names[0], Hook.TC_INGRESS, ns)
        for i in range(reps):
            before = store.version()
            t0 = time.perf_counter()
            write(path, POLICY % (81 + i % 2))
            until(lambda: store.version() != before)
            out["file"].append(time.perf_counter() - t0)
            time.sleep(0.5 + 0.29 * i)
    finally:
        agent.terminate()
        agent.wait()
        subprocess.run([sys.executable, "-m", "bpfgate", "detach", "--netns", ns], env=env, capture_output=True)
        for name in names:
            subprocess.run(["ip", "-n", ns, "link", "del", name], capture_output=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--cli", action="append", default=[], metavar="LABEL=SRC",
                    help="a bpfgate source tree to measure (PYTHONPATH); default: this checkout as 'now'")
    args = ap.parse_args()
    clis = [c.split("=", 1) for c in args.cli] or [("now", None)]
    header(f"agent: a new interface of a pattern and a saved file, enforced, {args.reps} reps")
    results = {}
    with Sandbox() as sb, tempfile.TemporaryDirectory() as tmp:
        ns = sb.host("fw").netns
        for label, src in clis:
            results[label] = measure(src, ns, tmp, args.reps, label)
    print("\n| seconds until enforced | " + " | ".join(label for label, _ in clis) + " |")
    print("|---" * (1 + len(clis)) + "|")
    for key, title in (("interface", "a new interface matching `bgx*`"), ("file", "the policy file replaced, no signal")):
        print(f"| {title} | " + " | ".join(stat(results[label][key], "ms", 1000) for label, _ in clis) + " |")


if __name__ == "__main__":
    main()
