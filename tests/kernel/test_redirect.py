"""Redirect rules of the policy engine on real traffic: the target interfaces are held in a devmap
(bg_redirect_devs) the programs redirect through, a target changes live (the program stays), and a target
that disappears is counted and its packets passed or dropped as the rule says: never redirected into
nothing. XDP redirects through the same devmap (bpf_redirect_map)."""

from __future__ import annotations

import sys
import time
from contextlib import closing

import pytest

from bpfgate.inspect.metrics import Exporter
from bpfgate.inspect.rules import RuleCollector
from bpfgate.policy.model import HookPolicy

pytestmark = pytest.mark.kernel
PORT = 9999


def hp(rules):
    return HookPolicy.model_validate({"default": "allow", "rules": rules})


def redirect_to(dev, on_gone="pass"):
    return hp([{"name": "out", "protocol": "udp", "dst_port": PORT, "action": "redirect",
                "redirect": {"interface": dev, "direction": "egress", "on_gone": on_gone}}])


@pytest.fixture
def net(sandbox, engines):
    """client -> server, which redirects UDP to PORT out of its link to `a` or to `b`; engines at a's and b's
    XDP count what arrives (an XDP program on a veth also lets it receive redirected XDP frames)."""
    client, server, a, b = (sandbox.host(n) for n in ("client", "server", "a", "b"))
    n = type("Net", (), {})()
    n.client, n.server = client, server
    front, la, lb = sandbox.link(client, server), sandbox.link(server, a), sandbox.link(server, b)
    n.dev, n.to_a, n.to_b = front.end(server).name, la.end(server).name, lb.end(server).name
    n.ip4 = front.end(server).ip4
    n.seen = {h.name: engines(link.end(h).name, "xdp", hp([{"name": "udp", "protocol": "udp",
                                                                    "dst_port": PORT}]), netns_name=h.netns)
              for h, link in ((a, la), (b, lb))}
    n.attach = lambda hook, policy, **kw: engines(n.dev, hook, policy, netns_name=server.netns, **kw)
    return n


def send(n, count=5):
    code = (f"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range({count}): s.sendto(b'x', ('{n.ip4}', {PORT}))")
    n.client.run([sys.executable, "-c", code], timeout=10, check=True)


def arrived(n, host, want):
    for _ in range(30):   # through two veth pairs: asynchronous, up to 3 s
        got = n.seen[host].counters()["udp"].packets
        if got >= want:
            return got
        time.sleep(0.1)
    return n.seen[host].counters()["udp"].packets


def wait_counted(eng, key, want):
    for _ in range(30):
        if eng.redirect_stats()[key] >= want:
            break
        time.sleep(0.1)
    return eng.redirect_stats()[key]


@pytest.mark.parametrize("hook", ["tc-ingress", "xdp"])
def test_live_target_change_and_a_target_that_disappears(net, hook):
    n = net
    eng = n.attach(hook, redirect_to(n.to_a))
    prog = eng.prog_id
    send(n)
    assert arrived(n, "a", 5) == 5 and arrived(n, "b", 0) == 0
    eng.swap(redirect_to(n.to_b, on_gone="drop"))   # live: the same program, the new target
    assert eng.prog_id == prog
    send(n)
    assert arrived(n, "b", 5) == 5 and arrived(n, "a", 5) == 5
    n.server.ipr.link("del", index=n.server.ifindex(n.to_b))   # the target goes away
    send(n)
    assert wait_counted(eng, "gone_dropped", 5) == 5
    assert eng.counters()["out"].packets == 10   # since the swap (a changed action starts its counters afresh)
    eng.swap(redirect_to(n.to_a))
    n.server.ipr.link("del", index=n.server.ifindex(n.to_a))
    send(n)
    assert wait_counted(eng, "gone_passed", 5) == 5
    with closing(RuleCollector(n.server.netns)) as rc, Exporter() as exp:   # visible in `bpfgate metrics`
        exp.add(rc)
        text = exp.render()
    assert f'bpfgate_redirect_target_gone_total{{fallback="passed",hook="{hook}",interface="{n.dev}"}} 5.0' in text
