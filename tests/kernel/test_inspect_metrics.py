"""Prometheus metrics scraped over HTTP (loopback) after real connections between namespaces: SYN
counts, attempt counts, event loss, program run stats; a listen address in use is a one-line error."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from features import require  # noqa: E402  (tests/kernel helper)
from prometheus_client.parser import text_string_to_metric_families

from bpfgate.errors import BpfgateError
from bpfgate.inspect import metrics as M
from bpfgate.inspect.attempts import AttemptLog
from bpfgate.inspect.syn import SynCounter
from bpfgate.kernel import netns
from bpfgate.kernel.stats import stats_enabled
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

WAIT = scaled(10.0)


@pytest.fixture
def net(sandbox):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    return c, s, sandbox.link(c, s)


def attempt(host, addr: str, port: int) -> None:
    """One connection attempt to a closed port: one SYN, one RST back."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns.entered(host.netns):
        s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(3.0)
        with pytest.raises(ConnectionRefusedError):
            s.connect((addr, port))
    finally:
        s.close()


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} from a real HTTP scrape."""
    with urllib.request.urlopen(url, timeout=WAIT) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def test_scrape_shows_the_counters(net):
    require("syn")  # the SYN counter (syn.o): atomic fetch instructions, Linux 5.12
    client, server, link = net
    dev = link.b.name
    with SynCounter() as syn, AttemptLog([7070]) as log, stats_enabled(), M.Exporter() as exp:
        syn.attach(dev, server.netns)
        log.attach(dev, server.netns)
        sources = [syn.event_source(), log.event_source()]
        for c in (M.SynCollector(syn, top=5), M.AttemptCollector(log), M.EventCollector(sources),
                  M.ProgramCollector([syn.prog, log.prog])):
            exp.add(c)
        host, port = exp.serve("127.0.0.1:0")
        assert host == "127.0.0.1" and port > 0

        for _ in range(6):
            attempt(client, link.b.ip4, 7070)  # watched
        for _ in range(3):
            attempt(client, link.b.ip6, 7171)  # not watched
        deadline = time.monotonic() + WAIT
        while sum(t.syns for t in syn.totals().values()) < 9 and time.monotonic() < deadline:
            time.sleep(0.02)

        m = scrape(f"http://127.0.0.1:{port}/metrics")
        iface = ("interface", dev)
        assert m[("bpfgate_syn_total", iface)] == 9
        assert m[("bpfgate_syn_blocked_total", iface)] == 0
        assert m[("bpfgate_syn_source_total", iface, ("source", link.a.ip4))] == 6
        assert m[("bpfgate_syn_source_total", iface, ("source", link.a.ip6))] == 3
        assert m[("bpfgate_syn_blocked_sources",)] == 0
        assert m[("bpfgate_connection_attempts_total", iface, ("port", "7070"))] == 6
        assert not any(k[0] == "bpfgate_connection_attempts_total" and ("port", "7171") in k for k in m)
        assert m[("bpfgate_events_total", ("source", "attempts"))] == 6
        assert m[("bpfgate_events_lost_total", ("source", "attempts"))] == 0
        assert m[("bpfgate_events_lost_total", ("source", "syn"))] == 0
        runs = {k: v for k, v in m.items() if k[0] == "bpfgate_program_runs_total"}
        by_prog = {dict(k[1:])["program"]: v for k, v in runs.items()}
        assert by_prog["bg_syn_xdp"] >= 9 and by_prog["bg_attempts_tc"] >= 6  # every packet, not only SYNs
        secs = {dict(k[1:])["program"]: v for k, v in m.items() if k[0] == "bpfgate_program_run_seconds_total"}
        assert secs["bg_syn_xdp"] > 0


def test_listen_address_in_use(net):
    require("syn")  # the SYN counter (syn.o): atomic fetch instructions, Linux 5.12
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        with M.Exporter() as exp, pytest.raises(BpfgateError) as e:
            exp.serve(f"127.0.0.1:{port}")
        assert "in use" in str(e.value)

        client, server, link = net
        r = subprocess.run([sys.executable, "-m", "bpfgate.cli.main", "metrics", "--dev", link.b.name, "--netns",
                            server.netns, "--listen", f"127.0.0.1:{port}"], capture_output=True, text=True,
                           timeout=scaled(60))
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bpfgate: error: listen on") and "in use" in lines[0], r.stderr
        xdp = server.run(["ip", "-j", "link", "show", "dev", link.b.name], check=True).stdout
        assert "xdp" not in xdp  # failed after attaching: detached on the way out
    finally:
        busy.close()


def test_cli_metrics_serves_and_detaches_on_sigterm(net):
    require("syn")  # the SYN counter (syn.o): atomic fetch instructions, Linux 5.12
    client, server, link = net
    argv = [sys.executable, "-m", "bpfgate.cli.main", "metrics", "--dev", link.b.name, "--netns", server.netns,
            "--listen", "127.0.0.1:0", "--port", "7070", "--json"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = select.select([p.stdout], [], [], WAIT * 3)[0]  # the first line says where it serves
        first = json.loads(p.stdout.readline() or "null") if ready else None
        assert first, p.stderr.read()
        assert first["listen"].startswith("127.0.0.1:")
        for _ in range(4):
            attempt(client, link.b.ip4, 7070)
        deadline = time.monotonic() + WAIT
        while True:
            m = scrape(first["url"])
            if m.get(("bpfgate_syn_total", ("interface", link.b.name))) == 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert m[("bpfgate_syn_total", ("interface", link.b.name))] == 4
        assert m[("bpfgate_connection_attempts_total", ("interface", link.b.name), ("port", "7070"))] == 4
        assert m[("bpfgate_events_lost_total", ("source", "attempts"))] == 0
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=WAIT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "xdp" not in server.run(["ip", "-j", "link", "show", "dev", link.b.name], check=True).stdout
