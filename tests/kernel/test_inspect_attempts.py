"""Connection-attempt log at TC ingress with real TCP connections between two namespaces: events for
exactly the connections made to watched ports (both families, matching the sockets' own addresses and
ports), none for other ports, the port set edited live, nothing left attached."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from bpfgate import doctor
from bpfgate.inspect.attempts import AttemptLog
from bpfgate.inspect.events import EventStream
from bpfgate.kernel import netns
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

WAIT = scaled(10.0)


@pytest.fixture
def net(sandbox):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)
    listeners = [_listen(s, p) for p in (8080, 9090)]
    yield c, s, link
    for sock in listeners:
        sock.close()


def _listen(host, port: int) -> socket.socket:
    with netns.entered(host.netns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(128)
    return s


def connect(host, addr: str, port: int) -> tuple[str, int, bool]:
    """One connection attempt from `host`: (source address, source port, established)."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns.entered(host.netns):
        s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(3.0)
        try:
            s.connect((addr, port))
            ok = True
        except ConnectionRefusedError:
            ok = False
        return s.getsockname()[0], s.getsockname()[1], ok
    finally:
        s.close()


def collect(stream: EventStream, n: int) -> list[dict]:
    out: list[dict] = []
    end = time.monotonic() + WAIT
    while len(out) < n and time.monotonic() < end:
        stream.poll(50)
        out += [stream.describe(r) for r in stream.drain()]
    stream.poll(200)  # grace period: an extra event would show up here
    return out + [stream.describe(r) for r in stream.drain()]


def key(ev: dict) -> tuple:
    return ev["src"], ev["sport"], ev["dst"], ev["dport"]


def test_events_for_exactly_the_watched_connections(net):
    client, server, link = net
    cif, sif = link.a, link.b
    with AttemptLog([8080]) as log, EventStream([log.event_source()]) as stream:
        ifindex = log.attach(sif.name, server.netns)
        expected = set()
        for addr in (sif.ip4, sif.ip4, sif.ip4, sif.ip6, sif.ip6):
            src, sport, ok = connect(client, addr, 8080)
            assert ok
            expected.add((src, sport, addr, 8080))
        for addr in (sif.ip4, sif.ip6, sif.ip4, sif.ip4):
            assert connect(client, addr, 9090)[2]  # established, but not watched
        assert not connect(client, sif.ip4, 7070)[2]  # refused, not watched

        events = collect(stream, len(expected))
        assert {key(e) for e in events} == expected and len(events) == len(expected)
        for e in events:
            assert e["type"] == "conn_attempt" and e["source"] == "attempts"
            assert e["interface"] == sif.name and e["ifindex"] == ifindex
            assert e["family"] == (6 if ":" in e["dst"] else 4)
            assert "SYN" in e["flags"].split("|") and "ACK" not in e["flags"].split("|")
            assert e["src"] in (cif.ip4, cif.ip6)
        assert log.counts() == {(ifindex, 8080): 5}

        # live edit: 9090 watched from now on, 8080 no longer
        log.add_port(9090)
        log.remove_port(8080)
        assert log.ports() == {9090}
        now = {connect(client, sif.ip6, 9090)[:2] + (sif.ip6, 9090), connect(client, sif.ip4, 9090)[:2] + (sif.ip4, 9090)}
        assert connect(client, sif.ip4, 8080)[2]
        events = collect(stream, 2)
        assert {key(e) for e in events} == now and len(events) == 2
        assert log.counts() == {(ifindex, 8080): 5, (ifindex, 9090): 2}
        assert stream.lost == 0 and stream.received == stream.submitted == 7


def test_all_ports_mode(net):
    client, server, link = net
    with AttemptLog([0]) as log, EventStream([log.event_source()]) as stream:
        log.attach(link.b.name, server.netns)
        made = {connect(client, link.b.ip4, p)[1] for p in (8080, 9090, 7070)}
        assert {e["sport"] for e in collect(stream, 3)} == made


def _tc_ingress(host, ifname: str) -> list:
    r = host.run(["tc", "-j", "filter", "show", "dev", ifname, "ingress"], check=True)
    return json.loads(r.stdout or "[]")


def _links_of(prog_id: int) -> list:
    """BPF links (any namespace) running program `prog_id` (bpftool 7.1 does not list TCX in `net show`)."""
    r = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True, timeout=30, check=True)
    return [ln for ln in json.loads(r.stdout or "[]") if ln.get("prog_id") == prog_id]


def test_tcx_and_classic_attach_leave_nothing_behind(net):
    """TCX is the default where the kernel has it (>= 6.6, else attach() takes the classic path); the
    classic clsact path is also exercised directly."""
    client, server, link = net
    sif = link.b
    tcx = doctor.check("tcx").ok
    with AttemptLog([8080]) as log:
        log.attach(sif.name, server.netns)
        prog_id = log.prog.id
        assert len(_links_of(prog_id)) == (1 if tcx else 0)
        assert tcx or any("bg_attempts" in json.dumps(f) for f in _tc_ingress(server, sif.name))
    assert _links_of(prog_id) == [] and _tc_ingress(server, sif.name) == []

    with AttemptLog([8080]) as log, EventStream([log.event_source()]) as stream:
        log.attach(sif.name, server.netns, method="tc")
        assert any("bg_attempts" in json.dumps(f) for f in _tc_ingress(server, sif.name))
        src, sport, _ = connect(client, sif.ip4, 8080)
        assert [key(e) for e in collect(stream, 1)] == [(src, sport, sif.ip4, 8080)]
    assert _tc_ingress(server, sif.name) == []
    qdiscs = server.run(["tc", "qdisc", "show", "dev", sif.name], check=True).stdout
    assert "clsact" not in qdiscs  # we created it, so we removed it
