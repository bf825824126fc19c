"""`bpfgate capture --rule NAME`: the engine records the packets the rule decides, with its verdict; read
back by tshark. Real traffic: datagrams the rule drops, and look-alikes it does not match (other port, the
port on the other side). Any rule is capturable that way (a match the capture program's own filter cannot
express too). The capture program's filter for a rule (rule_filter, the path for engines attached by an
older bpfgate, without capture maps) names what it cannot express. Verdicts against an earlier overlapping
rule: test_inspect_engine_verdict.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import pytest
from clirun import run_cli

from bpfgate.errors import NotSupported
from bpfgate.inspect.capture import rule_filter, shadowing
from bpfgate.kernel import netns
from bpfgate.policy.model import HookPolicy, Rule
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
DEADLINE = 10.0


@pytest.fixture
def net(sandbox, engines):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)
    eng = engines(link.b.name, "tc-ingress", HookPolicy.model_validate({"default": "allow", "rules": [
        {"name": "drop-9", "protocol": "udp", "dst_port": 9, "src": f"{link.a.ip4}/32", "action": "drop"},
        {"name": "syn-range", "protocol": "tcp", "dst_port": "1000-2000", "tcp_flags": "syn,!ack"},
        {"name": "pass-7", "protocol": "udp", "dst_port": 7},
    ]}), netns_name=s.netns)
    return c, s, link, eng


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed (scripts/run installs it)")
def test_capture_rule_with_its_verdict_read_by_tshark(net, tmp_path):
    client, server, link, eng = net
    with netns.entered(client.netns):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind((link.a.ip4, 9))          # source port 9: the rule wants destination port 9
    stop = threading.Event()

    def send():
        for i in range(3000):        # bounded: at most 60 s
            if stop.wait(0.02):
                return
            a.sendto(b"drop-me %d" % i, (link.b.ip4, 9))
            a.sendto(b"other port", (link.b.ip4, 7))
            b.sendto(b"sport 9", (link.b.ip4, 7))

    t = threading.Thread(target=send, daemon=True)
    t.start()
    path = tmp_path / "rule.pcapng"
    try:
        r = run_cli(["capture", "--dev", link.b.name, "--netns", server.netns, "--rule", "drop-9", "--count", "5",
                     "--duration", "60", "--pcapng", "-w", str(path)], timeout=scaled(90))
    finally:
        stop.set()
        t.join(DEADLINE)
        a.close()
        b.close()
    assert r.returncode == 0, r.stderr
    assert "rule drop-9" in r.stderr and "warning" not in r.stderr      # first rule: nothing shadows it
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "ip.src", "-e", "udp.srcport",
                          "-e", "udp.dstport", "-e", "frame.comment"], capture_output=True, text=True, timeout=scaled(60),
                         check=False)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) == 5
    for src, sport, dport, comment in rows:
        assert (src, dport) == (link.a.ip4, "9") and sport != "9"
        assert comment == "bpfgate verdict=drop rule=drop-9 hook=tc-ingress dir=ingress"   # the engine's hook
    assert eng.counters()["drop-9"].packets >= 5      # the engine did drop them


def test_capture_rule_json_and_errors(net):
    _client, server, link, _eng = net
    base = ["capture", "--dev", link.b.name, "--netns", server.netns]
    r = run_cli(base + ["--rule", "syn-range", "--json", "--duration", "0.3"])   # tcp_flags, a port range: fine
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1].startswith('{"type":"summary"'), r.stderr
    r = run_cli(base + ["--rule", "syn-range", "--engine", "--json"])
    assert r.returncode != 0 and "exclude each other" in r.stderr, r.stderr
    r = run_cli(base + ["--rule", "nope", "--json"])
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "no rule 'nope'" in r.stderr, r.stderr
    r = run_cli(base + ["--rule", "pass-7", "--direction", "egress", "--json"])
    assert r.returncode != 0 and "tc-ingress" not in r.stderr and "ingress" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_rule_filter_compiles_what_is_expressible():
    f = rule_filter(Rule.model_validate({"name": "x", "protocol": "tcp", "src_port": 22, "dst": "fd00::/64",
                                         "action": "drop"}), 5)
    assert (f.proto, f.port, f.port_side, str(f.host), f.host_side, f.verdict, f.rule_id, f.rule) == \
        (6, 22, "src", "fd00::/64", "dst", 2, 5, "x")
    assert f.rodata()["cfg_port_side"] == 1 and f.rodata()["cfg_host_side"] == 2 and f.rodata()["cfg_verdict"] == 2
    assert rule_filter(Rule.model_validate({"name": "all"})).rodata() == {"cfg_ip_only": 0, "cfg_verdict": 1,
                                                                          "cfg_rule_id": 0}
    for spec, needle in (({"protocol": ["tcp", "udp"]}, "2 protocols"),
                         ({"protocol": "tcp", "src_port": 1, "dst_port": 2}, "both a source and a destination port"),
                         ({"src": "198.18.0.0/24", "dst": "198.18.1.0/24"}, "both a source and a destination CIDR"),
                         ({"src": ["198.18.0.0/24", "198.18.1.0/24"]}, "2 src CIDRs"),
                         ({"ct": "new"}, "ct state"),
                         ({"protocol": "icmp", "icmp_type": 8}, "icmp_type")):
        with pytest.raises(NotSupported, match=needle):
            rule_filter(Rule.model_validate({"name": "r", **spec}))
    with pytest.raises(NotSupported, match="at XDP"):
        rule_filter(Rule.model_validate({"name": "r", "action": "drop"}), hook="xdp")


def test_shadowing_names_earlier_rules_that_may_match_first():
    pol = HookPolicy.model_validate({"default": "allow", "rules": [
        {"name": "udp-any", "protocol": "udp"},                                   # other protocol
        {"name": "web", "protocol": "tcp", "dst_port": 80},                       # disjoint port
        {"name": "range", "protocol": "tcp", "dst_port": "440-450"},              # overlaps 443
        {"name": "lan", "src": "198.18.0.0/16"},                                  # disjoint source
        {"name": "net", "src": "198.19.0.0/16"},                                  # overlaps
        {"name": "v6", "src": "fd00::/8"},                                        # other family
        {"name": "me", "protocol": "tcp", "dst_port": 443, "src": "198.19.1.0/24", "action": "drop"},
        {"name": "after", "protocol": "tcp"},
    ]})
    assert shadowing(pol, "me") == ["range", "net"]
    assert shadowing(pol, "udp-any") == []
