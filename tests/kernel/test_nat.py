"""DNAT/SNAT (bpf/nat.bpf.c, bpfgate.nat) with real sessions between namespaces the tests make: the session
completes through the translation, the receiving stacks count no checksum error, replies come back from
the address the client spoke to, and `bpfgate detach` / Gateway.detach leave nothing behind."""

from __future__ import annotations

import json
import os
import socket

import pytest

from bpfgate import attach, nat
from bpfgate.errors import NotFound, PolicyError
from clirun import run_cli  # noqa: E402  (tests/kernel helper)
from natnet import VIP4, VIP6, csum_errors  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel


@pytest.fixture
def served(pair):
    """client -- server, an HTTP server on the server's port 8080, the VIPs routed to the server."""
    client, server, ci, si = pair
    client.route(f"{VIP4}/32", si)
    client.route(f"{VIP6}/128", si)
    server.http_server(8080)
    gws = []

    def gateway():
        gw = nat.Gateway.open(si.name, server.netns)
        gws.append(gw)
        return gw

    yield client, server, ci, si, gateway
    for gw in gws:
        if nat.Gateway.exists(si.name, server.netns):
            gw.detach()


@pytest.mark.smoke
def test_tcp_ipv4_dnat_http_through_the_translation(served):
    client, server, ci, si, gateway = served
    before = (csum_errors(server), csum_errors(client))
    assert client.http_get(f"http://{VIP4}:80/").error   # nothing answers for the VIP yet
    gw = gateway()
    gw.add_rule(nat.dnat("web", "tcp", f"{VIP4}:80", f"{si.ip4}:8080"))
    r = client.http_get(f"http://{VIP4}:80/")
    assert r.status == 200 and b"sandbox server" in r.body
    flows = gw.flows()
    assert [(f["dst"], f["dport"], f["to"], f["to_port"]) for f in flows] == [(VIP4, 80, si.ip4, 8080)]
    assert flows[0]["packets"][0] > 2 and flows[0]["packets"][1] > 2   # both directions through the flow
    st = gw.stats()
    assert st["flows"] == 1 and st["xlate_in"] >= 3 and st["xlate_out"] >= 3 and st["rewrite_fail"] == 0
    assert (csum_errors(server), csum_errors(client)) == before   # no checksum error anywhere
    gw.delete_rule("web")
    assert client.http_get(f"http://{VIP4}:80/", timeout=1).error


def test_tcp_ipv6_dnat_and_stateless(served):
    client, server, ci, si, gateway = served
    gw = gateway()
    gw.add_rule(nat.dnat("web6", "tcp", f"[{VIP6}]:80", f"[{si.ip6}]:8080"))
    gw.add_rule(nat.dnat("flat", "tcp", f"{VIP4}:81", f"{si.ip4}:8080", stateless=True))
    assert client.http_get(f"http://[{VIP6}]:80/").status == 200
    assert client.http_get(f"http://{VIP4}:81/").status == 200
    assert len(gw.flows()) == 1   # the stateless rule keeps no flow


def test_cli_add_list_stats_detach(served):
    client, server, ci, si, _ = served
    ns = server.netns
    r = run_cli(["nat", "add", si.name, "web", "--dnat", f"{VIP4}:80", "--to", f"{si.ip4}:8080", "--proto", "tcp",
                 "--netns", ns, "--json"])
    assert r.returncode == 0, r.stderr
    assert client.http_get(f"http://{VIP4}:80/").status == 200
    r = run_cli(["nat", "list", si.name, "--netns", ns, "--json"])
    assert json.loads(r.stdout)[0]["rules"][0]["to"] == f"{si.ip4}:8080"
    st = json.loads(run_cli(["nat", "stats", si.name, "--netns", ns, "--json"]).stdout)
    assert st["flows"] == 1
    assert {a.owner for a in attach.find(si.name, None, ns)} == {"nat", "nat-out"}
    r = run_cli(["detach", "--dev", si.name, "--netns", ns])
    assert r.returncode == 0, r.stderr
    assert not attach.find(si.name, None, ns)
    assert not os.path.exists(nat.pin_dir(si.name, ns)) and not os.path.exists(nat.state_dir(si.name, ns))


def test_bad_input_changes_nothing(served):
    client, server, ci, si, gateway = served
    ns = server.netns
    for argv, want in (
        (["--dnat", "198.18.300.1:80", "--to", "198.18.0.1", "--proto", "tcp"], "not an IPv4 or IPv6 address"),
        (["--dnat", f"{VIP4}:80", "--to", f"[{si.ip6}]:80", "--proto", "tcp"], "is IPv6"),
        (["--snat", "198.18.1.0/24", "--to", si.ip4, "--ports", "9-3"], "port range"),
        (["--snat", "198.18.1.0/24", "--to", si.ip4, "--stateless"], "1:1"),
    ):
        r = run_cli(["nat", "add", si.name, "x", *argv, "--netns", ns])
        assert r.returncode != 0 and want in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not nat.Gateway.exists(si.name, ns) and not attach.find(si.name, None, ns)
    r = run_cli(["nat", "del", si.name, "x", "--netns", ns])
    assert r.returncode != 0 and "no NAT" in r.stderr
    gw = gateway()
    gw.add_rule(nat.dnat("web", "tcp", f"{VIP4}:80", f"{si.ip4}:8080"))
    with pytest.raises(PolicyError, match="matches what rule web matches"):
        gw.add_rule(nat.dnat("web2", "tcp", f"{VIP4}:80", f"{si.ip4}:9090"))
    with pytest.raises(NotFound):
        gw.delete_rule("nope")
    assert [r.name for r in nat.Gateway.open(si.name, ns, create=False).rules()] == ["web"]


def test_policy_file_apply_changes_only_what_differs(served, tmp_path):
    client, server, ci, si, _ = served
    ns, f = server.netns, tmp_path / "nat.yaml"

    def apply(text: str, *extra) -> dict:
        f.write_text(text)
        r = run_cli(["apply", str(f), "--netns", ns, "--json", *extra])
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    doc = f"""nat:
  interface: {si.name}
  rules:
    - {{name: web, kind: dnat, proto: tcp, match: "{VIP4}:80", to: "{si.ip4}:8080"}}
  services:
    - {{name: api, proto: tcp, vip: "{VIP4}:81", table_size: 1009, backends: ["{si.ip4}:8080@2"]}}
"""
    assert [c["op"] for c in apply(doc, "--dry-run")["nat"]] == ["add rule", "add service"]
    assert not nat.Gateway.exists(si.name, ns)   # a dry run changes nothing
    out = apply(doc)
    assert [c["op"] for c in out["nat"]] == ["add rule", "add service"] and out["nat"][1]["moved"] == 1.0
    assert client.http_get(f"http://{VIP4}:80/").status == 200
    assert client.http_get(f"http://{VIP4}:81/").status == 200
    assert apply(doc)["nat"] == []   # idempotent
    # a second backend: the service is updated live and says how much of its table moved
    out = apply(doc.replace(f'"{si.ip4}:8080@2"]', f'"{si.ip4}:8080@2", "{si.ip4}:8081"]'))
    assert [c["op"] for c in out["nat"]] == ["update service"] and 0.2 < out["nat"][0]["moved"] < 0.45
    # export -> apply round trip: the export states the running NAT; applied after a change, it restores it
    r = run_cli(["policy", "export", "--netns", ns])
    assert r.returncode == 0 and "nat:" in r.stdout, r.stderr
    exported = r.stdout
    assert apply(exported)["nat"] == []
    assert [c["op"] for c in apply(doc)["nat"]] == ["update service"]
    assert [c["op"] for c in apply(exported)["nat"]] == ["update service"]
    assert [b.weight for b in nat.Gateway.open(si.name, ns, create=False).service("api").backends] == [2, 1]
    # bad input: one line, nothing changed
    f.write_text(doc.replace("kind: dnat", "kind: masquerade"))
    r = run_cli(["apply", str(f), "--netns", ns])
    assert r.returncode == 2 and "rules: rule web.kind" in r.stderr and "Traceback" not in r.stderr
    assert [r.name for r in nat.Gateway.open(si.name, ns, create=False).rules()] == ["web"]
    # nothing left in the document: the NAT goes
    assert [c["op"] for c in apply(f"nat:\n  interface: {si.name}\n")["nat"]] == ["detach"]
    assert not nat.Gateway.exists(si.name, ns) and not attach.find(si.name, None, ns)
