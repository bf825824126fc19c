"""`bpfgate top` with a policy engine attached: the rule hits and drops panel (JSON and the rendered frame)
after an exact number of real datagrams hit a drop rule and a pass rule."""

from __future__ import annotations

import json
import socket

import pytest
from clirun import run_cli

from bpfgate.engine import Engine
from bpfgate.inspect.flows import FlowMonitor
from bpfgate.inspect.rules import RuleReader
from bpfgate.inspect.top import Top
from bpfgate.kernel import netns
from bpfgate.policy.model import HookPolicy
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel


@pytest.fixture
def net(sandbox, engines):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)
    eng = engines(link.b.name, "tc-ingress", HookPolicy.model_validate({"default": "allow", "rules": [
        {"name": "drop-9", "protocol": "udp", "dst_port": 9, "action": "drop"},
        {"name": "pass-7", "protocol": "udp", "dst_port": 7},
    ]}), netns_name=s.netns)
    return c, s, link, eng


def send_udp(host, addr: str, port: int, n: int) -> None:
    with netns.entered(host.netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(n):
            s.sendto(b"x" * 50, (addr, port))
    finally:
        s.close()


def test_top_rules_panel(net):
    client, server, link, eng = net
    send_udp(client, link.b.ip4, 9, 7)
    send_udp(client, link.b.ip4, 7, 3)
    c = eng.counters()
    assert c["drop-9"].packets == 7 and c["pass-7"].packets == 3
    base = ["top", "--dev", link.b.name, "--netns", server.netns, "--interval", "0.2"]
    r = run_cli(base + ["--json"], timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    rules = snap["rules"]
    by = {x["rule"]: x for x in rules["top"]}
    assert (by["drop-9"]["packets"], by["drop-9"]["action"], by["drop-9"]["hook"]) == (7, "drop", "tc-ingress")
    assert (by["pass-7"]["packets"], by["pass-7"]["action"]) == (3, "pass")
    assert by["drop-9"]["bytes"] == c["drop-9"].bytes
    assert by["drop-9"]["packets_per_s"] == 0     # nothing new during the interval
    assert rules["drops"] == 7 and rules["total_rules"] == 3       # (default) included
    assert [x["rule"] for x in rules["top"]][:2] == ["drop-9", "pass-7"]   # busiest first

    r = run_cli(base + ["--once"], timeout=scaled(60), env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "policy rules" in r.stdout and "drops 7" in r.stdout and "drop-9" in r.stdout, r.stdout

    r = run_cli(base + ["--json", "--no-rules"], timeout=scaled(60))
    assert r.returncode == 0 and "rules" not in json.loads(r.stdout)


def test_top_without_engine_has_no_rules_panel(sandbox):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)
    r = run_cli(["top", "--dev", link.b.name, "--netns", s.netns, "--interval", "0.2", "--json"], timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    assert "rules" not in json.loads(r.stdout)


def test_engine_attached_while_top_runs_gets_a_panel(sandbox):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)
    with FlowMonitor(link.b.name, netns_name=s.netns) as mon, RuleReader(s.netns, [link.b.name]) as reader:
        top = Top(mon, rules=reader)
        assert top.snapshot().rules is None
        eng = Engine.attach(link.b.name, "tc-ingress", HookPolicy.model_validate(
            {"default": "deny", "rules": [{"name": "ok-7", "protocol": "udp", "dst_port": 7}]}), netns_name=s.netns)
        try:
            send_udp(c, link.b.ip4, 7, 2)
            send_udp(c, link.b.ip4, 8, 3)      # the default rule denies these
            snap = top.snapshot()
            by = {r.rule: r for r in snap.rules.rows}
            assert by["ok-7"].packets == 2 and by["(default)"].action == "drop"
            assert snap.rules.drops == by["(default)"].packets >= 3
            assert "policy rules" in str(top.render(snap).renderables[-1].title)
        finally:
            eng.detach()
        assert top.snapshot().rules is None
