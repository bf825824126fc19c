"""SYN-flood blocking through the policy engine: with an engine at tc-ingress, `bpfgate syn --block` adds a
temporary drop rule syn-flood-<addr> for a real flooding source (its SYNs are then dropped), deletes it when
the block expires (the source connects again), and removes the rules it added when it is stopped."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
from features import require  # noqa: E402  (tests/kernel helper)
from clirun import run_cli
from test_inspect_engine_events import connect

from bpfgate.engine import Engine
from bpfgate.policy.model import HookPolicy
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
WAIT = scaled(15.0)


@pytest.fixture(autouse=True)
def _syn_program():
    require("syn")  # syn.o needs atomic fetch instructions (5.12): older kernels refuse it, in one line


@pytest.fixture
def net(sandbox, engines):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)
    eng = engines(link.b.name, "tc-ingress", HookPolicy.model_validate({"default": "allow", "rules": [
        {"name": "web", "protocol": "tcp", "dst_port": 80}]}), netns_name=s.netns)
    yield c, s, link, eng
    shutil.rmtree(os.path.join("/run/bpfgate/policyctl", s.netns), ignore_errors=True)   # the blocks' lock


def flood_rules(eng: Engine) -> list[str]:
    return [r.name for r in eng.policy().rules if r.name.startswith("syn-flood-")]


class Lines:
    """JSON lines of a running command, read without blocking past a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.seen = proc, []

    def until(self, pred, timeout: float = WAIT) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not select.select([self.proc.stdout], [], [], 0.1)[0]:
                continue
            line = self.proc.stdout.readline()
            if not line:
                return None
            ev = json.loads(line)
            self.seen.append(ev)
            if pred(ev):
                return ev
        return None


def start_syn(link, server, block: float) -> subprocess.Popen:
    """`bpfgate syn --block` on the server's interface: a flood is 3 SYNs/s, JSON lines every 0.2 s."""
    argv = [sys.executable, "-m", "bpfgate.cli.main", "syn", "--dev", link.b.name, "--netns", server.netns,
            "--rate", "3", "--block", str(block), "--interval", "0.2", "--json", "--duration", "120"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def flood_until_blocked(client, addr: str, eng: Engine) -> list[str]:
    """Connection attempts to a closed port (one SYN each while not dropped) until a flood rule appears."""
    deadline = time.monotonic() + WAIT
    results = []
    while not flood_rules(eng) and time.monotonic() < deadline:
        results.append(connect(client, addr, 7070, timeout=0.3))
    return results


def test_syn_block_through_engine_rules(net):
    client, server, link, eng = net
    src = link.a.ip4
    p = start_syn(link, server, block=1.5)
    lines = Lines(p)
    try:
        assert lines.until(lambda e: e["type"] == "syn_stats"), p.stderr.read() if p.poll() is not None else ""
        assert flood_rules(eng) == []
        flood_until_blocked(client, link.b.ip4, eng)
        assert flood_rules(eng) == [f"syn-flood-{src}"]
        rule = next(r for r in eng.policy().rules if r.name == f"syn-flood-{src}")
        assert eng.policy().rules[0] == rule and rule.action == "drop" and [str(n) for n in rule.src] == [f"{src}/32"]
        # the source's SYNs are dropped by the engine now (no RST comes back)
        assert connect(client, link.b.ip4, 7070, timeout=0.5) == "timeout"
        assert eng.counters()[f"syn-flood-{src}"].packets >= 1
        flood = lines.until(lambda e: e["type"] == "syn_flood")
        assert flood and flood["src"] == src and flood["blocked"] is True
        assert flood["blocked_by"] == f"engine rule syn-flood-{src}"
        # released when the block expires: the rule is deleted, the source connects again
        assert lines.until(lambda e: e["type"] == "syn_unblock" and e["source"] == src), lines.seen[-3:]
        assert flood_rules(eng) == []
        assert connect(client, link.b.ip4, 7070) == "refused"
        # blocked again, then the command stops: it removes the rule it added
        flood_until_blocked(client, link.b.ip4, eng)
        assert flood_rules(eng) == [f"syn-flood-{src}"]
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=WAIT)
        assert p.returncode == 128 + signal.SIGTERM, err
        assert "Traceback" not in err
        assert flood_rules(eng) == []
        assert [r.name for r in eng.policy().rules] == ["web"]
        assert connect(client, link.b.ip4, 7070) == "refused"
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_engine_detached_while_syn_runs(net):
    """The engine goes away under a running `bpfgate syn --block`: floods are reported as not blocked (with
    the reason), the command keeps going and exits cleanly, and nothing of the engine is recreated."""
    client, server, link, eng = net
    p = start_syn(link, server, block=5)
    lines = Lines(p)
    try:
        assert lines.until(lambda e: e["type"] == "syn_stats")
        store_dir = eng.store.dir
        eng.detach()
        for _ in range(6):
            assert connect(client, link.b.ip4, 7070) == "refused"     # nobody drops them
        flood = lines.until(lambda e: e["type"] == "syn_flood")
        assert flood and flood["blocked"] is False and "detached" in flood["block_error"]
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=WAIT)
        assert p.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
        assert not os.path.exists(store_dir)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_engine_at_xdp_takes_the_hook_syn_needs(sandbox):
    """SYN counting runs at XDP: with the engine there, `bpfgate syn` cannot attach and says so in one line
    (and leaves the engine's policy untouched)."""
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)
    eng = Engine.attach(link.b.name, "xdp", HookPolicy.model_validate({"default": "allow"}), netns_name=s.netns)
    try:
        r = run_cli(["syn", "--dev", link.b.name, "--netns", s.netns, "--rate", "3", "--block", "1", "--json",
                     "--duration", "1"], timeout=scaled(60))
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "xdp" in r.stderr.lower(), r.stderr
        assert [x.name for x in eng.policy().rules] == []
    finally:
        eng.detach()


def test_blocks_are_automation_rules_kept_by_apply_and_left_out_of_export(net, tmp_path):
    """The blocker edits through the control plane: its rule is owned by "syn-blocker" (`rules`), `policy
    export` leaves it out, and `apply` of the (edited) export swaps the policy but keeps the block, and says
    so: the flooding source stays dropped (real SYNs, the block's counter)."""
    client, server, link, eng = net
    name = f"syn-flood-{link.a.ip4}"
    p = start_syn(link, server, block=90)
    lines = Lines(p)
    try:
        assert lines.until(lambda e: e["type"] == "syn_stats"), p.stderr.read() if p.poll() is not None else ""
        flood_until_blocked(client, link.b.ip4, eng)
        assert flood_rules(eng) == [name]
        r = run_cli(["rules", "--netns", server.netns, "--json"])
        owners = {x["name"]: x["owner"] for x in json.loads(r.stdout)}
        assert owners == {name: "syn-blocker", "web": None, "(default)": None}, r.stdout
        out = tmp_path / "export.yaml"
        r = run_cli(["policy", "export", "--netns", server.netns, "-o", str(out)])
        assert r.returncode == 0, r.stderr
        text = out.read_text()
        body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
        assert "syn-flood" not in body and "# left out: rules added by automation" in text and name in text
        r = run_cli(["apply", "--netns", server.netns, str(out)])
        assert r.returncode == 0 and "no change" in r.stdout and f"rule {name} kept" in r.stdout, r.stdout
        out.write_text(text.replace("dst_port: 80", "dst_port: 81"))   # a real swap this time
        r = run_cli(["apply", "--netns", server.netns, str(out)])
        assert r.returncode == 0 and "policy swap" in r.stdout and f"rule {name} kept" in r.stdout, r.stdout
        assert [x.name for x in eng.policy().rules] == [name, "web"]
        before = eng.counters()[name].packets
        assert connect(client, link.b.ip4, 7070, timeout=0.5) == "timeout"   # still dropped by the block
        assert eng.counters()[name].packets > before
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=WAIT)
        assert p.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
        assert flood_rules(eng) == [] and connect(client, link.b.ip4, 7070) == "refused"
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_a_killed_runs_block_is_adopted_and_removed_by_the_next_run(net):
    """SIGKILL leaves no chance to clean up: the block stays in the engine, and the next `syn --block`
    run on the device takes it over, lets it expire after its own block time and removes it."""
    client, server, link, eng = net
    src = link.a.ip4
    p = start_syn(link, server, block=90)
    try:
        assert Lines(p).until(lambda e: e["type"] == "syn_stats")
        flood_until_blocked(client, link.b.ip4, eng)
        assert flood_rules(eng) == [f"syn-flood-{src}"]
    finally:
        p.kill()
        p.communicate(timeout=WAIT)
    assert flood_rules(eng) == [f"syn-flood-{src}"]   # the dead run's block
    assert connect(client, link.b.ip4, 7070, timeout=0.5) == "timeout"
    r = run_cli(["syn", "--dev", link.b.name, "--netns", server.netns, "--rate", "1000", "--block", "1",
                 "--interval", "0.2", "--json", "--duration", "3"])
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert {"type": "syn_unblock", "source": src}.items() <= next(
        e for e in events if e["type"] == "syn_unblock").items()
    assert flood_rules(eng) == []
    assert connect(client, link.b.ip4, 7070) == "refused"
