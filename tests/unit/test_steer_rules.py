"""Steering rules, pure: what a rule accepts, the error a bad one gets, and the LPM key it becomes."""

from __future__ import annotations

import pytest

from bpfgate.errors import BpfgateError
from bpfgate.steer import rules


def test_a_rule_is_normalised_and_round_trips_through_its_map_entry():
    r = rules.make("198.18.250.7/24", "sec0", "198.18.2.1", "TCP", 80)
    assert r.source == "198.18.250.0/24" and r.proto == "tcp" and r.port == 80
    key, val = rules.key_of(r), rules.value_of(r, 5, 42)
    assert key.prefixlen == 32 + 24 and key.family == 4 and key.proto == 6 and key.port == 80
    assert bytes(key.addr[:4]) == bytes([198, 18, 250, 0]) and not any(key.addr[4:])
    back, rule_id, ifindex = rules.decode(key, val, "sec0")
    assert (back, rule_id, ifindex) == (r, 5, 42)


def test_an_ipv6_rule_for_any_protocol():
    r = rules.make("fd00:fa::1", "sec0", "fe80::1")
    key, val = rules.key_of(r), rules.value_of(r, 0, 3)
    assert key.prefixlen == 32 + 128 and key.family == 6 and key.proto == 0 and key.port == 0
    assert val.family == 6 and rules.decode(key, val, "sec0")[0] == r


@pytest.mark.parametrize("args, words", [
    (("nope", "sec0", "198.18.2.1"), "not an address or prefix"),
    (("198.18.0.1", "sec0", "nope"), "is not an address"),
    (("198.18.0.1", "sec0", "ff02::1"), "not a unicast"),
    (("198.18.0.1", "sec0", "127.0.0.1"), "not a unicast"),
    (("198.18.0.1", "", "198.18.2.1"), "no interface"),
    (("198.18.0.1", "sec0", "198.18.2.1", "icmp"), "not one of"),
    (("198.18.0.1", "sec0", "198.18.2.1", None, 80), "needs a protocol"),
    (("198.18.0.1", "sec0", "198.18.2.1", "tcp", 70000), "out of range"),
])
def test_bad_rules_name_the_bad_part(args, words):
    with pytest.raises(BpfgateError, match=words):
        rules.make(*args)


def test_a_policy_file_steer_section_is_checked_where_it_is_wrong():
    from bpfgate.errors import PolicyError
    from bpfgate.policy.parse import load_text

    p = load_text("steer:\n  interfaces: [pri0, sec0]\n  symmetric: sec0\n  rules:\n"
                  "    - {from: 198.18.250.1, protocol: tcp, port: 80, dev: sec0, via: 198.18.2.1}\n")
    assert p.steer.symmetric == ("sec0",) and not p.hooks
    (rule,) = p.steer.desired_rules().values()
    assert rule == rules.make("198.18.250.1", "sec0", "198.18.2.1", "tcp", 80)
    for text, words in (("steer: {interfaces: [a], rules: [{from: x, dev: a, via: 198.18.0.1}]}", "steer.rules"),
                        ("steer: {interfaces: [a], symmetric: [b]}", "not in interfaces"),
                        ("steer: {interfaces: [a], rules: [{from: 198.18.0.1, dev: b, via: 198.18.0.2}]}",
                         "not in interfaces"),
                        ("version: 1", "needs interfaces and hooks")):
        with pytest.raises(PolicyError, match=words):
            load_text(text)
