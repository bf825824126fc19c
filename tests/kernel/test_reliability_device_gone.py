"""The device goes away (`ip link del`) while bpfgate runs on it: a policy at tc-ingress and XDP, a
`capture`, `flows` (and `flows --keep` where the kernel has TCX) and `events`. The running commands end
or can be stopped without a traceback, `status`, `rules` and `detach` keep working and say what is
gone, and nothing of bpfgate's is left (the module's leak check: filters, links, pins, /run/bpfgate)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from clirun import run_cli

from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel


@pytest.fixture
def net(sandbox, tmp_path):
    client, server = sandbox.host("client"), sandbox.host("server")
    link = sandbox.link(client, server)
    server.http_server(80)
    dev = link.end(server).name
    policy = tmp_path / "p.yaml"
    policy.write_text(f"interfaces: [{dev}]\nhooks:\n"
                      f"  tc-ingress:\n    rules:\n      - {{name: web, protocol: tcp, dst_port: 81, action: drop}}\n"
                      f"  xdp:\n    rules:\n      - {{name: udp9, protocol: udp, dst_port: 9, action: drop}}\n")
    n = type("Net", (), {"client": client, "server": server, "dev": dev, "ns": server.netns,
                         "policy": str(policy), "url": f"http://{link.end(server).ip4}:80/",
                         "pcap": str(tmp_path / "c.pcap")})()
    try:
        yield n
    finally:
        run_cli(["detach", "--netns", n.ns])


def _ok(*argv):
    r = run_cli(list(argv))
    assert r.returncode == 0 and "Traceback" not in r.stderr, f"bpfgate {' '.join(argv)}: {r.stdout}{r.stderr}"
    return r


def _start(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bpfgate.cli.main", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _attached(ns: str) -> list[dict]:
    return json.loads(_ok("status", "--netns", ns, "--json").stdout)["attachments"]


def _wait_attached(ns: str, dev: str, owners: set[str], proc: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + scaled(30)
    while time.monotonic() < deadline:
        have = {a.get("owner") for a in _attached(ns) if a.get("target") == dev}
        if owners <= have:
            return
        for p in proc:
            assert p.poll() is None, p.communicate()
        time.sleep(0.2)
    pytest.fail(f"not attached after 30 s: {owners - have} (have {have})")


def _stop(p: subprocess.Popen) -> tuple[int, str, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        out, err = p.communicate(timeout=scaled(30))
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"{p.args[3:]} did not stop on SIGTERM: {err[-2000:]}")
    return p.returncode, out, err


def test_device_deleted_under_policy_capture_flows_events(net):
    n = net
    _ok("apply", "--netns", n.ns, n.policy)
    procs = [_start("capture", "--dev", n.dev, "--netns", n.ns, "-w", n.pcap, "--duration", "120"),
             _start("flows", "--dev", n.dev, "--netns", n.ns, "--duration", "120", "--json"),
             _start("events", "--dev", n.dev, "--netns", n.ns, "--json", "--duration", "120")]
    try:
        _wait_attached(n.ns, n.dev, {"engine", "capture", "flows"}, procs)
        assert n.client.http_get(n.url).ok
        n.server.run(["ip", "link", "del", n.dev], check=True)
        # the commands go on or end; either way, no traceback, and SIGTERM ends them cleanly
        for p in procs:
            code, _, err = _stop(p)
            assert "Traceback" not in err, err[-3000:]
            assert code in (0, 1, 2, 128 + signal.SIGTERM), (p.args[3:], code, err[-2000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    # the pcap the capture wrote is complete (a Wireshark-readable header at least)
    with open(n.pcap, "rb") as f:
        assert f.read(4) in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a")
    # status and rules work and say the device is gone; detach removes what is left
    st = _ok("status", "--netns", n.ns)
    r = run_cli(["rules", "--netns", n.ns, "--dev", n.dev])
    assert "Traceback" not in r.stderr and r.returncode in (0, 2), r.stderr
    _ok("detach", "--netns", n.ns)
    assert [a for a in _attached(n.ns) if a.get("target") == n.dev] == [], st.stdout
    for root in ("/run/bpfgate/engine", "/sys/fs/bpf/bpfgate/engine"):
        assert not os.path.exists(os.path.join(root, n.ns)) or not os.listdir(os.path.join(root, n.ns))


@pytest.mark.parametrize("argv", [["flows", "--duration", "120", "--json"], ["top", "--json", "--interval", "60"]])
def test_sigterm_ends_a_counting_command_like_ctrl_c(net, argv):
    """`timeout`, systemd and kill send SIGTERM: the command detaches, prints what it counted, exits 0."""
    n = net
    p = _start(argv[0], "--dev", n.dev, "--netns", n.ns, *argv[1:])
    try:
        _wait_attached(n.ns, n.dev, {"flows"}, [p])
        assert n.client.http_get(n.url).ok
        code, out, err = _stop(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert json.loads(out)["flows"], out   # what it counted: the request's flow at least
    assert [a for a in _attached(n.ns) if a.get("owner") == "flows"] == []
