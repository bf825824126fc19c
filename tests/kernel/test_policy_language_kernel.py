"""The rule language's additions on the real engine, with real traffic: rule comments through the CLI, counter
reset (all and per rule)."""

from __future__ import annotations

import json

import pytest
from clirun import run_cli

from bpfgate import policyctl

pytestmark = pytest.mark.kernel
T_OK = 3.0
WEB_PORTS = (80, 8080)


@pytest.fixture
def net(web):
    """client -- server with an HTTP server on 80 and 8080; the namespace's policies removed at the end."""
    return web


def served(n, port, v6=False):
    url = f"http://[{n.ip6}]:{port}/" if v6 else f"http://{n.ip4}:{port}/"
    return n.client.http_get(url, T_OK).ok


def cli_rules(n, *args):
    r = run_cli(["rules", "--netns", n.ns, "--json", *args])
    assert r.returncode == 0, r.stderr
    return {x["name"]: x for x in json.loads(r.stdout)}


def test_comments_and_counter_reset(net, tmp_path):
    n = net
    f = tmp_path / "p.yaml"
    f.write_text(f"interfaces: [{n.dev}]\nhooks:\n  tc-ingress:\n    rules:\n"
                 f"      - {{name: web, protocol: tcp, dst_port: 80, comment: 'front door [web-1]'}}\n"
                 f"      - {{name: alt, protocol: tcp, dst_port: 8080}}\n")
    r = run_cli(["apply", "--netns", n.ns, str(f)])
    assert r.returncode == 0, r.stderr
    r = run_cli(["rule", "add", "--netns", n.ns, "--dev", n.dev, "ping6", "--proto", "icmpv6",
                 "--comment", "neighbour discovery too"])
    assert r.returncode == 0, r.stderr
    assert served(n, 80) and served(n, 80, v6=True) and served(n, 8080)
    rows = cli_rules(n)
    assert rows["web"]["comment"] == "front door [web-1]" and rows["ping6"]["comment"] == "neighbour discovery too"
    assert rows["alt"]["comment"] is None
    assert rows["web"]["packets"] > 0 and rows["alt"]["packets"] > 0

    # one rule: its counters are printed and zeroed, the others keep theirs
    reset = cli_rules(n, "--reset", "--rule", "web")
    assert list(reset) == ["web"] and reset["web"]["packets"] == rows["web"]["packets"]
    after = cli_rules(n)
    assert after["web"]["packets"] == 0 and after["web"]["bytes"] == 0
    assert after["alt"]["packets"] >= rows["alt"]["packets"] > 0
    # counting goes on from zero
    assert served(n, 80)
    assert cli_rules(n)["web"]["packets"] > 0

    # all of them, the default included
    before = cli_rules(n, "--reset")
    assert set(before) == {"web", "alt", "ping6", "(default)"}
    zeroed = cli_rules(n)   # TCP is quiet between requests; IPv6 neighbour discovery (ping6, default) is not
    assert all(zeroed[r]["packets"] == 0 and zeroed[r]["bytes"] == 0 for r in ("web", "alt"))
    assert served(n, 8080)
    again = cli_rules(n)
    assert again["alt"]["packets"] > 0 and again["web"]["packets"] == 0

    # an unknown rule: one line, exit 2, nothing reset
    r = run_cli(["rules", "--netns", n.ns, "--reset", "--rule", "alt", "--rule", "nope"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no such rule" in r.stderr
    assert cli_rules(n)["alt"]["packets"] == again["alt"]["packets"]

    # comments survive export -> apply (no change)
    r = run_cli(["policy", "export", "--netns", n.ns, "-o", str(tmp_path / "out.yaml")])
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "out.yaml").read_text()
    assert "comment: 'front door [web-1]'" in text and "comment: neighbour discovery too" in text
    r = run_cli(["apply", "--netns", n.ns, str(tmp_path / "out.yaml")])
    assert r.returncode == 0 and "no change" in r.stdout


def test_negated_matches_with_real_traffic(net):
    n = net
    client_net4 = str(n.link.end(n.client).net4)
    from bpfgate.policy.model import Policy

    policyctl.apply(Policy.model_validate({"interfaces": [n.dev], "hooks": {"tc-ingress": {"rules": [
        # TCP to anything but 80, from this client's IPv4 subnet: dropped (80 and IPv6 unaffected)
        {"name": "only-80", "protocol": "tcp", "dst_port": "!80", "action": "drop"},
        # IPv4 from outside the client's subnet: none here, so nothing of the client's is dropped by it
        {"name": "strangers", "src": f"!{client_net4}", "action": "drop"},
        # neither TCP nor ICMPv6 (IPv6 keeps its neighbour discovery): ping over IPv4 is dropped
        {"name": "tcp-and-nd-only", "protocol": ["!tcp", "!icmpv6"], "action": "drop"},
    ]}}}), netns=n.ns)
    assert served(n, 80) and served(n, 80, v6=True)
    assert n.client.http_get(f"http://{n.ip4}:8080/", 1.0).status is None
    assert n.client.http_get(f"http://[{n.ip6}]:8080/", 1.0).status is None
    assert not n.client.ping(n.ip4, timeout=1.0) and n.client.ping(n.ip6, timeout=3.0)
    c = {r.name: r.packets for r in policyctl.rules(n.dev, netns=n.ns)}
    assert c["only-80"] > 0 and c["strangers"] == 0 and c["tcp-and-nd-only"] > 0
    # the classifier names what each negation costs
    r = run_cli(["policy", "classifier", "--netns", n.ns, "--json"])
    assert r.returncode == 0, r.stderr
    neg = {(x["rule"], x["field"]): x for x in json.loads(r.stdout)[0]["negations"]}
    assert neg[("strangers", "src")]["expands_to"] == n.link.end(n.client).net4.prefixlen
    assert neg[("tcp-and-nd-only", "protocol")]["expands_to"] == 254
