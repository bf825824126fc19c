"""One-rule edits at N rules: what each path costs, beside `nft add/delete element`, in one run.

A policy of N source-CIDR drop rules (bench_control_plane's file) runs on one veth in a named network
namespace (a sandbox made here). Each path adds one /24 drop rule and deletes it again, `reps` times
(median, min-max, milliseconds):
  direct, in-process   policyctl.add_rule/delete_rule as a process without an agent does them (opens the
                       engine from its pins and saved state each time), the interpreter already running
  held (the agent)     the same calls on a backend that keeps the engine open between edits, as the
                       agent does (StateStore.version() checked each time)
  agent socket         a running `bpfgate agent`, asked over its unix socket (client.call): the request,
                       the agent's edit and the reply, the interpreter already running
  CLI with agent       `bpfgate rule add|del` as a process while the agent runs (start to exit)
  CLI without agent    `bpfgate rule add|del` as a process, no agent
  nft element          `nft add|delete element` of one prefix into a 100k-element interval set
Run as root:  .venv/bin/python bench/bench_agent_edit.py [--rules N] [--reps R]
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
from bench_control_plane import free_prefixes, nft_text, policy_text, prefixes, stat, timed  # noqa: E402
from common import header  # noqa: E402

from bpfgate import policyctl  # noqa: E402
from bpfgate.agent import client  # noqa: E402
from bpfgate.policyctl.engine_backend import EngineBackend  # noqa: E402
from bpfgate.sandbox import Sandbox  # noqa: E402


def edits(add, delete, free: list[str], reps: int, tag: str) -> tuple[list[float], list[float]]:
    a, d = [], []
    for i in range(reps):
        name = f"{tag}{i}"
        t0 = time.perf_counter()
        add(name, free[i])
        t1 = time.perf_counter()
        delete(name, free[i])
        t2 = time.perf_counter()
        a.append(t1 - t0)
        d.append(t2 - t1)
    return a, d


def rule(name: str, src: str) -> dict:
    return {"name": name, "src": src, "action": "drop"}


def wait_agent(ns: str, state: str, proc: subprocess.Popen, deadline_s: float) -> None:
    """Until the agent answers and its first round applied the file."""
    os.environ["BPFGATE_AGENT_DIR"] = state
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited ({proc.returncode}): {proc.stderr.read()[-800:]}")
        if client.running(ns) and policyctl.running(ns):
            return
        time.sleep(0.5)
    raise SystemExit("the agent did not apply the policy in time")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    header(f"one-rule edits at {args.rules} rules: direct, held (agent), agent socket, CLI, nft element")
    nets = prefixes(args.rules)
    free = free_prefixes(nets, 6 * args.reps)
    chunks = [free[i * args.reps:(i + 1) * args.reps] for i in range(6)]
    res: dict[str, tuple[list[float], list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, Sandbox() as sb:
        host = sb.host("edit")
        peer = sb.host("peer")
        link = sb.link(peer, host)
        ns, dev = host.netns, link.end(host).name
        pdir = os.path.join(tmp, "policies")
        os.mkdir(pdir)
        path = os.path.join(pdir, "p.yaml")
        with open(path, "w") as f:
            f.write(policy_text(dev, nets))
        t0 = time.perf_counter()
        policyctl.apply(policyctl.load_policies(open(path).read()), netns=ns)
        print(f"# applied {args.rules} rules in {time.perf_counter() - t0:.1f} s (in-process)", flush=True)
        try:
            res["direct, in-process"] = edits(
                lambda n, s: policyctl.add_rule(dev, "tc-ingress", rule(n, s), netns=ns),
                lambda n, _s: policyctl.delete_rule(dev, "tc-ingress", n, netns=ns), chunks[0], args.reps, "d")
            held = EngineBackend(hold=True)
            try:
                policyctl.add_rule(dev, "tc-ingress", rule("warm", chunks[1][0]), netns=ns, backend=held)
                policyctl.delete_rule(dev, "tc-ingress", "warm", netns=ns, backend=held)
                res["held (the agent's way)"] = edits(
                    lambda n, s: policyctl.add_rule(dev, "tc-ingress", rule(n, s), netns=ns, backend=held),
                    lambda n, _s: policyctl.delete_rule(dev, "tc-ingress", n, netns=ns, backend=held),
                    chunks[1], args.reps, "h")
            finally:
                held.close()
            cli = [sys.executable, "-m", "bpfgate"]
            res["CLI without agent"] = edits(
                lambda n, s: timed(cli + ["rule", "add", n, "--dev", dev, "--netns", ns, "--src", s, "--action", "drop"]),
                lambda n, _s: timed(cli + ["rule", "del", n, "--dev", dev, "--netns", ns]), chunks[2], args.reps, "c")
            state = os.path.join(tmp, "agent")
            agent = subprocess.Popen(cli + ["agent", "--policy-dir", pdir, "--netns", ns, "--state-dir", state,
                                            "--listen", "127.0.0.1:0", "--interval", "3600"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                wait_agent(ns, state, agent, 600)
                env = {**os.environ, "BPFGATE_AGENT_DIR": state}
                res["agent socket"] = edits(
                    lambda n, s: client.call(ns, "add_rule", dev=dev, hook="tc-ingress", rule=rule(n, s)),
                    lambda n, _s: client.call(ns, "delete_rule", dev=dev, hook="tc-ingress", name=n),
                    chunks[3], args.reps, "s")
                res["CLI with agent"] = edits(
                    lambda n, s: timed(cli + ["rule", "add", n, "--dev", dev, "--netns", ns, "--src", s,
                                              "--action", "drop"], env),
                    lambda n, _s: timed(cli + ["rule", "del", n, "--dev", dev, "--netns", ns], env),
                    chunks[4], args.reps, "a")
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=120)
            nft = ["ip", "netns", "exec", ns, "nft"]
            nft_path = os.path.join(tmp, "nft.conf")
            with open(nft_path, "w") as f:
                f.write(nft_text(nets) % dev)
            timed(nft + ["-f", nft_path])
            res["nft element"] = edits(
                lambda _n, s: timed(nft + ["add", "element", "inet", "bgbench", "b4", f"{{ {s} }}"]),
                lambda _n, s: timed(nft + ["delete", "element", "inet", "bgbench", "b4", f"{{ {s} }}"]),
                chunks[5], args.reps, "n")
        finally:
            subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "bgbench"],
                           capture_output=True)
            policyctl.remove(netns=ns)
    print(f"{'path':26s} {'add (ms)':>26s} {'del (ms)':>26s}")
    for name, (a, d) in res.items():
        print(f"{name:26s} {stat(a, 'ms', 1000):>26s} {stat(d, 'ms', 1000):>26s}")


if __name__ == "__main__":
    main()
