"""SNAT with real TCP sessions: inside hosts reach a server that has no route back to them only through
the translation; the server sees the NAT address; a source port another flow holds is never reused (another
one is picked, counted), and a range with no free port is counted as exhausted (and the SYN dropped), never
a silent reset. A flow that ended (RST, FIN each way) gives its port back after the close timeout."""

from __future__ import annotations

import socket
import sys
import time

import pytest

from bpfgate import nat
from natnet import nat_metrics  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel

# port 7000: tells the peer its address and port, and closes first; port 7002: the same, then waits for the
# peer to close first (the server keeps no TIME_WAIT of the tuple: the next flow on the port finds none)
PEER = """
import socket, sys, threading
def serve(port, close_first):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port)); s.listen(16)
    while True:
        c, peer = s.accept()
        c.sendall(f"{peer[0].removeprefix('::ffff:')} {peer[1]}".encode())
        if not close_first:
            c.settimeout(30); c.recv(1)
        c.close()
threading.Thread(target=serve, args=(7002, False), daemon=True).start()
print("ready", flush=True)
serve(7000, True)
"""


@pytest.fixture
def inside(sandbox, request):
    """c1, c2 -- router -- server; the server routes only its own link (no way back but through SNAT).
    Indirect parameter: Gateway.open's keyword arguments."""
    c1, c2, router, server = sandbox.host("c1"), sandbox.host("c2"), sandbox.router(), sandbox.host("server")
    l1, l2, out = sandbox.link(c1, router), sandbox.link(c2, router), sandbox.link(router, server)
    c1.default_route(l1)
    c2.default_route(l2)
    server.spawn([sys.executable, "-c", PEER]).wait_for_output("ready")
    ro = out.end(router)
    gw = nat.Gateway.open(ro.name, router.netns, **getattr(request, "param", {}))
    yield c1, c2, l1, l2, ro, out.end(server), gw
    gw.detach()


def _peer(host, family: int, dst: str, sport: int, port: int = 7000) -> tuple[str, int] | None:
    """What the server saw as our address and port, or None when the connection failed."""
    with host.entered():
        s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
        s.settimeout(1.5)
        s.connect((dst, port))
        addr, seen_port = s.recv(200).decode().split()
        return addr, int(seen_port)
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


CLOSE = 3.0   # the close timeout of the test's NAT: a connect attempt right after a flow ended (its SYN
# retransmitted after 1 s, given up at 1.5 s) falls within it, even under emulation


def _attempt(host, dst: str, port: int, sport: int) -> str:
    """connected | refused (it reached the server, translated) | timeout (its SYNs were dropped)."""
    with host.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
        s.settimeout(1.5)
        s.connect((dst, port))
        return "connected"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "timeout"
    finally:
        s.close()


@pytest.mark.parametrize("inside", [{"closed_timeout": CLOSE}], indirect=True)
def test_a_tcp_flow_that_ended_frees_its_snat_port_after_the_close_timeout(inside):
    """One port to give, so a second flow to the same server port collides with the first: an open
    connection holds it past the close timeout; a FIN each way or a RST ends the flow, and the port goes to
    the next flow once the close timeout passed, not after the established timeout (600 s)."""
    c1, c2, l1, l2, ro, so, gw = inside
    gw.add_rule(nat.snat("all", "198.18.0.0/15", ro.ip4, ports="40000-40000"))
    with c1.entered():
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        held.settimeout(1.5)
        held.connect((so.ip4, 7002))   # the server answers, then waits for our FIN
        assert held.recv(200).decode().split() == [ro.ip4, "40000"]
        time.sleep(CLOSE + 0.5)
        assert _attempt(c2, so.ip4, 7002, 40001) == "timeout"   # still the open flow's port
    finally:
        held.close()   # our FIN, then the server's: one each way
    time.sleep(CLOSE + 0.5)
    assert _peer(c2, 4, so.ip4, 40001, port=7002) == (ro.ip4, 40000)
    time.sleep(CLOSE + 0.5)
    assert _attempt(c1, so.ip4, 7001, 40003) == "refused"   # nobody listens: the server's RST ends the flow
    assert _attempt(c2, so.ip4, 7001, 40002) == "timeout"   # within the close timeout the port is taken
    time.sleep(CLOSE + 0.5)
    assert _attempt(c2, so.ip4, 7001, 40002) == "refused"   # translated: the port was free again
    assert gw.stats()["port_exhausted"] >= 2


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
