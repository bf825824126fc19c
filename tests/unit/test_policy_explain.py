"""`bpfgate policy explain`: packet descriptions (parser, errors) and the answer for a policy file."""

from __future__ import annotations

import ipaddress
import json

import pytest
from click.testing import CliRunner

from bpfgate import policyctl
from bpfgate.errors import PacketError
from bpfgate.policy.model import CT_STATES, Policy
from bpfgate.policy.packet import Packet
from bpfgate.policyctl.explain import describe, parse_packet

A4, B4 = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
A6, B6 = ipaddress.ip_address("fd00::1"), ipaddress.ip_address("fd00::2")
NEW, EST, INV = CT_STATES["new"], CT_STATES["established"], CT_STATES["invalid"]


@pytest.mark.parametrize("text,want", [
    ("tcp 198.18.0.1:1234 -> 198.18.0.2:80 syn",
     Packet(family=4, src=A4, dst=B4, proto=6, sport=1234, dport=80, tcp_flags=0x02, ct=NEW)),
    ("tcp 198.18.0.1:1234->198.18.0.2:80 syn,ack ct established",
     Packet(family=4, src=A4, dst=B4, proto=6, sport=1234, dport=80, tcp_flags=0x12, ct=EST)),
    ("TCP 198.18.0.1:1 -> 198.18.0.2:2 ack psh",     # no SYN, no flow: invalid, as the data plane says
     Packet(family=4, src=A4, dst=B4, proto=6, sport=1, dport=2, tcp_flags=0x18, ct=INV)),
    ("udp [fd00::1]:5353 -> [fd00::2]:53 vlan 100",
     Packet(family=6, src=A6, dst=B6, proto=17, sport=5353, dport=53, vlan=100, ct=NEW)),
    ("icmp 198.18.0.1 -> 198.18.0.2 type 8 code 0",
     Packet(family=4, src=A4, dst=B4, proto=1, icmp_type=8, icmp_code=0, ct=NEW)),
    ("icmpv6 fd00::1 -> fd00::2 type 128",
     Packet(family=6, src=A6, dst=B6, proto=58, icmp_type=128, icmp_code=0, ct=NEW)),
    ("47 198.18.0.1 -> 198.18.0.2", Packet(family=4, src=A4, dst=B4, proto=47, ct=NEW)),
    ("udp 198.18.0.1:9 -> 198.18.0.2:9 fragment later",
     Packet(family=4, src=A4, dst=B4, proto=17, sport=9, dport=9, fragment="later")),
])
def test_descriptions(text, want):
    assert parse_packet(text) == want


@pytest.mark.parametrize("text,word,reason", [
    ("tcp 198.18.0.1:1234 198.18.0.2:80", "", "expected PROTOCOL SRC -> DST"),
    ("", "", "expected PROTOCOL SRC -> DST"),
    ("foo 198.18.0.1 -> 198.18.0.2", "foo", "unknown protocol"),
    ("300 198.18.0.1 -> 198.18.0.2", "300", "between 0 and 255"),
    ("tcp 198.18.0.300:1 -> 198.18.0.2:80", "198.18.0.300:1", "not an IPv4 or IPv6 address"),
    ("tcp 198.18.0.1:x -> 198.18.0.2:80", "x", "must be a number"),
    ("tcp 198.18.0.1:1 -> 198.18.0.2:70000", "70000", "between 0 and 65535"),
    ("icmp 198.18.0.1:1 -> 198.18.0.2", "198.18.0.1:1", "icmp has no ports"),
    ("udp [fd00::1:53 -> [fd00::2]:53", "[fd00::1:53", "[ADDR]:PORT"),
    ("udp [fd00::1]:53 -> 198.18.0.2:53", "198.18.0.2:53", "different address families"),
    ("udp 198.18.0.1:1 -> 198.18.0.2:2 syn", "syn", "TCP flags are for tcp"),
    ("tcp 198.18.0.1:1 -> 198.18.0.2:2 type 3", "type", "for icmp or icmpv6"),
    ("icmp 198.18.0.1 -> 198.18.0.2 type", "type", "needs a value"),
    ("icmp 198.18.0.1 -> 198.18.0.2 type 256", "256", "between 0 and 255"),
    ("udp 198.18.0.1:1 -> 198.18.0.2:2 vlan 4095", "4095", "between 0 and 4094"),
    ("udp 198.18.0.1:1 -> 198.18.0.2:2 ct open", "open", "unknown ct state"),
    ("udp 198.18.0.1:1 -> 198.18.0.2:2 fragment middle", "middle", "first or later"),
    ("udp 198.18.0.1:1 -> 198.18.0.2:2 please", "please", "unknown word"),
])
def test_bad_descriptions_are_one_clear_error(text, word, reason):
    with pytest.raises(PacketError) as e:
        parse_packet(text)
    assert e.value.word == word and reason in str(e.value) and "\n" not in str(e.value)
    assert e.value.exit_code == 2


FILE = {"interfaces": ["eth0", "eth1"], "hooks": {
    "tc-ingress": {"default": "deny", "rules": [
        {"name": "est", "ct": ["established", "related"]},
        {"name": "admins", "src": "198.18.0.0/24", "protocol": "tcp", "dst_port": 22},
        {"name": "web", "protocol": "tcp", "dst_port": [80, 443]},
        {"name": "ping", "protocol": "icmpv6", "icmp_type": 128}]},
    "xdp": {"rules": [{"name": "no-vlan-7", "vlan": 7, "action": "drop"}]}}}


@pytest.mark.parametrize("text,ingress,xdp", [
    ("tcp 198.18.0.1:1234 -> 198.18.0.2:80 syn", "web", "(default)"),
    ("tcp 198.18.0.1:1234 -> 198.18.0.2:22 syn vlan 7", "admins", "no-vlan-7"),
    ("tcp 198.18.1.1:1234 -> 198.18.0.2:22 syn", "(default)", "(default)"),
    ("tcp 198.18.1.1:1234 -> 198.18.0.2:22 ack ct established", "est", "(default)"),
    ("icmpv6 fd00::1 -> fd00::2 type 128", "ping", "(default)"),
])
def test_explain_a_file(text, ingress, xdp):
    rows = policyctl.explain(text, file=Policy.model_validate(FILE))
    got = {(r.dev, r.hook): r.rule for r in rows}
    assert got == {(d, h): v for d in ("eth0", "eth1") for h, v in (("tc-ingress", ingress), ("xdp", xdp))}
    assert not any(r.disagreement for r in rows)


def test_the_why_names_the_matched_fields():
    (r,) = policyctl.explain("tcp 198.18.0.1:1234 -> 198.18.0.2:22 syn", file=Policy.model_validate(FILE),
                             dev="eth0", hook="tc-ingress")
    assert (r.rule, r.position, r.action) == ("admins", 1, "pass")
    assert r.matched == [{"field": "src", "rule": "198.18.0.0/24", "packet": "198.18.0.1"},
                         {"field": "protocol", "rule": "tcp", "packet": "tcp"},
                         {"field": "dst_port", "rule": "22", "packet": "22"}]
    (d,) = policyctl.explain("tcp 198.18.1.1:1 -> 198.18.0.2:23 syn", file=Policy.model_validate(FILE),
                             dev="eth1", hook="tc-ingress")
    assert (d.rule, d.position, d.action, d.matched) == ("(default)", None, "drop", [])
    assert "no rule matched" in d.line()


def test_the_why_of_a_long_address_list_names_the_networks_holding_the_address():
    listed = [f"198.19.{i}.0/24" for i in range(100)] + ["198.19.7.128/25"]
    pol = Policy.model_validate({"interfaces": ["eth0"], "hooks": {"tc-ingress": {"rules": [
        {"name": "block", "src": listed, "action": "drop"},
        {"name": "not-listed", "dst": [f"!{n}" for n in listed[:20]], "action": "drop"}]}}})
    (r,) = policyctl.explain("udp 198.19.7.200:1 -> 198.19.3.1:53", file=pol)
    assert r.rule == "block"
    assert r.matched == [{"field": "src", "rule": "198.19.7.0/24,198.19.7.128/25 (of the 101 listed)",
                          "packet": "198.19.7.200"}]
    (r,) = policyctl.explain("udp 198.19.200.1:1 -> 198.19.30.1:53", file=pol)   # a negated list: as written
    assert r.rule == "not-listed" and r.matched[0]["rule"].count(",") == 19


def test_cli_explain_file_json_and_errors(tmp_path):
    import yaml

    from bpfgate.cli.main import app, _register

    _register()
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(FILE))
    res = CliRunner().invoke(app, ["policy", "explain", "--file", str(f), "--dev", "eth0", "--json",
                                   "tcp", "198.18.0.1:1234", "->", "198.18.0.2:80", "syn"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["packet"] == describe(parse_packet("tcp 198.18.0.1:1234 -> 198.18.0.2:80 syn"))
    assert [(h["hook"], h["rule"]) for h in out["hooks"]] == [("tc-ingress", "web"), ("xdp", "(default)")]


@pytest.mark.parametrize("text", ["tcp 198.18.0.1:1234 -> 198.18.0.2:80 syn", "udp [fd00::1]:5353 -> [fd00::2]:53",
                                  "icmp 198.18.0.1 -> 198.18.0.2 type 8 code 0", "tcp 198.18.0.1:1 -> 198.18.0.2:2 ack"])
def test_a_frame_reads_as_its_description(text):
    from bpfgate.engine import frames
    from bpfgate.policyctl.explain import parse_frame

    p = parse_packet(text)
    got = parse_frame(frames.build(p).hex())
    assert got.key() == p.key() and got.ct == p.ct


@pytest.mark.parametrize("hex_text,reason", [("zz", "hex digits"), ("abc", "hex digits"),
                                             ("ff" * 12 + "0806" + "00" * 28, "ARP")])
def test_bad_frames(hex_text, reason):
    from bpfgate.policyctl.explain import parse_frame

    with pytest.raises(PacketError, match=reason):
        parse_frame(hex_text)
