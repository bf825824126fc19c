"""Policy file parsing: normalised values, and errors that name file, line and field."""

from __future__ import annotations

import textwrap

import pytest

from bpfgate.errors import PolicyError
from bpfgate.policy.model import Hook, Rule, parse_ports, parse_tcp_flags
from bpfgate.policy.parse import load_file, load_text

GOOD = """\
interfaces: [eth0]
hooks:
  tc-ingress:
    default: deny
    rules:
      - name: est
        ct: [established, related]
      - name: ssh
        src: [198.18.0.0/24, "fd00::/64"]
        protocol: tcp
        dst_port: 22
        tcp_flags: "syn,!ack"
        log: {rate: 5}
      - name: web
        protocol: [tcp, udp]
        dst_port: [80, "8000-8100"]
        rate_limit: {rate: 100, per: source, unit: bytes}
      - name: mirror
        vlan: 100
        action: {redirect: {interface: eth1, direction: ingress}}
      - name: tag
        protocol: icmp
        icmp_type: 8
        mark: 0x10
  xdp:
    rules:
      - {name: drop-bad, src: 203.0.113.0/24, action: drop}
"""


def test_good_policy_normalised():
    p = load_text(GOOD)
    rules = p.hooks[Hook.TC_INGRESS].rules
    assert p.hooks[Hook.TC_INGRESS].default == "deny"
    assert rules[0].ct == (2, 3)
    assert rules[1].tcp_flags == (0x12, 0x02) and rules[1].protocol == (6,) and rules[1].log.rate == 5
    assert rules[2].dst_port == ((80, 80), (8000, 8100)) and rules[2].protocol == (6, 17)
    assert rules[3].action == "redirect" and rules[3].redirect.direction == "ingress"
    assert rules[4].mark == 0x10 and p.hooks[Hook.XDP].default == "allow"


def _err(text: str) -> str:
    with pytest.raises(PolicyError) as e:
        load_text(textwrap.dedent(text), "policy.yaml")
    return str(e.value)


def _rule(body: str, hook: str = "tc-ingress") -> str:
    lines = ["interfaces: [eth0]", "hooks:", f"  {hook}:", "    rules:", "      - name: a"]
    lines += ["        " + ln for ln in textwrap.dedent(body).strip().splitlines()]
    return _err("\n".join(lines) + "\n")


@pytest.mark.parametrize("body, where, why", [
    ("protocol: tcp\ndst_port: 70000", "policy.yaml:7 hooks.tc-ingress.rules[0].dst_port", "70000 out of range"),
    ("protocol: tcp\ndst_port: [80, 90-10]", ":7 hooks.tc-ingress.rules[0].dst_port", "empty"),
    ("dst_port: 80", ":6 hooks.tc-ingress.rules[0].dst_port", "ports need protocol"),
    ("protocol: udp\ntcp_flags: syn", ":7 hooks.tc-ingress.rules[0].tcp_flags", "needs protocol tcp"),
    ("protocol: tcp\ntcp_flags: syn,bogus", ":7 hooks.tc-ingress.rules[0].tcp_flags", "unknown TCP flag"),
    ("src: 10.0.0.1/8", ":6 hooks.tc-ingress.rules[0].src", "host bits set"),
    ("src: 10.0.0.0/8\ndst: fd00::/8", ":7 hooks.tc-ingress.rules[0].dst", "different address families"),
    ("ct: opened", ":6 hooks.tc-ingress.rules[0].ct", "unknown ct state"),
    ("icmp_type: 3", ":6 hooks.tc-ingress.rules[0].icmp_type", "needs protocol icmp"),
    ("vlan: 5000", ":6 hooks.tc-ingress.rules[0].vlan", "4094"),
    ("colour: red", ":6 hooks.tc-ingress.rules[0].colour", "unknown field"),
    ("action: redirect", ":5 hooks.tc-ingress.rules[0].redirect", "needs redirect"),
    ("protocol: banana", ":6 hooks.tc-ingress.rules[0].protocol", "unknown protocol"),
])
def test_rule_errors_point_at_field_and_line(body, where, why):
    msg = _rule(body)
    assert where in msg and why in msg, msg


def test_hook_refuses_what_it_cannot_do():
    assert "mark is not possible at xdp" in _rule("mark: 1", hook="xdp")
    assert "xdp can only redirect" in _rule("action: {redirect: {interface: x, direction: ingress}}", hook="xdp")


def test_structure_errors():
    assert "hooks.tc-middle" in _err("interfaces: [eth0]\nhooks:\n  tc-middle: {}\n")
    dup = _err("interfaces: [eth0]\nhooks:\n  xdp: {}\n  xdp: {}\n")
    assert ":4 hooks.xdp" in dup and "duplicate key" in dup
    assert "already used" in _err("interfaces: [e]\nhooks:\n  xdp:\n    rules:\n      - {name: a}\n      - {name: a}\n")
    assert "not valid YAML" in _err("interfaces: [eth0\n")
    assert "empty policy" in _err("")
    assert "interfaces" in _err("hooks:\n  xdp: {}\n")


def test_load_file_errors(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_file(tmp_path / "missing.yaml")
    f = tmp_path / "p.yaml"
    f.write_text("interfaces: [eth0]\nhooks:\n  xdp:\n    default: maybe\n")
    with pytest.raises(PolicyError, match=r"p.yaml:4 hooks.xdp.default"):
        load_file(f)


def test_value_parsers():
    assert parse_ports([22, "1000-2000", " 5 "]) == ((22, 22), (1000, 2000), (5, 5))
    assert parse_tcp_flags("syn,!ack") == (0x12, 0x02)
    assert parse_tcp_flags("0x02/0x12") == (0x12, 0x02)
    assert parse_tcp_flags({"mask": 0x3F, "value": 0x02}) == (0x3F, 0x02)
    for bad in ("0x13/0x02", "syn,syn", {"mask": 1}):
        with pytest.raises(ValueError):
            parse_tcp_flags(bad)


@pytest.mark.parametrize("text", [
    "198.18.0.0/24", "198.18.0.1", "0.0.0.0/0", "255.255.255.255/32", "198.18.0.1/24", "01.2.3.4/8",
    "1.2.3.0/08", "1.2.3.4/33", "1.2.3.4/ 8", "x", "fd00::/8", "::/0", "::", "::ffff:1.2.3.4/128", "fd00::1/8",
    "1::2::3/64", ":1::/64", "1:2:3:4:5:6:7:8:9/128", "00000::/8", "FD00::/8", "fd00::/129", "fd00::/08",
    "1:2:3:4:5:6:7::/128", "fe80::1%eth0/128", ":::/0", "1:/64", "",
])
def test_cidrs_read_as_ipaddress_reads_them(text):
    import ipaddress

    from bpfgate.policy.model import parse_network

    try:
        want = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            parse_network(text)
        assert str(got.value) == str(e)
    else:
        got = parse_network(text)
        assert got == want and type(got) is type(want) and str(got) == str(want)


def test_networks_are_built_as_the_ipaddress_constructor_builds_them():
    """model._network (what reading and loading back rules build 100k networks with) against the constructor:
    the same value, attributes, text and refusals, for random values and lengths of both families."""
    import random

    from bpfgate.policy.model import _exact_network, _network

    rng = random.Random(5)
    for _ in range(4000):
        version = rng.choice((4, 6))
        width = 32 if version == 4 else 128
        plen = rng.choice((0, 1, width - 1, width, rng.randint(0, width)))
        value = rng.getrandbits(width)
        if rng.random() < 0.8:
            value = value >> (width - plen) << (width - plen) if plen else 0
        try:
            want = _exact_network(version, value, plen)
        except ValueError:
            with pytest.raises(ValueError):
                _network(version, value, plen)
            continue
        got = _network(version, value, plen)
        assert (got, type(got), str(got), hash(got), vars(got).keys()) == (want, type(want), str(want), hash(want),
                                                                           vars(want).keys())
        if plen >= width - 1:
            assert list(got.hosts()) == list(want.hosts())


def test_rules_read_from_a_file_share_their_fields_set_and_a_copy_changes_its_own():
    text = ("version: 1\ninterfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n"
            "      - {name: a, src: 198.18.0.0/24, action: drop}\n      - {name: b, src: 198.18.1.0/24, action: drop}\n"
            "      - {name: c, protocol: tcp, dst_port: 80, action: drop}\n")
    a, b, c = load_text(text, "p.yaml").hooks[Hook.TC_INGRESS].rules
    assert a.model_fields_set is b.model_fields_set and c.model_fields_set == {"name", "protocol", "dst_port", "action"}
    a.model_copy(update={"comment": "x"})
    assert b.model_fields_set == {"name", "src", "action"}


_QUICK_CASES = [
    {"name": "r1", "src": "198.18.0.0/15", "action": "drop"}, {"name": "r1", "dst": "fd00::/8"},
    {"name": "a.b:c-d_9", "src": "198.18.0.1", "action": "pass"}, {"name": "r", "dst": "fd00::1"},
    {"name": "r", "src": "::/0"}, {"name": "r", "src": "0.0.0.0/0", "action": "drop"},
    {"name": "x" * 63, "src": "198.18.0.0/16"}, {"name": "x" * 64, "src": "198.18.0.0/16"},
    {"name": "", "src": "198.18.0.0/16"}, {"name": "a b", "src": "198.18.0.0/16"}, {"name": "a\n", "src": "1.2.3.4"},
    {"name": 5, "src": "198.18.0.0/16"}, {"src": "198.18.0.0/16"}, {"name": "r", "src": "198.18.0.1/15"},
    {"name": "r", "src": "198.18.0.0/33"}, {"name": "r", "src": "fd00::/129"}, {"name": "r", "src": "nope"},
    {"name": "r", "src": " 198.18.0.0/16"}, {"name": "r", "src": "198.18.0.0/16 "}, {"name": "r", "src": "!198.18.0.0/16"},
    {"name": "r", "src": " !198.18.0.0/16"}, {"name": "r", "src": "@blocked"}, {"name": "r", "src": ["198.18.0.0/16"]},
    {"name": "r", "src": None}, {"name": "r", "src": 3232235520}, {"name": "r", "src": "198.18.0.0/16", "dst": "fd00::/8"},
    {"name": "r", "src": "198.18.0.0/16", "dst": "198.19.0.0/16"}, {"name": "r", "action": "drop"}, {"name": "r"},
    {"name": "r", "src": "1.2.3.4", "action": "reject"}, {"name": "r", "src": "1.2.3.4", "action": "DROP"},
    {"name": "r", "src": "1.2.3.4", "action": None}, {"name": "r", "src": "1.2.3.4", "action": {"redirect": {}}},
    {"name": "r", "src": "1.2.3.4", "protocol": "tcp"}, {"name": "r", "src": "1.2.3.4", "negated": ["src"]},
    {"name": "r", "src": "::ffff:1.2.3.4"}, {"name": "r", "src": "fe80::1%eth0"}, {"name": "r", "src": "01.2.3.4"},
    {"name": "r", "src": "1.2.3.4/024"}, {"name": "r", "src": "FD00::/8"}, {"name": "r", "src": "1.2.3.4/"},
]


@pytest.mark.parametrize("d", _QUICK_CASES)
def test_quick_rules_are_what_pydantic_makes(d):
    """quick_rule() makes exactly the Rule that validation makes, or leaves the mapping to it (errors too)."""
    from pydantic import ValidationError

    from bpfgate.policy.model import quick_rule

    quick = quick_rule(d)
    try:
        want = Rule.model_validate(d)
    except ValidationError:
        assert quick is None
        return
    if quick is not None:
        assert list(quick.__dict__.items()) == list(want.__dict__.items())
        assert [type(n) for n in quick.src or quick.dst or ()] == [type(n) for n in want.src or want.dst or ()]
        assert quick.model_fields_set == want.model_fields_set and quick == want
        assert quick.action is want.action   # one str for all rules (100k rules held: ~5 MB)


def test_a_file_of_quick_rules_reads_as_before():
    """A policy whose rules are all of the quick form reads as one validated rule by rule; an error among
    them is reported as before."""
    rules = "".join(f"      - {{name: r{i}, src: 198.18.{i}.0/24, action: drop}}\n" for i in range(50))
    head = "interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n"
    pol = load_text(head + rules)
    want = [Rule.model_validate({"name": f"r{i}", "src": f"198.18.{i}.0/24", "action": "drop"}) for i in range(50)]
    assert list(pol.hooks[Hook.TC_INGRESS].rules) == want
    bad = rules.replace("198.18.7.0/24", "198.18.7.1/24")
    with pytest.raises(PolicyError) as e:
        load_text(head + bad, "p.yaml")
    assert "p.yaml:12 hooks.tc-ingress.rules[7].src: bad CIDR" in str(e.value) and "host bits" in str(e.value)


def test_a_bad_element_of_a_set_written_under_a_hook_is_reported():
    """check() covers the sets of every hook (the compiler trusts a checked policy's sets)."""
    text = ("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    sets:\n      b: {type: addr, elements: [198.18.0.0/24, 80]}\n"
            "    rules:\n      - {name: r, src: 198.18.0.4, action: drop}\n")
    with pytest.raises(PolicyError) as e:
        load_text(text, "p.yaml")
    assert "p.yaml:5 hooks.tc-ingress.sets.b.elements[1]: 80 is a port" in str(e.value)
