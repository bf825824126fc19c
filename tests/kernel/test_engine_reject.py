"""The reject action with real traffic: a client's connect() / send() fails at once with the error a REJECT
gives (ECONNREFUSED for a TCP RST or a port unreachable, EHOSTUNREACH / EACCES for admin-prohibited),
where a drop would leave it waiting; IPv4 and IPv6; at tc-ingress (the reply leaves the interface) and
tc-egress (the reply goes up to the local sender); replies capped by the rule's rate."""

from __future__ import annotations

import json
import sys
import time

import pytest

from bpfgate import policyctl
from bpfgate.policy.model import Policy
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

# connect (tcp) or send + recv (udp) once; prints {"errno": NAME or null, "ok": bool}. The timeout is only a
# bound: a reject answers at once, a drop would end in "timeout".
PROBE = r"""
import errno, json, socket, sys
proto, fam, addr, port, timeout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
af = socket.AF_INET6 if fam == "6" else socket.AF_INET
s = socket.socket(af, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    s.connect((addr, port))
    if proto == "udp":
        s.send(b"hello")
        s.recv(100)
    out = {"errno": None, "ok": True}
except socket.timeout:
    out = {"errno": "timeout", "ok": False}
except OSError as e:
    out = {"errno": errno.errorcode.get(e.errno, str(e.errno)), "ok": False}
print(json.dumps(out))
"""

# a burst of UDP datagrams from one unconnected socket with IP(V6)_RECVERR: prints how many ICMP errors came
# back and how long the burst took
BURST = r"""
import json, select, socket, sys, time
fam, addr, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
af = socket.AF_INET6 if fam == "6" else socket.AF_INET
s = socket.socket(af, socket.SOCK_DGRAM)
if fam == "6":
    s.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25), 1)   # linux/in6.h
else:
    s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11), 1)       # linux/in.h
t0 = time.monotonic()
for _ in range(n):
    try:
        s.sendto(b"x", (addr, port))
    except OSError:
        pass
elapsed = time.monotonic() - t0
errors, end = 0, time.monotonic() + 1.0
while time.monotonic() < end:
    try:
        s.recvmsg(100, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        errors += 1
    except BlockingIOError:
        select.select([], [], [], 0.02)
print(json.dumps({"errors": errors, "elapsed": elapsed}))
"""

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(100)
    s.sendto(data, peer)
"""


@pytest.fixture
def net(sandbox, policies_removed):
    """client -- server: HTTP on the server's 80 and the client's 8080, a UDP echo on the server's 5353."""
    client, server = sandbox.host("client"), sandbox.host("server")
    link = sandbox.link(client, server)
    server.http_server(80)
    client.http_server(8080)
    echo = server.spawn([sys.executable, "-c", UDP_ECHO, "5353"])
    n = type("Net", (), {})()
    n.client, n.server, n.link = client, server, link
    n.dev, n.ns = link.end(server).name, server.netns
    n.ip4, n.ip6 = link.end(server).ip4, link.end(server).ip6
    n.cip4, n.cip6 = link.end(client).ip4, link.end(client).ip6
    deadline = time.monotonic() + scaled(10.0)   # the echo's Python starts in seconds under emulation
    while not udp_answered(n, n.ip4):
        assert echo.alive and time.monotonic() < deadline, f"UDP echo not answering: {echo.output()[-500:]}"
        time.sleep(0.05)
    policies_removed(n.ns)
    return n


def probe(host, proto, addr, port, timeout=3.0):
    fam = "6" if ":" in addr else "4"
    r = host.run([sys.executable, "-c", PROBE, proto, fam, addr, str(port), str(timeout)], timeout=timeout + 20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["errno"]


def apply(n, rules, hook="tc-ingress"):
    policyctl.apply(Policy.model_validate({"interfaces": [n.dev], "hooks": {hook: {"rules": rules}}}), netns=n.ns)


def counters(n):
    return {r.name: r.packets for r in policyctl.rules(n.dev, netns=n.ns)}


def udp_answered(n, addr):
    return probe(n.client, "udp", addr, 5353) is None


@pytest.mark.smoke
def test_tcp_reject_is_a_reset_both_families(net):
    n = net
    assert probe(n.client, "tcp", n.ip4, 80) is None and probe(n.client, "tcp", n.ip6, 80) is None
    apply(n, [{"name": "web", "protocol": "tcp", "dst_port": 80, "action": "reject", "comment": "closed"}])
    assert probe(n.client, "tcp", n.ip4, 80) == "ECONNREFUSED"
    assert probe(n.client, "tcp", n.ip6, 80) == "ECONNREFUSED"
    assert counters(n)["web"] >= 2
    # a drop instead: the same connect is left waiting (what reject saves the client from)
    apply(n, [{"name": "web", "protocol": "tcp", "dst_port": 80, "action": "drop"}])
    assert probe(n.client, "tcp", n.ip4, 80, timeout=1.0) == "timeout"


def test_udp_reject_port_unreachable_and_admin_prohibited(net):
    n = net
    assert udp_answered(n, n.ip4) and udp_answered(n, n.ip6)
    apply(n, [{"name": "dns", "protocol": "udp", "dst_port": 5353, "action": "reject"}])
    assert probe(n.client, "udp", n.ip4, 5353) == "ECONNREFUSED"
    assert probe(n.client, "udp", n.ip6, 5353) == "ECONNREFUSED"
    apply(n, [{"name": "dns", "protocol": "udp", "dst_port": 5353, "action": {"reject": {"with": "admin-prohibited"}}}])
    assert probe(n.client, "udp", n.ip4, 5353) == "EHOSTUNREACH"   # ICMP 3/13: "communication administratively
    assert probe(n.client, "udp", n.ip6, 5353) == "EACCES"         # prohibited"; ICMPv6 1/1 is EACCES in Linux
    # other traffic is untouched
    assert probe(n.client, "tcp", n.ip4, 80) is None


def test_egress_reject_answers_the_local_sender(net):
    n = net
    assert probe(n.server, "tcp", n.cip4, 8080) is None
    apply(n, [{"name": "no-out", "protocol": "tcp", "dst_port": 8080, "action": "reject"},
              {"name": "no-out-udp", "protocol": "udp", "dst_port": 9999, "action": "reject"}], hook="tc-egress")
    assert probe(n.server, "tcp", n.cip4, 8080) == "ECONNREFUSED"
    assert probe(n.server, "tcp", n.cip6, 8080) == "ECONNREFUSED"
    assert probe(n.server, "udp", n.cip6, 9999) == "ECONNREFUSED"
    assert probe(n.client, "tcp", n.ip4, 80) is None   # incoming connections and their replies still work


def test_replies_are_capped_by_the_rule_rate(net):
    n = net
    rate, sent = 2, 200
    apply(n, [{"name": "dns", "protocol": "udp", "dst_port": 5353, "action": "reject", "reject": {"rate": rate}}])
    for addr in (n.ip4, n.ip6):
        fam = "6" if ":" in addr else "4"
        r = n.client.run([sys.executable, "-c", BURST, fam, addr, "5353", str(sent)], timeout=30)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        # the bucket holds `rate` replies and refills at `rate` per second: never one reply per packet
        assert 1 <= got["errors"] <= rate + rate * got["elapsed"] + 1, got
    assert counters(n)["dns"] >= sent   # the packets matched (dropped), answered or not


def test_reject_is_refused_at_xdp_and_with_mark(net):
    n = net
    from bpfgate.errors import PolicyError

    with pytest.raises(PolicyError, match="reject is not supported at xdp"):
        apply(n, [{"name": "x", "protocol": "tcp", "action": "reject"}], hook="xdp")
    with pytest.raises(PolicyError, match="mark on a rejected packet"):
        apply(n, [{"name": "x", "protocol": "tcp", "action": "reject", "mark": 1}])
    assert policyctl.running(n.ns) == {}
