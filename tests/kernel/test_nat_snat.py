"""SNAT with real TCP sessions: inside hosts reach a server that has no route back to them only through
the translation; the server sees the NAT address; a source port another flow holds is never reused (another
one is picked, counted), and a range with no free port is counted as exhausted (and the SYN dropped), never
a silent reset."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from bpfgate import nat
from natnet import nat_metrics  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel

PEER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 7000)); s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"{peer[0].removeprefix('::ffff:')} {peer[1]}".encode()); c.close()
"""


@pytest.fixture
def inside(sandbox):
    """c1, c2 -- router -- server; the server routes only its own link (no way back but through SNAT)."""
    c1, c2, router, server = sandbox.host("c1"), sandbox.host("c2"), sandbox.router(), sandbox.host("server")
    l1, l2, out = sandbox.link(c1, router), sandbox.link(c2, router), sandbox.link(router, server)
    c1.default_route(l1)
    c2.default_route(l2)
    proc = server.spawn([sys.executable, "-c", PEER])
    deadline = time.monotonic() + 10
    while "ready" not in proc.output():
        assert proc.alive and time.monotonic() < deadline, proc.output()
        time.sleep(0.02)
    ro = out.end(router)
    gw = nat.Gateway.open(ro.name, router.netns)
    yield c1, c2, l1, l2, ro, out.end(server), gw
    gw.detach()


def _peer(host, family: int, dst: str, sport: int) -> tuple[str, int] | None:
    """What the server saw as our address and port, or None when the connection failed."""
    with host.entered():
        s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
        s.settimeout(1.5)
        s.connect((dst, 7000))
        addr, port = s.recv(200).decode().split()
        return addr, int(port)
    except OSError:
        return None
    finally:
        s.close()


@pytest.mark.parametrize("family", [4, 6])
def test_snat_keeps_the_port_and_picks_another_on_collision(inside, family):
    c1, c2, l1, l2, ro, so, gw = inside
    dst = so.addr(family)
    assert _peer(c1, family, dst, 40000) is None   # the server has no route back
    pfx = 24 if family == 4 else 64
    gw.add_rule(nat.snat("in1", f"{l1.end(c1).addr(family)}/{pfx}", ro.addr(family)))
    gw.add_rule(nat.snat("in2", f"{l2.end(c2).addr(family)}/{pfx}", ro.addr(family)))
    assert _peer(c1, family, dst, 40000) == (ro.addr(family), 40000)   # translated, port kept
    # c2 from the same port to the same server while c1's flow is alive: another port
    second = _peer(c2, family, dst, 40000)
    assert second is not None and second[0] == ro.addr(family) and second[1] != 40000
    st = gw.stats()
    assert st["port_collision"] >= 1 and st["port_exhausted"] == 0 and st["flows"] == 2
    assert sorted(f["to_port"] for f in gw.flows()) == sorted([40000, second[1]])


def test_snat_port_exhaustion_is_counted(inside):
    c1, c2, l1, l2, ro, so, gw = inside
    gw.add_rule(nat.snat("all", "198.18.0.0/15", ro.ip4, ports="40000-40000"))
    assert _peer(c1, 4, so.ip4, 40000) == (ro.ip4, 40000)
    assert _peer(c2, 4, so.ip4, 40001) is None   # the one port is taken: the SYN is dropped, counted
    st = gw.stats()
    assert st["port_exhausted"] >= 1 and st["port_collision"] >= 1
    m, dev = nat_metrics(gw.netns), (("interface", ro.name),)   # what `bpfgate metrics` serves
    assert m[("bpfgate_nat_snat_port_exhausted_total", dev)] == st["port_exhausted"]
    assert m[("bpfgate_nat_snat_port_collisions_total", dev)] == st["port_collision"]
    assert m[("bpfgate_nat_flows_total", dev)] == st["flows"] == 1
    assert m[("bpfgate_nat_translations_total", (("direction", "egress"), *dev))] >= 2   # SYN, ACK, ...
    assert m[("bpfgate_nat_table_entries", dev)] == 2   # the flow's original and translated entries


@pytest.mark.parametrize("family", [4, 6])
def test_snat_icmp_error_reaches_the_inside_host(inside, family):
    """The server's port unreachable quotes the translated datagram (NAT address:port -> server): the SNAT
    translates it back (outer destination, quoted source, both checksums) and the inside socket gets it."""
    c1, c2, l1, l2, ro, so, gw = inside
    pfx = 24 if family == 4 else 64
    gw.add_rule(nat.snat("in1", f"{l1.end(c1).addr(family)}/{pfx}", ro.addr(family), ports="30000-30099"))
    with c1.entered():
        s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s.settimeout(3)
        s.connect((so.addr(family), 7999))   # nothing listens there
        s.send(b"x")
        with pytest.raises(ConnectionRefusedError):
            s.recv(10)
    finally:
        s.close()
    st = gw.stats()
    assert st["icmp_xlate"] == 1 and st["rewrite_fail"] == 0
    assert [30000 <= f["to_port"] <= 30099 for f in gw.flows()] == [True]
