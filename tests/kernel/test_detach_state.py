"""`bpfgate detach` removes everything of bpfgate's at the hooks it detaches, state under /run/bpfgate
included, so the next `apply`, `events` and `syn` start clean: a user's sequence, through the CLI."""

from __future__ import annotations

import os
import subprocess

import pytest
from clirun import run_cli

pytestmark = pytest.mark.kernel
ENGINE_STATE, ENGINE_PINS = "/run/bpfgate/engine", "/sys/fs/bpf/bpfgate/engine"
T_DROP, T_OK = 1.0, 3.0


@pytest.fixture
def net(sandbox, tmp_path):
    """client -- server; p.yaml drops tcp 80 at the server's interface; the policy removed at the end."""
    client, server = sandbox.host("client"), sandbox.host("server")
    link = sandbox.link(client, server)
    server.http_server(80)
    dev = link.end(server).name
    policy = tmp_path / "p.yaml"
    policy.write_text(f"interfaces: [{dev}]\nhooks:\n  tc-ingress:\n    rules:\n"
                      f"      - {{name: web, protocol: tcp, dst_port: 80, action: drop}}\n")
    n = type("Net", (), {"client": client, "server": server, "link": link, "dev": dev, "ns": server.netns,
                         "policy": str(policy), "url": f"http://{link.end(server).ip4}:80/"})()
    try:
        yield n
    finally:
        run_cli(["detach", "--netns", n.ns])


def _ok(*argv, timeout=120):
    r = run_cli(list(argv), timeout=timeout)
    assert r.returncode == 0, f"bpfgate {' '.join(argv)}: {r.stdout}{r.stderr}"
    return r


def _dropped(n) -> bool:
    return n.client.http_get(n.url, T_DROP).status is None


def _served(n) -> bool:
    return n.client.http_get(n.url, T_OK).ok


def _ours_in(root: str, ns: str) -> list[str]:
    found = []
    for parent, dirs, files in os.walk(os.path.join(root, ns)):
        found += [os.path.join(parent, x) for x in dirs + files]
    return found + ([os.path.join(root, ns)] if os.path.exists(os.path.join(root, ns)) else [])


def test_detach_leaves_no_engine_state_and_apply_works_again(net):
    n = net
    _ok("apply", "--netns", n.ns, n.policy)
    assert _dropped(n)
    r = _ok("detach", "--netns", n.ns)
    assert "filter" in r.stdout
    assert _ours_in(ENGINE_STATE, n.ns) == [] and _ours_in(ENGINE_PINS, n.ns) == []
    assert _served(n)
    r = run_cli(["rule", "del", "--netns", n.ns, "--dev", n.dev, "web"])
    assert r.returncode != 0 and "no bpfgate policy is attached" in r.stderr
    _ok("apply", "--netns", n.ns, n.policy)   # was: "an engine is already attached there"
    assert _dropped(n)
    _ok("policy", "remove", "--netns", n.ns)
    assert _served(n)


def test_device_deleted_then_detach_then_recreated(net):
    n = net
    _ok("apply", "--netns", n.ns, n.policy)
    n.server.run(["ip", "link", "del", n.dev], check=True)   # the veth pair goes, with its filters
    r = _ok("detach", "--netns", n.ns, "--dev", n.dev)
    assert r.stdout.strip()
    assert _ours_in(ENGINE_STATE, n.ns) == [] and _ours_in(ENGINE_PINS, n.ns) == []
    n.server.run(["ip", "link", "add", n.dev, "type", "veth", "peer", "name", "bgpeer0"], check=True)
    n.server.run(["ip", "link", "set", n.dev, "up"], check=True)
    _ok("apply", "--netns", n.ns, n.policy)   # was: refused, "already attached"
    rules = _ok("rules", "--netns", n.ns, "--json").stdout
    assert '"web"' in rules
    _ok("policy", "remove", "--netns", n.ns)   # was: "its pins ... are gone"
    assert _ours_in(ENGINE_STATE, n.ns) == [] and _ours_in(ENGINE_PINS, n.ns) == []


def test_events_and_syn_block_after_detach(net):
    n = net
    _ok("apply", "--netns", n.ns, n.policy)
    _ok("detach", "--netns", n.ns)
    # was: "ring buffer pin ... is missing" (the engine's state still listed it as attached)
    _ok("events", "--dev", n.dev, "--netns", n.ns, "--json", "--duration", "0.5")
    _ok("syn", "--dev", n.dev, "--netns", n.ns, "--rate", "3", "--block", "1", "--json", "--duration", "0.5")
    assert _ours_in(ENGINE_STATE, n.ns) == []


def test_detach_removes_state_an_older_detach_left(net):
    """What the detach of an older bpfgate left (engine state, no records, no pins): the next detach
    removes it, and `status` shows it until then."""
    n = net
    _ok("apply", "--netns", n.ns, n.policy)
    _ok("detach", "--netns", n.ns)
    state = os.path.join(ENGINE_STATE, n.ns, n.dev, "tc-ingress")
    os.makedirs(state)
    with open(os.path.join(state, "meta.json"), "w") as f:
        f.write('{"attachments": ["%s.%s.tc-ingress-b9f-100"], "pins": []}' % (n.ns, n.dev))
    r = _ok("status", "--netns", n.ns, "--json", "--no-cgroups")
    assert state in r.stdout
    r = _ok("detach", "--netns", n.ns)
    assert state in r.stdout
    assert _ours_in(ENGINE_STATE, n.ns) == []
    _ok("apply", "--netns", n.ns, n.policy)
    assert _dropped(n)


def test_namespace_deleted_then_detach(net):
    """`ip netns del` under a running policy: the name is gone, bpfgate's records, pins and state of it are
    not; `detach --netns NAME` removes them and says so, and then NAME is an unknown namespace (exit 2)."""
    n = net
    _ok("apply", "--netns", n.ns, n.policy)
    subprocess.run(["ip", "netns", "del", n.ns], check=True)
    r = _ok("detach", "--netns", n.ns)
    assert "removed" in r.stdout and "bg_engine_tc" in r.stdout, r.stdout
    assert _ours_in(ENGINE_STATE, n.ns) == [] and _ours_in(ENGINE_PINS, n.ns) == []
    assert not [f for f in os.listdir("/run/bpfgate/attachments") if f.startswith(f"{n.ns}.")]
    r = run_cli(["detach", "--netns", n.ns])
    assert r.returncode == 2 and "no such network namespace" in r.stderr and "Traceback" not in r.stderr, r.stderr
