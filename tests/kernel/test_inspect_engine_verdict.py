"""`bpfgate capture --rule NAME` / `--engine` with an engine attached: the engine itself writes the records
after its decision, with its real verdict and rule. An earlier `pass` rule overlaps a later `drop` rule:
the drop rule's capture holds only what it really dropped; --engine holds both verdicts, each with its
rule. Read back by tshark; the engine's capture config is off again afterwards (count, SIGTERM)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from clirun import run_cli

from bpfgate.engine import Engine
from bpfgate.kernel import netns
from bpfgate.policy.model import HookPolicy
from bpfgate.sandbox.timing import scaled

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed (scripts/run installs it)")]
DEADLINE = 10.0
PASS_SPORT = 5001


@pytest.fixture
def net(sandbox, engines):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)
    eng = engines(link.b.name, "tc-ingress", HookPolicy.model_validate({"default": "allow", "rules": [
        {"name": "pass-5001", "protocol": "udp", "src_port": PASS_SPORT, "action": "pass"},
        {"name": "drop-9", "protocol": "udp", "dst_port": 9, "action": "drop"},
    ]}), netns_name=s.netns)
    return c, s, link, eng


def _cfg(link, server) -> bytes:
    with Engine.open(link.b.name, "tc-ingress", server.netns) as e:
        return bytes(e.maps["bg_capture_cfg"][0])


class Traffic:
    """UDP to port 9 from port 5001 (passed by pass-5001) and from another port (dropped by drop-9)."""

    def __init__(self, client, link):
        with netns.entered(client.netns):
            self.a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.p.bind((link.a.ip4, PASS_SPORT))
        self.dst = (link.b.ip4, 9)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._send, daemon=True)

    def _send(self):
        for i in range(3000):        # bounded: at most 60 s
            if self.stop.wait(0.02):
                return
            self.a.sendto(b"dropped %d" % i, self.dst)
            self.p.sendto(b"passed %d" % i, self.dst)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(DEADLINE)
        self.a.close()
        self.p.close()


def _tshark(path) -> list[list[str]]:
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "udp.srcport", "-e", "udp.dstport",
                          "-e", "frame.comment"], capture_output=True, text=True, timeout=scaled(60), check=False)
    assert out.returncode == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_rule_capture_holds_only_what_the_rule_dropped(net, tmp_path):
    client, server, link, eng = net
    path = tmp_path / "drop.pcapng"
    before = eng.counters()["drop-9"].packets
    with Traffic(client, link):
        r = run_cli(["capture", "--dev", link.b.name, "--netns", server.netns, "--rule", "drop-9", "--count", "6",
                     "--duration", "60", "--pcapng", "-w", str(path)], timeout=scaled(90))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr          # real verdicts: no shadowing label to warn about
    rows = _tshark(path)
    assert len(rows) == 6
    for sport, dport, comment in rows:
        assert dport == "9" and sport != str(PASS_SPORT)     # pass-5001's packets are not drop-9's
        assert comment == "bpfgate verdict=drop rule=drop-9 hook=tc-ingress dir=ingress"
    assert eng.counters()["drop-9"].packets - before >= 6
    assert _cfg(link, server) == bytes(20)                   # capture off again


def test_engine_capture_has_both_verdicts(net, tmp_path):
    client, server, link, _eng = net
    path = tmp_path / "all.pcapng"
    with Traffic(client, link):
        r = run_cli(["capture", "--dev", link.b.name, "--netns", server.netns, "--engine", "--count", "20",
                     "--duration", "60", "--pcapng", "-w", str(path)], timeout=scaled(90))
    assert r.returncode == 0, r.stderr
    rows = _tshark(path)
    assert len(rows) == 20
    seen = set()
    # every packet the engine decides on is recorded: the test's UDP, and whatever else the host sends
    # (IPv6 neighbour/router solicitations, MLD) under the default rule
    others = [c for _sport, dport, c in rows if not dport]
    assert all(c.startswith("bpfgate verdict=") and "hook=tc-ingress" in c for c in others), others
    for sport, dport, comment in rows:
        if not dport:
            continue
        assert dport == "9", rows
        if sport == str(PASS_SPORT):
            assert comment == "bpfgate verdict=pass rule=pass-5001 hook=tc-ingress dir=ingress"
        else:
            assert comment == "bpfgate verdict=drop rule=drop-9 hook=tc-ingress dir=ingress"
        seen.add(comment.split()[1])
    assert seen == {"verdict=pass", "verdict=drop"}
    assert _cfg(link, server) == bytes(20)


def test_sigterm_turns_engine_capture_off(net, tmp_path):
    _client, server, link, _eng = net
    proc = subprocess.Popen([sys.executable, "-m", "bpfgate.cli.main", "capture", "--dev", link.b.name, "--netns",
                             server.netns, "--engine", "--duration", "60", "-w", str(tmp_path / "t.pcap")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + scaled(30)
        while _cfg(link, server)[:4] != b"\1\0\0\0":
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "capture never enabled"
            time.sleep(0.05)
        cfg = _cfg(link, server)
        assert int.from_bytes(cfg[4:8], "little") == 65535 and cfg[8:12] == bytes(4)   # snaplen, every rule
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=scaled(30))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert _cfg(link, server) == bytes(20)
    # no engine: --engine is a one-line NotFound
    r = run_cli(["capture", "--dev", link.a.name, "--netns", _client_ns(net), "--engine", "--json"])
    assert r.returncode != 0 and "no policy engine" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _client_ns(net):
    return net[0].netns
