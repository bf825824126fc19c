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
  ..., 1st after start   the first such edit once the agent is ready (/readyz: its first round done)
  ..., 1st after change  the first such edit after a round applied a change of the file (one rule fewer)
  ..., 1st after repair  the first such edit after a round attached the engine again (its filter deleted)
  CLI with agent       `bpfgate rule add|del` (the installed command) as a process while the agent runs (start to
                       exit): the C front end (frontend/) where scripts/run or `make -C frontend install`
                       put it, else the Python console script
  ..., bpfgate-py      the same through the Python console script (`bpfgate-py`, installed beside it)
  CLI without agent    `bpfgate rule add|del` as a process, no agent
  nft element          `nft add|delete element` of one prefix into a 100k-element interval set
Run as root:  .venv/bin/python bench/bench_agent_edit.py [--rules N] [--reps R]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from bench_control_plane import command, free_prefixes, nft_text, policy_text, prefixes, stat, timed  # noqa: E402
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


class AgentLog:
    """The agent's JSON log lines (stderr), read as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"msg": line.strip()})

    def wait(self, msg: str, after: int = 0, deadline_s: float = 600) -> dict:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for rec in self.lines[after:]:
                if rec.get("msg") == msg:
                    return rec
            if self.proc.poll() is not None:
                raise SystemExit(f"the agent exited ({self.proc.returncode}): {self.lines[-5:]}")
            time.sleep(0.05)
        raise SystemExit(f"no {msg!r} from the agent in {deadline_s} s: {self.lines[-5:]}")


def rss(pid: int) -> str:
    """A process's resident memory now and at its peak (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        kb = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
    return ", ".join(f"{k} {int(v.split()[0]) // 1024} MB" for k, v in sorted(kb.items()))


def wait_ready(url: str, deadline_s: float) -> None:
    """Until the agent's first round is done and every file applied (/readyz)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise SystemExit("the agent did not apply the policy in time")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    header(f"one-rule edits at {args.rules} rules: direct, held (agent), agent socket, CLI, nft element")
    nets = prefixes(args.rules)
    free = free_prefixes(nets, 7 * args.reps + 3)
    extra = free[7 * args.reps:]   # the first edits after the agent's start and after a change
    chunks = [free[i * args.reps:(i + 1) * args.reps] for i in range(7)]
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
                lambda n, s: timed(command() + ["rule", "add", n, "--dev", dev, "--netns", ns, "--src", s,
                                                "--action", "drop"]),
                lambda n, _s: timed(command() + ["rule", "del", n, "--dev", dev, "--netns", ns]), chunks[2], args.reps,
                "c")
            state = os.path.join(tmp, "agent")
            os.environ["BPFGATE_AGENT_DIR"] = state
            t0 = time.perf_counter()
            agent = subprocess.Popen(cli + ["agent", "--policy-dir", pdir, "--netns", ns, "--state-dir", state,
                                            "--listen", "127.0.0.1:0", "--interval", "3600"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                log = AgentLog(agent)
                wait_ready("http://" + log.wait("agent started")["listen"], 600)
                print(f"# agent start to ready (its first round done): {time.perf_counter() - t0:.1f} s", flush=True)
                res["agent socket, 1st after start"] = edits(
                    lambda n, s: client.call(ns, "add_rule", dev=dev, hook="tc-ingress", rule=rule(n, s)),
                    lambda n, _s: client.call(ns, "delete_rule", dev=dev, hook="tc-ingress", name=n),
                    extra[:1], 1, "f")
                seen = len(log.lines)   # a policy change (one rule fewer) applied by a round (SIGHUP)
                with open(path, "w") as f:
                    f.write(policy_text(dev, nets[:-1]))
                t0 = time.perf_counter()
                agent.send_signal(signal.SIGHUP)
                log.wait("applied", seen)
                print(f"# round applying a one-rule change of the file: {time.perf_counter() - t0:.1f} s", flush=True)
                print(f"# the agent's memory after that round: {rss(agent.pid)}", flush=True)
                res["agent socket, 1st after change"] = edits(
                    lambda n, s: client.call(ns, "add_rule", dev=dev, hook="tc-ingress", rule=rule(n, s)),
                    lambda n, _s: client.call(ns, "delete_rule", dev=dev, hook="tc-ingress", name=n),
                    extra[1:2], 1, "g")
                seen = len(log.lines)   # the engine's filter deleted by hand: a round attaches a new engine
                subprocess.run(["ip", "netns", "exec", ns, "tc", "filter", "del", "dev", dev, "ingress"], check=True)
                t0 = time.perf_counter()
                agent.send_signal(signal.SIGHUP)
                log.wait("drift repaired: the engine was missing in the kernel", seen)
                print(f"# round attaching the engine again: {time.perf_counter() - t0:.1f} s", flush=True)
                res["agent socket, 1st after repair"] = edits(
                    lambda n, s: client.call(ns, "add_rule", dev=dev, hook="tc-ingress", rule=rule(n, s)),
                    lambda n, _s: client.call(ns, "delete_rule", dev=dev, hook="tc-ingress", name=n),
                    extra[2:], 1, "x")
                env = {**os.environ, "BPFGATE_AGENT_DIR": state}
                res["agent socket"] = edits(
                    lambda n, s: client.call(ns, "add_rule", dev=dev, hook="tc-ingress", rule=rule(n, s)),
                    lambda n, _s: client.call(ns, "delete_rule", dev=dev, hook="tc-ingress", name=n),
                    chunks[3], args.reps, "s")
                res["CLI with agent"] = edits(
                    lambda n, s: timed(command() + ["rule", "add", n, "--dev", dev, "--netns", ns, "--src", s,
                                              "--action", "drop"], env),
                    lambda n, _s: timed(command() + ["rule", "del", n, "--dev", dev, "--netns", ns], env),
                    chunks[4], args.reps, "a")
                python_cli = os.path.join(os.path.dirname(sys.executable), "bpfgate-py")
                if os.access(python_cli, os.X_OK) and command() != [python_cli]:
                    res["CLI with agent, bpfgate-py"] = edits(
                        lambda n, s: timed([python_cli, "rule", "add", n, "--dev", dev, "--netns", ns, "--src", s,
                                            "--action", "drop"], env),
                        lambda n, _s: timed([python_cli, "rule", "del", n, "--dev", dev, "--netns", ns], env),
                        chunks[6], args.reps, "p")
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
