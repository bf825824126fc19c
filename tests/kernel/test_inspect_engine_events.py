"""Policy engine `log` rules in the event pipeline: real traffic hits log rules of an engine attached through
the engine API; the events arrive in EventStream and `bpfgate events` named by the rule's NAME, also for a
rule added live after the stream opened."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time

import pytest
from clirun import run_cli

from bpfgate.inspect.events import EventStream
from bpfgate.inspect.rules import close_sources, engine_sources
from bpfgate.kernel import netns
from bpfgate.policy.model import HookPolicy, Rule
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
WAIT = scaled(10.0)
RULE_KEYS = ["type", "time", "epoch", "mono_ns", "cpu", "source", "interface", "ifindex", "hook", "rule", "rule_id",
             "action", "family", "proto", "src", "sport", "dst", "dport", "ct_state", "flags", "len"]


@pytest.fixture
def net(sandbox, engines):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)

    def attach(policy, hook="tc-ingress"):
        return engines(link.b.name, hook, HookPolicy.model_validate(policy), netns_name=s.netns)

    return c, s, link, attach


def connect(host, addr: str, port: int, timeout: float = 3.0) -> str:
    """One TCP connection attempt: 'refused' (one SYN, answered by RST), 'timeout' or 'open'."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns.entered(host.netns):
        s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((addr, port))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    finally:
        s.close()


def collect(stream: EventStream, want: int) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + WAIT
    while len(got) < want and time.monotonic() < deadline:
        stream.poll(50)
        got += [stream.describe(r) for r in stream.drain()]
    return got


def test_log_rule_events_carry_the_rule_name(net):
    client, server, link, attach = net
    eng = attach({"default": "allow", "rules": [
        {"name": "watch-7070", "protocol": "tcp", "dst_port": 7070, "log": True},
        {"name": "block-7071", "protocol": "tcp", "dst_port": 7071, "action": "drop", "log": {"rate": 100}},
        {"name": "quiet-7072", "protocol": "tcp", "dst_port": 7072},          # no log: no events
    ]})
    sources = engine_sources([link.b.name], server.netns)
    try:
        assert [s.name for s in sources] == [f"engine:{link.b.name}/tc-ingress"]
        with EventStream(sources) as stream:
            assert connect(client, link.b.ip4, 7072) == "refused"
            assert connect(client, link.b.ip4, 7070) == "refused"
            assert connect(client, link.b.ip6, 7070) == "refused"
            assert connect(client, link.b.ip4, 7071, timeout=0.5) == "timeout"   # dropped: >= 1 SYN
            got = collect(stream, 3)
            # a rule added live after the stream opened: its events are named too
            eng.add_rule(Rule.model_validate({"name": "late-7073", "protocol": "tcp", "dst_port": 7073,
                                              "log": True}), position=0)
            assert connect(client, link.b.ip4, 7073) == "refused"
            got += collect(stream, 1)
            assert stream.lost == 0
    finally:
        close_sources(sources)
    for e in got:
        assert list(e) == RULE_KEYS
        assert e["type"] == "rule_log" and e["interface"] == link.b.name and e["hook"] == "tc-ingress"
        json.dumps(e)
    by_rule: dict[str, list[dict]] = {}
    for e in got:
        by_rule.setdefault(e["rule"], []).append(e)
    assert set(by_rule) == {"watch-7070", "block-7071", "late-7073"}
    watch = by_rule["watch-7070"]
    assert len(watch) == 2 and {e["family"] for e in watch} == {4, 6}
    assert {(e["src"], e["dst"], e["dport"], e["action"], e["flags"], e["proto"]) for e in watch} == {
        (link.a.ip4, link.b.ip4, 7070, "pass", "SYN", 6), (link.a.ip6, link.b.ip6, 7070, "pass", "SYN", 6)}
    assert all(e["action"] == "drop" and e["dport"] == 7071 for e in by_rule["block-7071"])
    assert [e["dport"] for e in by_rule["late-7073"]] == [7073]
    counters = eng.counters()
    assert counters["watch-7070"].packets == 2 and counters["late-7073"].packets == 1


def test_bpfgate_events_streams_engine_log_events(net):
    client, server, link, attach = net
    attach({"default": "allow", "rules": [{"name": "ssh-watch", "protocol": "tcp", "dst_port": 7022, "log": True}]})
    # events made before the command starts wait in the engine's ring buffer until it reads them
    for _ in range(2):
        assert connect(client, link.b.ip4, 7022) == "refused"
    r = run_cli(["events", "--dev", link.b.name, "--netns", server.netns, "--port", "1", "--json", "--count", "2",
                 "--duration", "30"], timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 2
    for e in lines:
        assert list(e) == RULE_KEYS
        assert (e["type"], e["rule"], e["dport"], e["src"], e["action"], e["source"]) == \
            ("rule_log", "ssh-watch", 7022, link.a.ip4, "pass", f"engine:{link.b.name}/tc-ingress")
    # human form: one line per event with the rule's name
    for _ in range(1):
        assert connect(client, link.b.ip4, 7022) == "refused"
    r = run_cli(["events", "--dev", link.b.name, "--netns", server.netns, "--port", "1", "--count", "1",
                 "--duration", "30"], timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert len(out) == 1 and " rule " in out[0] and "ssh-watch pass" in out[0] and ":7022" in out[0], r.stdout
    # traffic while the command runs (its own attempt log at TC ingress must not hide packets from the engine)
    proc = subprocess.Popen([sys.executable, "-m", "bpfgate.cli.main", "events", "--dev", link.b.name, "--netns",
                             server.netns, "--count", "4", "--duration", "60", "--port", "7022"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = select.select([proc.stderr], [], [], WAIT * 3)[0]      # "watching ...": attached, stream open
        assert ready and "watching" in proc.stderr.readline()
        for _ in range(2):
            assert connect(client, link.b.ip4, 7022) == "refused"
        out, err = proc.communicate(timeout=WAIT * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    kinds = sorted(line.split()[1] for line in out.strip().splitlines())
    assert kinds == ["attempt", "attempt", "rule", "rule"], out


def test_engine_attached_after_bpfgate_events_started_joins_the_stream(net):
    client, server, link, attach = net
    cmd = [sys.executable, "-m", "bpfgate.cli.main", "events", "--dev", link.b.name, "--netns", server.netns,
           "--port", "1", "--json", "--count", "1", "--duration", "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)   # not needed for correctness: the engine is picked up whenever it comes
        # at XDP here (tc-ingress is covered above)
        attach({"default": "allow", "rules": [{"name": "late", "protocol": "tcp", "dst_port": 7023, "log": True}]},
               hook="xdp")
        deadline = time.monotonic() + WAIT * 3   # bounded: until the command (starting) has its one event
        while proc.poll() is None and time.monotonic() < deadline:
            connect(client, link.b.ip4, 7023)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    ev = json.loads(out.splitlines()[0])
    assert (ev["type"], ev["rule"], ev["hook"], ev["dport"], ev["source"]) == \
        ("rule_log", "late", "xdp", 7023, f"engine:{link.b.name}/xdp")
