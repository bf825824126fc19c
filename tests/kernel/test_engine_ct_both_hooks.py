"""Engines with conntrack at both tc-ingress and tc-egress of one device: exactly one program tracks egress
(the egress engine, else the `bg_ct_track` tracker), so per-flow counters equal what crossed the interface,
in either attach order and after either engine detaches; nothing of ours stays after both detach."""

from __future__ import annotations

import os
import sys

import pytest

from bpfgate import attach
from bpfgate.engine import Engine
from bpfgate.policy.model import HookPolicy
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
PORT = 9500
SENT, REPLIES_EACH = 5, 2        # per exchange: 5 datagrams client -> server, 2 replies to each

SERVER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {PORT}))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(64)
    for _ in range(int(data)):
        s.sendto(b"r", peer)
"""

CLIENT = """
import socket, sys
ip, sport, port, n, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", sport))
s.settimeout(3)
for _ in range(n):
    s.sendto(str(each).encode(), (ip, port))
got = 0
while got < n * each:
    s.recv(64)
    got += 1
print(got)
"""


@pytest.fixture
def net(pair, engines):
    client, server, cif, sif = pair
    n = type("Net", (), {})()
    n.client, n.server, n.dev, n.ns, n.ip4, n.cip4 = client, server, sif.name, server.netns, sif.ip4, cif.ip4
    n.attach = lambda hook, **kw: engines(n.dev, hook, HookPolicy(default="allow"), netns_name=n.ns, ct=True, **kw)
    server.spawn([sys.executable, "-c", SERVER]).wait_for_output("ready", 5)
    return n


def exchange(n, eng, sport):
    """One UDP flow from client port `sport`: its (packets_orig, packets_reply) at the server's interface
    (orig is the direction of the first tracked packet)."""
    out = n.client.run([sys.executable, "-c", CLIENT, n.ip4, str(sport), str(PORT), str(SENT), str(REPLIES_EACH)],
                       timeout=scaled(10), check=True)
    assert int(out.stdout) == SENT * REPLIES_EACH     # every datagram arrived: the counts below are exact
    flows = [f for f in eng.conntrack() if f.proto == 17 and sport in (f.sport, f.dport)]
    assert len(flows) == 1
    return flows[0].packets_orig, flows[0].packets_reply


def trackers(n):
    return attach.find(n.dev, "tc-egress", n.ns, owner="engine-ct")


def tc_filters(n, direction):
    return n.server.run(["tc", "filter", "show", "dev", n.dev, direction], check=True).stdout.strip()


def assert_nothing_left(n):
    assert attach.find(n.dev, None, n.ns) == []
    assert tc_filters(n, "ingress") == "" and tc_filters(n, "egress") == ""
    assert not os.path.exists(os.path.join("/sys/fs/bpf/bpfgate/engine", n.ns, n.dev))
    assert Engine.attached(n.ns) == []


def test_ingress_then_egress_then_egress_detached(net):
    n = net
    ing = n.attach("tc-ingress")
    assert len(trackers(n)) == 1
    egress = n.attach("tc-egress")
    assert trackers(n) == []                          # the egress engine tracks egress now
    assert exchange(n, ing, 41001) == (SENT, SENT * REPLIES_EACH)
    egress.detach()
    assert len(trackers(n)) == 1                      # the tracker is back for the ingress engine
    assert "bg_ct_track" in tc_filters(n, "egress")
    assert exchange(n, ing, 41002) == (SENT, SENT * REPLIES_EACH)
    ing.detach()
    assert_nothing_left(n)


def test_egress_then_ingress_no_tracker(net):
    n = net
    egress = n.attach("tc-egress")
    ing = n.attach("tc-ingress")
    assert trackers(n) == []
    assert "bg_ct_track" not in tc_filters(n, "egress")
    assert exchange(n, ing, 41003) == (SENT, SENT * REPLIES_EACH)
    ing.detach()
    assert trackers(n) == []
    assert exchange(n, egress, 41004) == (SENT * REPLIES_EACH, 0)   # only egress is tracked now: replies first
    egress.detach()
    assert_nothing_left(n)


def test_egress_then_ingress_then_egress_detached(net):
    n = net
    egress = n.attach("tc-egress")
    ing = n.attach("tc-ingress")
    assert exchange(n, ing, 41005) == (SENT, SENT * REPLIES_EACH)
    egress.detach()
    assert len(trackers(n)) == 1                      # attached for the ingress engine, recorded as its own
    assert exchange(n, ing, 41006) == (SENT, SENT * REPLIES_EACH)
    ing.detach()
    assert_nothing_left(n)


def test_the_tracker_loads_alone():
    """What an egress engine's detach loads to restore the tracker: the tracker only (verifying the engine's
    own program besides it took most of the time, for nothing)."""
    with Engine.load("tc-ingress", only=("bg_ct_track",)) as tracker:
        assert tracker.obj.loaded_programs() == ["bg_ct_track"]
    with Engine.load("tc-ingress", also=("bg_ct_track",)) as engine:
        assert sorted(engine.obj.loaded_programs()) == ["bg_ct_track", "bg_engine_tc"]


def test_two_ingress_engines_keep_the_restored_tracker_until_the_last_goes(net):
    n = net
    egress = n.attach("tc-egress")
    xdp = n.attach("xdp", mode="generic")
    ing = n.attach("tc-ingress")
    assert trackers(n) == []
    egress.detach()
    assert len(trackers(n)) == 1
    # one flow table; incoming packets pass both ingress engines: XDP (first) counts, tc-ingress only reads
    assert exchange(n, xdp, 41007) == (SENT, SENT * REPLIES_EACH)
    ing.detach()
    assert len(trackers(n)) == 1                      # still needed by the xdp engine
    xdp.detach()
    assert_nothing_left(n)


def test_xdp_and_tc_ingress_count_each_packet_once_in_either_order(net):
    """Both ingress hooks with ct: the XDP engine counts, the tc-ingress engine only reads the state, whichever
    was attached first; when the XDP engine goes, the tc-ingress engine counts again."""
    n = net
    ing = n.attach("tc-ingress")
    xdp = n.attach("xdp", mode="generic")
    assert exchange(n, ing, 41008) == (SENT, SENT * REPLIES_EACH)
    xdp.detach()
    assert exchange(n, ing, 41009) == (SENT, SENT * REPLIES_EACH)
    xdp = n.attach("xdp", mode="generic")
    assert exchange(n, ing, 41010) == (SENT, SENT * REPLIES_EACH)
    xdp.detach()
    ing.detach()
    assert_nothing_left(n)


def test_cli_detach_of_the_xdp_engine_lets_the_tc_ingress_engine_count_again(net):
    """`bpfgate detach --hook xdp` is the engine's own detach: the tc-ingress engine sharing the device's flow
    table counts again (it only read the state while the XDP engine counted)."""
    from clirun import run_cli

    n = net
    ing = n.attach("tc-ingress")
    n.attach("xdp", mode="generic")
    assert exchange(n, ing, 41020) == (SENT, SENT * REPLIES_EACH)
    r = run_cli(["detach", "--netns", n.ns, "--dev", n.dev, "--hook", "xdp"])
    assert r.returncode == 0 and "xdp" in r.stdout, r.stderr
    assert [h for _, h in Engine.attached(n.ns)] == [ing.hook]
    assert exchange(n, ing, 41021) == (SENT, SENT * REPLIES_EACH)   # was: no flow (lookup-only stayed on)
    ing.detach()
    assert_nothing_left(n)
