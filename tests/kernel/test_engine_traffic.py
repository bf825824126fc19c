"""The policy engine on real interfaces with real traffic: match fields, actions, both families, TC ingress
and egress, XDP, conntrack, rate limits, live edits, atomic swap, reopen from another process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bpfgate import attach
from bpfgate.engine import Engine
from bpfgate.errors import NotFound, ObjectError, PolicyError
from bpfgate.kernel.objects import LoadFailedQuietly
from bpfgate.policy.model import HookPolicy, Rule
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
T = 1.5


def hp(rules, default="allow"):
    return HookPolicy.model_validate({"default": default, "rules": rules})


@pytest.fixture
def net(sandbox, engines):
    """client -- server (+ other -- server); engines attached through `net.attach` are detached at the end."""
    client, server, other = sandbox.host("client"), sandbox.host("server"), sandbox.host("other")
    link, link2 = sandbox.link(client, server), sandbox.link(other, server)
    n = type("Net", (), {})()
    n.client, n.server, n.other = client, server, other
    n.dev, n.dev2, n.cdev, n.odev = link.end(server).name, link2.end(server).name, link.end(client).name, \
        link2.end(other).name
    n.ip4, n.ip6 = link.end(server).ip4, link.end(server).ip6
    n.cip4, n.cip6 = link.end(client).ip4, link.end(client).ip6
    n.attach = lambda dev, hook, policy, host=None, **kw: engines(dev, hook, policy,
                                                                 netns_name=(host or server).netns, **kw)
    server.http_server(80)
    server.http_server(8080)
    return n


def get(n, port, v6=False, host=None):
    url = f"http://[{n.ip6}]:{port}/" if v6 else f"http://{n.ip4}:{port}/"
    return (host or n.client).http_get(url, T).ok


def test_drop_port_both_families_counters_and_conntrack(net):
    n = net
    eng = n.attach(n.dev, "tc-ingress", hp([{"name": "web", "protocol": "tcp", "dst_port": 80, "action": "drop"}]))
    assert not get(n, 80) and not get(n, 80, v6=True)
    assert get(n, 8080) and get(n, 8080, v6=True)
    c = eng.counters()
    assert c["web"].packets >= 2 and c["web"].bytes > 0
    assert c["(default)"].packets > 0
    flows = eng.conntrack()
    web = [f for f in flows if f.proto == 6 and f.dport == 8080 and str(f.src) == n.cip4]
    assert web and web[0].replied and web[0].packets_orig >= 3 and web[0].packets_reply >= 2
    att = attach.find(n.dev, "tc-ingress", n.server.netns)
    assert att and att[0].prog_id == eng.prog_id


def test_src_cidr_icmp_and_port_range(net):
    n = net
    n.attach(n.dev, "tc-ingress", hp([
        {"name": "ping4", "src": f"{n.cip4}/32", "protocol": "icmp", "icmp_type": 8, "action": "drop"},
        {"name": "range", "protocol": "tcp", "dst_port": "8000-8099", "src": ["198.18.0.0/15", "fd00::/8"],
         "action": "drop"},
    ]))
    assert not n.client.ping(n.ip4)
    assert n.client.ping(n.ip6)
    assert not get(n, 8080) and not get(n, 8080, v6=True)
    assert get(n, 80) and get(n, 80, v6=True)


@pytest.mark.smoke
def test_default_deny_with_established_replies(net):
    n = net
    n.client.http_server(9000)
    n.attach(n.dev, "tc-ingress", hp([
        {"name": "est", "ct": ["established"]},
        {"name": "alt", "protocol": "tcp", "dst_port": 8080, "ct": "new"},
        {"name": "nd", "protocol": "icmpv6"},     # neighbour discovery, so IPv6 keeps working
    ], default="deny"))
    assert get(n, 8080) and get(n, 8080, v6=True)
    assert not get(n, 80)
    # the server's own outgoing connection: its replies are established (tracked at tc-egress)
    assert n.server.http_get(f"http://{n.cip4}:9000/", T).ok
    assert n.server.http_get(f"http://[{n.cip6}]:9000/", T).ok
    assert not n.client.ping(n.ip4)


def test_tc_egress_drop_by_source_port(net):
    n = net
    eng = n.attach(n.dev, "tc-egress", hp([{"name": "no80", "protocol": "tcp", "src_port": 80, "action": "drop"}]))
    assert not get(n, 80) and not get(n, 80, v6=True)
    assert get(n, 8080)
    assert eng.counters()["no80"].packets >= 2


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_drop(net, mode):
    n = net
    eng = n.attach(n.dev, "xdp", hp([
        {"name": "web6", "dst": f"{n.ip6}/128", "protocol": "tcp", "dst_port": 80, "action": "drop"},
        {"name": "ping", "protocol": "icmp", "action": "drop"},
    ]), mode=mode)
    assert not get(n, 80, v6=True) and get(n, 80)
    assert not n.client.ping(n.ip4) and n.client.ping(n.ip6)
    c = eng.counters()
    assert c["web6"].packets >= 1 and c["ping"].packets >= 1


def test_rate_limit_per_rule(net):
    n = net
    eng = n.attach(n.dev, "tc-ingress", hp([
        {"name": "icmp", "protocol": "icmp",
         "rate_limit": {"rate": 1, "unit": "packets", "burst": 2, "over": "drop"}}]))
    from bpfgate.sandbox import probe
    got = probe.ping(n.client.netns, n.ip4, 0.2, count=10)   # ~2 s: the burst, then about one a second
    assert 2 <= got <= 6
    assert eng.counters()["icmp"].packets == 10


def test_redirect_to_other_interface(net):
    n = net
    # what the server's ingress redirects out of dev2 arrives at `other`: seen by an engine there
    seen = n.attach(n.odev, "tc-ingress", hp([{"name": "udp9999", "protocol": "udp", "dst_port": 9999}]),
                    host=n.other, ct=False)
    n.attach(n.dev, "tc-ingress", hp([{"name": "mirror", "protocol": "udp", "dst_port": 9999,
                                       "redirect": {"interface": n.dev2, "direction": "egress"},
                                       "action": "redirect"}]))
    code = f"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(5): s.sendto(b'x', ('{n.ip4}', 9999))"
    n.client.run([sys.executable, "-c", code], timeout=scaled(10), check=True)
    deadline = time.monotonic() + scaled(3)   # delivery through two veth pairs is asynchronous
    while seen.counters()["udp9999"].packets < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen.counters()["udp9999"].packets == 5


def test_log_events(net):
    n = net
    eng = n.attach(n.dev, "tc-ingress", hp([{"name": "pinglog", "protocol": "icmp", "log": {"rate": 100}}]))
    assert n.client.ping(n.ip4)
    evs = eng.events(timeout=1.0)
    assert any(e.name == "pinglog" and str(e.src) == n.cip4 and e.proto == 1 for e in evs)


def test_live_edit_keeps_program_and_other_counters(net):
    n = net
    eng = n.attach(n.dev, "tc-ingress", hp([{"name": "alt", "protocol": "tcp", "dst_port": 8080}]))
    prog = eng.prog_id
    assert get(n, 8080) and get(n, 80)
    before = eng.counters()["alt"].packets
    eng.add_rule(Rule.model_validate({"name": "web", "protocol": "tcp", "dst_port": 80, "action": "drop"}), 0)
    assert not get(n, 80) and get(n, 8080)
    assert eng.counters()["alt"].packets > before
    eng.delete_rule("web")
    assert get(n, 80)
    assert attach.find(n.dev, "tc-ingress", n.server.netns)[0].prog_id == prog
    with pytest.raises(PolicyError):
        eng.delete_rule("web")
    assert [r.name for r in eng.policy().rules] == ["alt"]


def test_swap_and_reopen_from_another_process(net):
    n = net
    eng = n.attach(n.dev, "tc-ingress", hp([{"name": "alt", "protocol": "tcp", "dst_port": 8080},
                                            {"name": "web", "protocol": "tcp", "dst_port": 80, "action": "drop"}]))
    assert get(n, 8080) and not get(n, 80)
    alt = eng.counters()["alt"].packets
    eng.swap(hp([{"name": "alt", "protocol": "tcp", "dst_port": 8080},
                 {"name": "web", "protocol": "tcp", "dst_port": 80, "action": "pass"}]))
    assert get(n, 80)
    assert eng.counters()["alt"].packets == alt          # an unchanged rule keeps its counter
    # another process opens the engine from pins + saved state and edits it live
    code = ("from bpfgate.engine import Engine\nfrom bpfgate.policy.model import Rule\nimport json,sys\n"
            f"e = Engine.open({n.dev!r}, 'tc-ingress', {n.server.netns!r})\n"
            "e.add_rule(Rule.model_validate({'name': 'alt80', 'protocol': 'tcp', 'dst_port': 8080, 'action': 'drop'}), 0)\n"
            "print(json.dumps({k: v.packets for k, v in e.counters().items()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60), check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["alt"] == alt
    assert not get(n, 8080)
    again = Engine.open(n.dev, "tc-ingress", n.server.netns)
    assert [r.name for r in again.policy().rules] == ["alt80", "alt", "web"]
    again.close()
    assert Engine.attached(n.server.netns) == [(n.dev, eng.hook)]


def test_detach_removes_everything(net):
    n = net
    eng = Engine.attach(n.dev, "tc-ingress", hp([]), netns_name=n.server.netns)
    pdir = os.path.join("/sys/fs/bpf/bpfgate/engine", n.server.netns, n.dev, "tc-ingress")
    assert os.path.exists(os.path.join(pdir, "bg_cls"))
    assert len(attach.find(n.dev, None, n.server.netns)) == 2      # engine + conntrack tracker
    eng.detach()
    assert not os.path.exists(pdir)
    assert attach.find(n.dev, None, n.server.netns) == []
    with pytest.raises(NotFound):
        Engine.open(n.dev, "tc-ingress", n.server.netns)


def test_attach_that_cannot_load_says_why_and_leaves_nothing(net):
    """The object loads without libbpf's log beside the snapshot's pickling; a failure is loaded again to be
    explained (here: a classifier map no kernel allocates), and nothing of the attach stays behind."""
    n = net
    with pytest.raises(ObjectError) as e:
        Engine.attach(n.dev, "tc-ingress", hp([]), netns_name=n.server.netns, prealloc={"bg_cls": 0xFFFFFFFF})
    assert not isinstance(e.value, LoadFailedQuietly)
    assert "failed to load object" in str(e.value), str(e.value)   # libbpf's own line: the log was kept
    assert not os.path.exists(os.path.join("/run/bpfgate/engine", n.server.netns))
    assert not os.path.exists(os.path.join("/sys/fs/bpf/bpfgate/engine", n.server.netns))
    assert attach.find(n.dev, None, n.server.netns) == []
    eng = Engine.attach(n.dev, "tc-ingress", hp([{"name": "no-80", "protocol": "tcp", "dst_port": 80,
                                                  "action": "drop"}]), netns_name=n.server.netns)
    try:   # the next attach works, with its state saved
        assert not get(n, 80) and get(n, 8080)
        with Engine.open(n.dev, "tc-ingress", n.server.netns) as again:
            assert list(again.live.names()) == ["no-80"]
    finally:
        eng.detach()


def test_icmp_error_about_a_tracked_flow_is_related(net):
    n = net
    eng = n.attach(n.cdev, "tc-ingress", hp([{"name": "est", "ct": "established"},
                                             {"name": "rel", "ct": "related"}], default="deny"), host=n.client)
    # UDP to a closed port of the server: its ICMP port unreachable is related to the client's flow
    code = f"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('{n.ip4}', 9))"
    n.client.run([sys.executable, "-c", code], timeout=scaled(10), check=True)
    deadline = time.monotonic() + scaled(3)   # the error is generated in the server's softirq
    while not eng.counters()["rel"].packets and time.monotonic() < deadline:
        time.sleep(0.1)
    assert eng.counters()["rel"].packets == 1


def test_vlan_match(net):
    n = net
    # a VLAN 100 sub-interface on both ends of the client link, addressed from its own 198.18 subnet
    for host, dev, ip in ((n.client, n.cdev, "198.18.250.1/24"), (n.server, n.dev, "198.18.250.2/24")):
        r = host.run(["ip", "link", "add", "link", dev, "name", "v100", "type", "vlan", "id", "100"])
        if r.returncode != 0:
            pytest.skip(f"no VLAN devices in this kernel ({r.stderr!r}); VLAN matching on real traffic is "
                        "covered without them by tests/kernel/test_engine_vlan.py")
        host.run(["ip", "addr", "add", ip, "dev", "v100"], check=True)
        host.run(["ip", "link", "set", "v100", "up"], check=True)
    assert n.client.ping("198.18.250.2", timeout=3)
    eng = n.attach(n.dev, "tc-ingress", hp([{"name": "v100", "vlan": 100, "protocol": "icmp", "action": "drop"}]))
    assert not n.client.ping("198.18.250.2")
    assert n.client.ping(n.ip4)                     # untagged traffic is not VLAN 100
    assert eng.counters()["v100"].packets >= 1


@pytest.mark.smoke
def test_xdp_default_deny_with_established_replies(net):
    n = net
    n.client.http_server(9000)
    n.attach(n.dev, "xdp", hp([{"name": "est", "ct": "established"},
                               {"name": "alt", "protocol": "tcp", "dst_port": 8080}], default="deny"), mode="native")
    assert get(n, 8080) and not get(n, 80)
    assert n.server.http_get(f"http://{n.cip4}:9000/", T).ok    # replies of the server's own connection


def test_two_ingress_engines_share_flows_and_tracker(net):
    n = net
    xdp = n.attach(n.dev, "xdp", hp([{"name": "est", "ct": "established"}, {"name": "web", "protocol": "tcp",
                                                                            "dst_port": 8080}]), mode="generic")
    tc = n.attach(n.dev, "tc-ingress", hp([{"name": "est", "ct": "established"}, {"name": "web", "protocol": "tcp",
                                                                                 "dst_port": 8080}]))
    assert get(n, 8080)
    flows = {(f.sport, f.dport) for f in xdp.conntrack()}
    assert flows and flows == {(f.sport, f.dport) for f in tc.conntrack()}     # one table per device
    tc.detach()
    assert [a.owner for a in attach.find(n.dev, "tc-egress", n.server.netns)] == ["engine-ct"]   # still needed
    n.client.http_server(9000)
    assert n.server.http_get(f"http://{n.cip4}:9000/", T).ok
    assert xdp.counters()["est"].packets > 0
