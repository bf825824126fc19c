"""`bpfgate agent` with real engines and traffic: it applies a policy directory and follows its changes,
reports a bad file and keeps the others, repairs an engine someone removed, gives an interface that
appears later (a pattern) its policy, serves /healthz /readyz /metrics, refuses a second agent, and
restarts without a gap: SIGKILL under traffic, not one denied packet through, not one allowed lost, and
the new agent adopts the running engines without re-attaching them."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml
from clirun import run_cli, run_entry
from test_reliability_swap import Stream

from bpfgate import policyctl
from bpfgate.engine import Engine
from bpfgate.errors import BpfgateError
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
INTERVAL = 0.3
WAIT = scaled(30)


def drop_port(dev: str, port: int, extra: list[dict] = ()) -> str:
    return yaml.safe_dump({"interfaces": [dev], "hooks": {"tc-ingress": {"default": "allow", "rules": [
        {"name": f"no-{port}", "protocol": "tcp", "dst_port": port, "action": "drop"}, *extra]}}})


class AgentProc:
    def __init__(self, web, policy_dir, state_dir, interval: float = INTERVAL):
        self.args = [sys.executable, "-m", "bpfgate.cli.main", "agent", "--policy-dir", str(policy_dir),
                     "--netns", web.ns, "--listen", "127.0.0.1:0", "--interval", str(interval),
                     "--state-dir", str(state_dir)]
        self.p = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        started = self.wait_log(lambda e: e["msg"] == "agent started")
        self.url = f"http://{started['listen']}"

    def _read(self) -> None:
        for line in self.p.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"msg": "not json", "line": line})

    def wait_log(self, pred, timeout: float = WAIT) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for e in self.lines[seen:]:
                if pred(e):
                    return e
            seen = len(self.lines)
            assert self.p.poll() is None or seen < len(self.lines), f"agent exited {self.p.returncode}: {self.lines}"
            time.sleep(0.05)
        pytest.fail(f"no such log line in {timeout} s; got {self.lines[-10:]}")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            self.p.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self._t.join(timeout=5)
        return self.p.returncode


@pytest.fixture
def agent_env(web, tmp_path):
    d, state = tmp_path / "policies", tmp_path / "state"
    d.mkdir()
    agents: list[AgentProc] = []

    def start(interval: float = INTERVAL) -> AgentProc:
        a = AgentProc(web, d, state, interval)
        agents.append(a)
        return a
    try:
        yield web, d, start
    finally:
        for a in agents:
            a.stop(signal.SIGKILL)
        run_cli(["detach", "--netns", web.ns])


def until(pred, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def dropped(n, port):
    return n.client.http_get(f"http://{n.ip4}:{port}/", 1.0).status is None


def served(n, port):
    return n.client.http_get(f"http://{n.ip4}:{port}/", 3.0).ok


def rule_names(n):
    """The rules running in the namespace; none while the agent is still attaching an engine."""
    try:
        return {r.name for r in policyctl.rules(netns=n.ns)} if policyctl.running(n.ns) else set()
    except BpfgateError:   # e.g. its snapshot not written yet: read again at the next poll
        return set()


def test_agent_follows_the_directory_and_reports_a_bad_file(agent_env):
    n, d, start = agent_env
    (d / "web.yaml").write_text(drop_port(n.dev, 8080))
    a = start()
    assert until(lambda: "no-8080" in rule_names(n))
    assert dropped(n, 8080) and served(n, 8081)
    assert a.get("/healthz")[0] == 200 and a.get("/readyz") == (200, "ok\n")
    # a change is applied
    (d / "web.yaml").write_text(drop_port(n.dev, 8081))
    assert until(lambda: "no-8081" in rule_names(n))
    assert served(n, 8080) and dropped(n, 8081)
    # a bad file: reported with its line, not ready, the good one keeps running; fixed: ready again
    (d / "bad.yaml").write_text(f"interfaces: [{n.dev}2]\nhooks:\n  tc-ingress:\n    rules:\n"
                                "      - {name: x, protocol: tpc, action: drop}\n")
    err = a.wait_log(lambda e: e["msg"] == "policy file not applied")
    assert err["file"].endswith("bad.yaml") and "bad.yaml:5" in err["error"] and "tpc" in err["error"], err
    code, body = a.get("/readyz")
    assert code == 503 and "bad.yaml" in body
    assert dropped(n, 8081) and "no-8081" in rule_names(n)
    (d / "bad.yaml").unlink()
    assert until(lambda: a.get("/readyz")[0] == 200)
    metrics = a.get("/metrics")[1]
    assert 'bpfgate_agent_policy_files{state="ok"} 1.0' in metrics
    assert "bpfgate_rule_packets_total" in metrics and 'rule="no-8081"' in metrics
    # the file goes: its engine is detached
    (d / "web.yaml").unlink()
    assert until(lambda: not policyctl.running(n.ns))
    assert served(n, 8081)
    assert a.stop() == 0
    assert any(e["msg"].startswith("agent stopped") for e in a.lines)


def test_agent_repairs_drift_and_follows_interface_patterns(agent_env):
    n, d, start = agent_env
    (d / "all.yaml").write_text(drop_port("eth*", 8080))
    a = start()
    assert until(lambda: "no-8080" in rule_names(n)) and dropped(n, 8080)
    # someone removes the engine's filter by hand: the agent attaches it again
    n.server.run(["tc", "filter", "del", "dev", n.dev, "ingress"], check=True)
    assert served(n, 8080)
    a.wait_log(lambda e: e["msg"].startswith("drift repaired"))
    assert until(lambda: dropped(n, 8080))
    # an interface matching the pattern appears: it gets the policy
    n.server.run(["ip", "link", "add", "eth7", "type", "veth", "peer", "name", "bgpeer7"], check=True)
    n.server.run(["ip", "link", "set", "eth7", "up"], check=True)
    assert until(lambda: ("eth7", "tc-ingress") in {(dv, h.value) for dv, h in Engine.attached(n.ns)})
    # it goes again: its engine is detached
    n.server.run(["ip", "link", "del", "eth7"], check=True)
    assert until(lambda: "eth7" not in {dv for dv, _ in Engine.attached(n.ns)})
    assert a.stop() == 0


def test_a_file_written_or_an_interface_appearing_starts_a_round_at_once(agent_env):
    """Rounds an hour apart: the agent still acts at once when a policy file is saved (inotify) and when an
    interface matching a pattern appears or goes (rtnetlink link events)."""
    n, d, start = agent_env
    (d / "all.yaml").write_text(drop_port("eth*", 8080))
    a = start(interval=3600)
    assert a.wait_log(lambda e: e["msg"] == "agent started")["watching"] is True
    assert until(lambda: "no-8080" in rule_names(n))   # the first round, at start
    tmp = d / ".all.yaml.tmp"
    tmp.write_text(drop_port("eth*", 8081))
    tmp.rename(d / "all.yaml")   # replaced atomically, as an editor or a ConfigMap update does
    assert until(lambda: "no-8081" in rule_names(n)) and dropped(n, 8081)
    (d / "all.yaml").write_text(drop_port("eth*", 8082))   # written in place
    assert until(lambda: "no-8082" in rule_names(n))
    n.server.run(["ip", "link", "add", "eth7", "type", "veth", "peer", "name", "bgpeer7"], check=True)
    assert until(lambda: ("eth7", "tc-ingress") in {(dv, h.value) for dv, h in Engine.attached(n.ns)})
    n.server.run(["ip", "link", "del", "eth7"], check=True)
    assert until(lambda: "eth7" not in {dv for dv, _ in Engine.attached(n.ns)})
    assert a.stop() == 0


def test_second_agent_refused_and_restart_without_gap(agent_env):
    n, d, start = agent_env
    (d / "p.yaml").write_text(drop_port(n.dev, 8080, [
        {"name": "udp-denied", "protocol": "udp", "dst_port": 7001, "action": "drop"}]))
    a = start()
    assert until(lambda: "udp-denied" in rule_names(n))
    r = subprocess.run(a.args, capture_output=True, text=True, timeout=WAIT)
    assert r.returncode != 0 and f"another agent runs there (pid {a.p.pid})" in r.stderr, r.stderr
    prog_ids = {e.prog_id for e in _engine_entries(n)}
    allowed, denied = Stream(n.client, n.server, n.ip4, 7000), Stream(n.client, n.server, n.ip4, 7001)
    lost = passed = None
    try:
        def send_for(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                allowed.send()
                denied.send()
                time.sleep(0.001)
        send_for(0.5)
        a.stop(signal.SIGKILL)                     # no cleanup at all
        send_for(1.0)                              # no agent
        b = start()                                # a new one takes over
        b.wait_log(lambda e: e["msg"] == "agent started")
        send_for(1.5)
    finally:
        lost, passed = allowed.close(), denied.sent - denied.close()
    assert lost == 0 and allowed.sent > 200, (lost, allowed.sent)   # ~1000/s on a quiet machine
    assert passed == 0
    assert {e.prog_id for e in _engine_entries(n)} == prog_ids, "the new agent re-attached the engine"
    assert not [e for e in b.lines if e["msg"] == "applied"], "the new agent applied what already ran"
    assert b.stop() == 0


def _connect_as_nobody(path: str) -> str:
    """Connect to `path` from a child that dropped to uid/gid 65534; what it met."""
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "connected", 1: "PermissionError"}.get(os.waitstatus_to_exitcode(status), "other")


def _engine_entries(n):
    from bpfgate.status import interface_entries

    return [e for e in interface_entries(n.ns) if e.target == n.dev and e.hook in ("tc-ingress", "tcx-ingress")]


def test_agent_once_and_bad_input():
    r = run_cli(["agent", "--policy-dir", "/nonexistent-bg", "--once"])
    assert r.returncode == 2 and "no such directory" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(["agent", "--policy-dir", os.path.dirname(__file__), "--netns", "bg-no-such-ns", "--once"])
    assert r.returncode == 2 and "no such network namespace" in r.stderr


def test_writes_go_through_the_running_agent(agent_env, tmp_path):
    """While the agent runs, `rule add/del` are done by it (one writer) and `apply` is refused, naming
    the agent and its directory; its socket is root's only."""
    n, d, start = agent_env
    (d / "p.yaml").write_text(drop_port(n.dev, 8080))
    a = start()
    assert until(lambda: "no-8080" in rule_names(n))
    env = {**os.environ, "BPFGATE_AGENT_DIR": a.args[a.args.index("--state-dir") + 1]}
    add = ["rule", "add", "--netns", n.ns, "--dev", n.dev, "--proto", "tcp", "--dport", "8081", "--action",
           "drop", "no-8081"]
    r = run_cli(add, env=env)
    assert r.returncode == 0, r.stderr
    assert "no-8081" in rule_names(n) and dropped(n, 8081)
    r = run_cli(add, env=env)   # its errors come back with their type: exists already = bad input
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr, r.stderr
    before = rule_names(n)   # a rule the agent finds bad: its field named, nothing changed
    r = run_cli(["rule", "add", "--netns", n.ns, "--dev", n.dev, "--src", "198.18.0.300/32", "bad"], env=env)
    assert r.returncode == 2 and "rule bad.src" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert rule_names(n) == before
    r = run_cli(["apply", "--netns", n.ns, str(d / "p.yaml")], env=env)
    assert r.returncode == 1 and f"the bpfgate agent (pid {a.p.pid}) owns its policies" in r.stderr, r.stderr
    assert str(d) in r.stderr
    r = run_cli(["rule", "del", "--netns", n.ns, "--dev", n.dev, "no-8081"], env=env)
    assert r.returncode == 0, r.stderr
    assert "no-8081" not in rule_names(n) and served(n, 8081)
    sock = os.path.join(env["BPFGATE_AGENT_DIR"], n.ns, "agent.sock")
    assert os.stat(sock).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(sock)).st_mode & 0o777 == 0o700
    assert _connect_as_nobody(sock) == "PermissionError"
    assert a.stop() == 0 and not os.path.exists(sock)
    # no agent: the CLI works directly again
    r = run_cli(add, env=env)
    assert r.returncode == 0 and "no-8081" in rule_names(n), r.stderr


def test_edits_are_answered_by_the_agent_before_click(agent_env, frontend):
    """While the agent runs, `rule add|del` and `set add|del` go to it as typed, answered before click, Rich or
    the control plane are imported (and by the C front end without starting Python), and print exactly what
    the full command line prints (which the agent also serves): the edit enforced, --json, a bad rule or
    element (one line, nothing changed), a usage error. With the agent gone, the same command line works
    directly (the front end runs the Python CLI)."""
    n, d, start = agent_env
    front, front_calls = frontend()
    policy = yaml.safe_load(drop_port(n.dev, 8080, [{"name": "no-set", "protocol": "tcp", "dst_port": "@ports",
                                                     "action": "drop"}]))
    (d / "p.yaml").write_text(yaml.safe_dump({**policy, "sets": {"ports": {"type": "port", "elements": [8082]}}}))
    a = start()
    assert until(lambda: "no-set" in rule_names(n))
    env = {**os.environ, "BPFGATE_AGENT_DIR": a.args[a.args.index("--state-dir") + 1]}

    def same(argv: list[str], undo: list[str] | None = None) -> subprocess.CompletedProcess:
        """ARGV answered by the agent before click, and the full command line's answer from the same state
        (`undo` run in between): equal to the byte. The state after: ARGV's, once."""
        fast, imported = run_entry(*argv, env=env)
        assert not imported, (argv, imported, fast.stderr)
        if undo:
            assert run_entry(*undo, env=env)[0].returncode == 0
        full = run_cli(argv, env=env)
        assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr), argv
        if undo:
            assert run_entry(*undo, env=env)[0].returncode == 0
        c = subprocess.run([front, *argv], capture_output=True, text=True, env=env, timeout=WAIT, check=False)
        assert (c.returncode, c.stdout, c.stderr) == (full.returncode, full.stdout, full.stderr), argv
        assert open(front_calls).read() == "", "the front end started Python"
        return fast

    where = ["--netns", n.ns, "--dev", n.dev]
    add = ["rule", "add", *where, "--proto", "tcp", "--dport", "8081", "--action", "drop", "no-8081"]
    delete = ["rule", "del", *where, "no-8081"]
    r = same(add, undo=delete)
    assert r.returncode == 0 and r.stdout == f"OK   rule no-8081 added on {n.dev} tc-ingress at position 2\n"
    assert "no-8081" in rule_names(n) and dropped(n, 8081)
    r = same(add)   # exists: the control plane's typed error, one line, exit 2
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists" in r.stderr, r.stderr
    r = same(delete + ["--json"], undo=add)
    assert json.loads(r.stdout) == {"deleted": "no-8081", "dev": n.dev, "hook": "tc-ingress"}
    assert "no-8081" not in rule_names(n) and served(n, 8081)
    before = rule_names(n)
    r = same(["rule", "add", *where, "--src", "198.18.0.300/32", "bad"])
    assert r.returncode == 2 and r.stderr.startswith("bpfgate: error: policy rule bad.src"), r.stderr
    assert r.stderr.count("\n") == 1
    r = same(["rule", "add", *where, "--frob", "bad"])   # click's usage error, one line
    assert r.returncode == 2 and r.stderr.startswith("bpfgate: error: bpfgate rule add: No such option") and \
        r.stderr.count("\n") == 1, r.stderr
    assert rule_names(n) == before
    r = same(["set", "add", "ports", "8081", f"--netns={n.ns}", "--json"],
             undo=["set", "del", "ports", "8081", "--netns", n.ns])
    assert json.loads(r.stdout) == {"set": "ports", "added": ["8081"], "on": [f"{n.dev} tc-ingress"]}
    assert dropped(n, 8081)
    r = same(["set", "add", "ports", "99999", "--netns", n.ns])
    assert r.returncode == 2 and "99999" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = same(["set", "del", "ports", "8081", "--netns", n.ns], undo=["set", "add", "ports", "8081", "--netns", n.ns])
    assert r.stdout == f"OK   1 element deleted from set ports on {n.dev} tc-ingress\n" and served(n, 8081)
    assert a.stop() == 0
    r, imported = run_entry(*add, env=env)   # no agent: the full command line, which edits directly
    assert r.returncode == 0 and "click" in imported and "no-8081" in rule_names(n), r.stderr
    r = subprocess.run([front, *delete], capture_output=True, text=True, env=env, timeout=WAIT, check=False)
    assert r.returncode == 0 and "no-8081" not in rule_names(n), r.stderr
    assert open(front_calls).read() == " ".join(delete) + "\n"


def test_errors_through_the_agent_keep_their_type_and_fields(agent_env, monkeypatch):
    """The Python API's edits while the agent runs: each error the control plane raises in the agent comes back
    as it was raised (type, message, exit code, fields: a PolicyError's path and reason), and a request the
    agent fails on unexpectedly is answered with an error, logged, and not done directly by the client."""
    from bpfgate.agent import client
    from bpfgate.errors import BadInput, NotFound, PolicyError

    n, d, start = agent_env
    policy = yaml.safe_load(drop_port(n.dev, 8080))
    (d / "p.yaml").write_text(yaml.safe_dump({**policy, "sets": {"ports": {"type": "port", "elements": [8082]}}}))
    a = start()
    assert until(lambda: "no-8080" in rule_names(n))
    monkeypatch.setenv(client.DIR_ENV, a.args[a.args.index("--state-dir") + 1])
    before = rule_names(n)
    with pytest.raises(PolicyError) as e:
        policyctl.add_rule(n.dev, "tc-ingress", {"name": "bad", "src": "198.18.0.300/32"}, netns=n.ns)
    assert e.value.path == "rule bad.src" and "198.18.0.300" in e.value.reason and e.value.exit_code == 2
    with pytest.raises(NotFound, match="no-such") as e:
        policyctl.delete_rule(n.dev, "tc-ingress", "no-such", netns=n.ns)
    with pytest.raises(PolicyError, match="exists") as e:
        policyctl.add_rule(n.dev, "tc-ingress", {"name": "no-8080", "action": "drop"}, netns=n.ns)
    assert e.value.path == "rule no-8080"
    with pytest.raises((PolicyError, BadInput)) as e:
        policyctl.set_add("ports", ["99999"], netns=n.ns)
    assert "99999" in str(e.value) and e.value.exit_code == 2
    assert rule_names(n) == before
    with pytest.raises(BpfgateError, match="add_rule in the bpfgate agent: [A-Za-z]+Error: ") as e:
        client.offer(n.ns, "add_rule", dev=n.dev, hook="tc-ingress", rule=42)   # not what a client sends
    assert type(e.value) is BpfgateError
    logged = a.wait_log(lambda r: r["msg"] == "request failed")
    assert logged["level"] == "error" and logged["op"] == "add_rule" and "Traceback" in logged["traceback"]
    assert rule_names(n) == before and client.running(n.ns)["pid"] == a.p.pid   # still serving
    assert a.stop() == 0


def test_rounds_keep_the_engines_open_for_the_next_edit(web, tmp_path):
    """After its first round, and after each round that changed an engine (its file, or another writer), the
    agent holds the engine open and current: the next edit through its socket finds it so (opening it then is
    most of a second at 100k rules). A file that goes: its engine is not held any more."""
    from bpfgate.agent import Agent
    from bpfgate.engine.state import StateStore
    from bpfgate.policy.model import Hook

    n = web
    d = tmp_path / "policies"
    d.mkdir()
    # nine more rules: a file whose one rule changes is read where it changed (policyctl/incremental.py)
    pad = [{"name": f"pad-{p}", "protocol": "udp", "dst_port": p, "action": "drop"} for p in range(9001, 9010)]
    (d / "p.yaml").write_text(drop_port(n.dev, 8080, pad))
    agent = Agent(str(d), netns=n.ns, state_dir=str(tmp_path / "state"))
    agent.lock()
    key = (n.dev, Hook.TC_INGRESS, n.ns)

    def held():
        """The engine held for the hook, when it is current (its saved state's version)."""
        eng, version = agent.engines._held.get(key, (None, None))
        return eng if eng is not None and version == StateStore(*key).version() else None

    try:
        agent.serving = True   # its socket takes edits
        agent.reconcile()
        first = held()
        assert first is not None and "no-8080" in rule_names(n)
        # the policy the round attached is what runs: the next round's plan starts from it, not from the
        # engine's rules read back from its saved state (~1 s at 100k rules)
        applied = agent.engines._applied.get(key)
        assert applied is not None and applied[1] == StateStore(*key).version()
        assert agent.engines.running(n.ns)[key[:2]] is applied[0]
        assert gc.get_freeze_count() > 0   # what it holds is out of the cyclic collector's walks
        policyctl.add_rule(n.dev, "tc-ingress", {"name": "no-8082", "protocol": "tcp", "dst_port": 8082,
                                                 "action": "drop"}, netns=n.ns, backend=agent.engines)
        assert held() is first and dropped(n, 8082)   # the edit used it, as it was
        (d / "p.yaml").write_text(drop_port(n.dev, 8081, pad))
        assert agent.reconcile().applied
        second = held()   # the round's swap in the held engine, or it opened again: current either way
        assert second is not None and dropped(n, 8081) and served(n, 8080)
        assert agent._since_whole == 1   # a rule replaced by a live edit: only the young heap collected
        policyctl.add_rule(n.dev, "tc-ingress", {"name": "by-hand", "protocol": "tcp", "dst_port": 8080,
                                                 "action": "drop"}, netns=n.ns)   # another writer
        assert held() is None
        assert not agent.reconcile().applied
        third = held()
        assert third is not None and third is not second and dropped(n, 8080)
        assert agent._since_whole == 0   # an engine opened again: the whole heap collected
        policyctl.delete_rule(n.dev, "tc-ingress", "by-hand", netns=n.ns, backend=agent.engines)
        assert held() is third and served(n, 8080)
        (d / "p.yaml").unlink()
        agent.reconcile()
        assert not agent.engines._held and not policyctl.running(n.ns)
    finally:
        agent.unlock()
        gc.unfreeze()   # this process is pytest's, not an agent's


def test_the_agent_holds_each_rule_once(web, tmp_path):
    """An agent adopting an engine that runs its file's policy already reads the engine's rules back from
    the saved state to compare them with the file's: equal, the engine keeps the file's Rule objects instead
    of its own copies, so the agent holds each rule once (at 100k rules ~100k objects, ~45 MB of RSS less).
    So after a round that changed a rule too."""
    from bpfgate.agent import Agent
    from bpfgate.policy.model import Hook
    from bpfgate.policyctl.export import desired_state

    n = web
    d = tmp_path / "policies"
    d.mkdir()
    pad = [{"name": f"pad-{p}", "protocol": "udp", "dst_port": p, "action": "drop"} for p in range(9001, 9010)]
    (d / "p.yaml").write_text(drop_port(n.dev, 8080, pad))
    policyctl.apply(str(d / "p.yaml"), netns=n.ns)   # running before the agent starts
    agent = Agent(str(d), netns=n.ns, state_dir=str(tmp_path / "state"))
    agent.lock()
    key = (n.dev, Hook.TC_INGRESS, n.ns)

    def shared() -> bool:
        eng = agent.engines._held[key][0]
        hp = desired_state(agent.files[0].policies)[key[:2]]
        live = eng.live
        return len(live.order) == len(hp.rules) == 10 and all(
            live.c.source[rid] is rule for (_p, rid), rule in zip(live.order, hp.rules))

    try:
        agent.serving = True
        assert agent.reconcile().applied
        assert shared() and dropped(n, 8080)
        (d / "p.yaml").write_text(drop_port(n.dev, 8081, pad))
        assert agent.reconcile().applied
        assert shared() and dropped(n, 8081) and served(n, 8080)
    finally:
        agent.unlock()
        gc.unfreeze()   # this process is pytest's, not an agent's
        agent.engines.close()
