"""`bpfgate agent` and a big policy file, as a user runs them: how soon a change of the file is enforced, and
what the agent costs while nothing changes.

A policy file of N source-CIDR drop rules (bench_control_plane's) in the agent's policy directory, one veth
in a named network namespace (a sandbox made here). Per checkout measured (`--cli LABEL=SRC_DIR`, e.g. the
main branch before a change, to compare in the same run; default: this checkout), a `bpfgate agent`
process (interval 2 s) is started, and once its first round has attached the policy:
  change10   the file rewritten with 10 rules renamed (then back, alternating) and the agent sent SIGHUP:
             seconds from the write to the engine's saved state changing (the edit made), `reps` times
  change10 CPU  the agent's CPU (user + system) for each such change: from the write until the round after
             it (its collection of the heap included), less what it spends idle over that time
  idle       the agent's CPU (user + system) over `--idle` seconds with nothing changing, % of one core
Run as root:  .venv/bin/python bench/bench_agent_file.py [--rules N] [--reps R] [--idle S] [--cli base=/path/src ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench_control_plane import policy_text, prefixes, stat
from common import header

from bpfgate.engine.state import StateStore
from bpfgate.policy.hooks import Hook
from bpfgate.sandbox import Sandbox


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)   # as editors and ConfigMap updates do: a new file in one step


def measure(src: str | None, ns: str, dev: str, texts: tuple[str, str], workdir: str, reps: int,
            idle_s: float) -> dict[str, list[float]]:
    pdir = tempfile.mkdtemp(dir=workdir)
    path = os.path.join(pdir, "policy.yaml")
    write(path, texts[0])
    env = {**os.environ, "BPFGATE_AGENT_DIR": os.path.join(pdir, "agent-state")}
    if src:
        env["PYTHONPATH"] = src
    agent = subprocess.Popen([sys.executable, "-m", "bpfgate", "agent", "--policy-dir", pdir, "--netns", ns,
                              "--interval", "2", "--listen", "127.0.0.1:0"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    store = StateStore(dev, Hook.TC_INGRESS, ns)
    out: dict[str, list[float]] = {"change10": [], "change10_cpu": [], "idle": []}
    try:
        deadline = time.time() + 300
        while not store.exists():
            if agent.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the agent did not attach the policy: {agent.stderr.read()[-800:]}")
            time.sleep(0.2)
        time.sleep(6)   # its first round done, and the next one (nothing to do)
        c0, t0 = cpu_seconds(agent.pid), time.time()
        time.sleep(idle_s)
        out["idle"].append((cpu_seconds(agent.pid) - c0) / (time.time() - t0))
        for k in range(reps):
            v0 = store.version()
            c0, t = cpu_seconds(agent.pid), time.perf_counter()
            write(path, texts[(k + 1) % 2])
            agent.send_signal(signal.SIGHUP)
            while store.version() == v0:
                if time.perf_counter() - t > 120:
                    raise SystemExit("the agent did not change the engine in 120 s")
                time.sleep(0.002)
            out["change10"].append(time.perf_counter() - t)
            time.sleep(2.5)   # the next round (nothing to do) before the next change
            out["change10_cpu"].append(cpu_seconds(agent.pid) - c0 - out["idle"][0] * (time.perf_counter() - t))
    finally:
        agent.terminate()
        agent.wait(60)
        subprocess.run([sys.executable, "-m", "bpfgate", "policy", "remove", "--netns", ns], env=env,
                       capture_output=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle agent measured")
    ap.add_argument("--cli", action="append", default=[], metavar="LABEL=SRC_DIR")
    args = ap.parse_args()
    clis = [tuple(c.split("=", 1)) for c in args.cli] or [("now", None)]
    header(f"the agent with a {args.rules}-rule file: a 10-rule change, idle CPU; {args.reps} reps")
    with Sandbox() as sb, tempfile.TemporaryDirectory() as tmp:
        fw, peer = sb.host("fw"), sb.host("peer")
        dev, ns = sb.link(fw, peer).end(fw).name, fw.netns
        first = policy_text(dev, prefixes(args.rules))
        second = first
        for i in range(10):   # ten rules spread over the file, renamed (a delete and an add each)
            n = i * (args.rules // 10) + 5
            second = second.replace(f"name: r{n}\n", f"name: r{n}x\n")
        rows = {label: measure(src, ns, dev, (first, second), tmp, args.reps, args.idle) for label, src in clis}
    print(f"\n| agent, {args.rules} rules | " + " | ".join(label for label, _ in clis) + " |")
    print("|---|" + "---|" * len(clis))
    print("| file changing 10 rules: write to enforced | " + " | ".join(stat(rows[label]["change10"])
                                                                   for label, _ in clis) + " |")
    print("| the agent's CPU per such change | " + " | ".join(stat(rows[label]["change10_cpu"])
                                                           for label, _ in clis) + " |")
    print("| idle CPU, % of a core | " + " | ".join(f"{rows[label]['idle'][0] * 100:.1f} %" for label, _ in clis)
          + " |")


if __name__ == "__main__":
    main()
