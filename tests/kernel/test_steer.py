"""Egress steering on real traffic, in the MetalLB topology of bpfgate.sandbox.scenes (replies of a service
reached through a secondary network follow the default route out of the primary one, and die there).

    client --- router ==(secondary)== sec0 [server, VIP on lo] pri0 ==(primary)== gw --- upstream

The router reaches the service address (VIP, on the server's lo) through the server's secondary interface;
the server's default route leaves by its primary interface to a gateway that knows no route back to the
client. Without steering the client's TCP connection to the VIP fails; with it, it works. The server's own
connections (to `upstream`, behind the gateway) follow the default route throughout.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time

import pytest

from bpfgate import attach
from bpfgate.sandbox import Host
from bpfgate.sandbox.scenes import METALLB_PORT, METALLB_VIP, metallb
from bpfgate.inspect.metrics import Exporter
from bpfgate.steer import SteerCollector, Steering, pin_dir, rules
from tests.kernel.clirun import run_cli

pytestmark = pytest.mark.kernel

VIP, PORT = METALLB_VIP, METALLB_PORT


@pytest.fixture
def topo(sandbox):
    t = metallb(sandbox)
    yield t
    attach.detach_matching(netns_name=t.server.netns)   # whatever a failing test left attached


def _cli(args: list[str]) -> dict:
    r = run_cli(args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if "--json" in args else {}


def _filters(host: Host, dev: str, direction: str) -> str:
    return host.run(["tc", "filter", "show", "dev", dev, direction], check=True).stdout


@pytest.mark.smoke
def test_steering_fixes_the_return_path(topo):
    """The smoke set's steering test (other kernels, under emulation): the Python API only, one family."""
    ns = topo.server.netns
    assert not topo.reaches_vip(4, timeout=1.5), "the topology must fail without steering"
    with Steering.attach(["pri0", "sec0"], ns, method="tc") as s:
        s.add(rules.make(VIP[4], "sec0", topo.router_on_sec[4], "tcp", PORT))
        assert topo.reaches_vip(4, timeout=5), "steered replies must reach the client"
        assert s.stats()["steered"] > 0
    attach.detach_matching(netns_name=ns)
    assert not os.path.exists(pin_dir(ns))


@pytest.mark.parametrize("family", [4, 6])
def test_explicit_rule_fixes_the_return_path_live(topo, family):
    ns = topo.server.netns
    assert not topo.reaches_vip(family, timeout=1.5), "the topology must fail without steering"
    _cli(["steer", "attach", "pri0", "sec0", "--method", "tc", "--netns", ns])
    shown = _filters(topo.server, "pri0", "egress")
    assert "bg_steer_egress" in shown and "direct-action" in shown
    added = _cli(["steer", "add", "--from", VIP[family], "--dev", "sec0", "--via", topo.router_on_sec[family],
                  "--proto", "tcp", "--port", str(PORT), "--netns", ns, "--json"])
    assert topo.reaches_vip(family, timeout=5), "steered replies must reach the client"
    listed = _cli(["steer", "list", "--netns", ns, "--json"])
    (rule,) = listed["rules"]
    assert rule["id"] == added["id"] and rule["dev"] == "sec0" and rule["steered"] > 0
    assert listed["stats"]["steered"] > 0
    assert topo.server_reaches_upstream(family), "the server's own connections follow the default route"
    _cli(["steer", "del", "--from", VIP[family], "--proto", "tcp", "--port", str(PORT), "--netns", ns])
    assert not topo.reaches_vip(family, timeout=1.5), "deleting the rule takes effect at once"
    _cli(["detach", "--netns", ns])
    assert "bg_steer" not in _filters(topo.server, "pri0", "egress") + _filters(topo.server, "sec0", "ingress")
    assert not os.path.exists(pin_dir(ns))


def _settled(s: Steering, quiet: float = 0.5, limit: float = 10) -> dict:
    """The counters once they stopped moving for `quiet` seconds (a connection's close is still on its way
    when the client returns)."""
    st, since, deadline = s.stats(), time.monotonic(), time.monotonic() + limit
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = s.stats()
        if now != st:
            st, since = now, time.monotonic()
    return st


@pytest.mark.parametrize("family", [4, 6])
def test_symmetric_return_without_per_address_config(topo, family):
    ns = topo.server.netns
    with Steering.attach(["pri0", "sec0"], ns, symmetric=["sec0"]) as s:
        assert topo.reaches_vip(family, timeout=5)
        st = _settled(s)   # the connection's last packets (its close) are counted too
        assert st["returned"] > 0 and st["tracked"] > 0 and st["steered"] == 0
        returned = st["returned"]
        with Exporter() as exp:   # `bpfgate metrics` shows the same counters
            exp.add(SteerCollector(ns))
            assert f'bpfgate_steer_packets_total{{outcome="returned"}} {float(returned)}' in exp.render()
        # the server's own connection leaves by the default route (the router knows no way to upstream)
        assert topo.server_reaches_upstream(family)
        assert s.stats()["returned"] == returned
        s.set_symmetric("sec0", False)   # live: replies follow routing again
        assert not topo.reaches_vip(family, timeout=1.5)
        s.set_symmetric("sec0", True)
        assert topo.reaches_vip(family, timeout=5)
    attach.detach_matching(netns_name=ns)
    assert not os.path.exists(pin_dir(ns))


def test_failures_are_counted_and_the_packet_passes(topo, sandbox):
    """A next hop off the link, an IPv6 next hop nobody answers, an interface that went away: counted per
    reason, and the traffic they match (the server's own connections) still leaves by its normal route."""
    ns, server = topo.server.netns, topo.server
    spare = sandbox.link(server, sandbox.host("spare"), ifnames=("gone0", None))
    with Steering.attach(["pri0", "sec0", "gone0"], ns) as s:
        # without forwarding on the target the kernel answers no route lookup: sent unchecked, counted
        s.add(rules.make(topo.server_pri[4], "sec0", "198.18.99.1"))
        assert not topo.server_reaches_upstream(4, timeout=1.5)
        assert s.stats()["unverified"] > 0
        # with it, each failure is told apart and the packet passes unchanged
        server.sysctl("net.ipv4.conf.sec0.forwarding", 1)
        server.sysctl("net.ipv6.conf.sec0.forwarding", 1)
        sec_net6 = ipaddress.ip_network(f"{topo.router_on_sec[6]}/64", strict=False)
        s.add(rules.make(topo.server_pri[6], "sec0", str(sec_net6.network_address + 0x99)))  # nobody answers
        for fam in (4, 6):
            assert topo.server_reaches_upstream(fam, timeout=5), f"IPv{fam}: failures must pass the packet"
        st = s.stats()
        assert st["off_link"] > 0 and st["no_neigh"] > 0 and st["resolving"] >= 1
        assert all(r.failed > 0 for r in s.rules())
        s.clear()
        s.add(rules.make(topo.server_pri[4], "gone0", spare.end(server).peer.ip4))
        gone = server.ifindex("gone0")
        assert s.maps["steer_devs"].lookup(gone) == gone   # the namespace's device, as the kernel resolved it
        server.ipr.link("del", index=gone)
        assert s.maps["steer_devs"].lookup(gone) is None   # the kernel dropped it with the device
        assert topo.server_reaches_upstream(4)
        assert s.stats()["if_gone"] > 0
        (r,) = s.rules()
        assert not r.present and r.failed > 0
    attach.detach_matching(netns_name=ns)


def test_bad_input_changes_nothing(topo):
    ns = topo.server.netns
    r = run_cli(["steer", "add", "--from", VIP[4], "--dev", "sec0", "--via", "198.18.2.1", "--netns", ns])
    assert r.returncode != 0 and "steering is not attached" in r.stderr and "Traceback" not in r.stderr
    _cli(["steer", "attach", "pri0", "sec0", "--netns", ns])
    for args, words in ((["--from", "not-an-address", "--dev", "sec0", "--via", "198.18.2.1"], "not an address"),
                        (["--from", VIP[4], "--dev", "nosuch0", "--via", "198.18.2.1"], "no interface"),
                        (["--from", VIP[4], "--dev", "lo", "--via", "198.18.2.1"], "not an Ethernet device"),
                        (["--from", VIP[4], "--dev", "sec0", "--via", "224.0.0.1"], "not a unicast")):
        r = run_cli(["steer", "add", *args, "--netns", ns])
        assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _cli(["steer", "list", "--netns", ns, "--json"])["rules"] == []
    r = run_cli(["steer", "del", "--from", VIP[4], "--netns", ns])
    assert r.returncode != 0 and "no rule" in r.stderr
    _cli(["detach", "--netns", ns])


def test_policy_file_steer_section(topo, tmp_path):
    """`bpfgate apply` of a file with a steer section: the namespace's steering is made to match it, and a
    second apply of the same file changes nothing."""
    ns = topo.server.netns
    f = tmp_path / "steer.yaml"
    f.write_text(f"""
steer:
  interfaces: [pri0, sec0]
  symmetric: [sec0]
  rules:
    - {{from: "{VIP[4]}", protocol: tcp, port: {PORT}, dev: sec0, via: "{topo.router_on_sec[4]}"}}
""")
    dry = _cli(["apply", str(f), "--dry-run", "--netns", ns, "--json"])
    assert dry["steer"] and not os.path.exists(pin_dir(ns)), "a dry run changes nothing"
    done = _cli(["apply", str(f), "--netns", ns, "--json"])
    assert done["applied"] and "steer: attach sec0" in done["steer"]
    assert topo.reaches_vip(4, timeout=5) and topo.reaches_vip(6, timeout=5)
    assert _cli(["apply", str(f), "--netns", ns, "--json"])["steer"] == []
    exported = tmp_path / "export.yaml"   # the running steering as a steer section
    _cli(["policy", "export", "--netns", ns, "-o", str(exported)])
    assert _cli(["apply", str(exported), "--netns", ns, "--json"])["steer"] == []
    f.write_text("steer:\n  interfaces: [pri0, sec0]\n")   # no rule, no symmetric return: replies follow routing
    changed = _cli(["apply", str(f), "--netns", ns, "--json"])["steer"]
    assert any("delete rule" in c for c in changed) and any("symmetric return off" in c for c in changed)
    assert not topo.reaches_vip(4, timeout=1.5)
    restored = _cli(["apply", str(exported), "--netns", ns, "--json"])["steer"]   # export -> apply round trip
    assert any("add rule" in c for c in restored) and any("symmetric return on on sec0" in c for c in restored)
    assert topo.reaches_vip(4, timeout=5)
    _cli(["detach", "--netns", ns])
    assert not os.path.exists(pin_dir(ns))
