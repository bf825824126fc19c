"""NAT rules and services parse into one shape or fail with a PolicyError naming the field; Maglev tables
follow the weights and move only what a change must move."""

from __future__ import annotations

import pytest

from bpfgate.errors import PolicyError
from bpfgate.nat import maglev, rules


def test_endpoints_and_rules_round_trip():
    r = rules.dnat("web", "TCP", "[fd00::1]:80", "[fd00::2]:8080")
    assert (r.proto, r.match, r.to, r.family) == ("tcp", "[fd00::1]:80", "[fd00::2]:8080", 6)
    assert rules.rule_from(r.to_dict()) == r
    s = rules.snat("out", "198.18.1.7/24", "198.18.0.1", ports="2000-2999")
    assert (s.match, s.ports) == ("198.18.1.0/24", (2000, 2999))
    assert rules.rule_from(s.to_dict()) == s


@pytest.mark.parametrize("call, field", [
    (lambda: rules.dnat("a b", "tcp", "198.18.0.1:80", "198.18.0.2"), "rule"),
    (lambda: rules.dnat("x", "icmp", "198.18.0.1:80", "198.18.0.2"), "rule x.proto"),
    (lambda: rules.dnat("x", "tcp", "198.18.0.1:99999", "198.18.0.2"), "rule x.match"),
    (lambda: rules.dnat("x", "tcp", "198.18.0.1", "198.18.0.2:80"), "rule x.to"),
    (lambda: rules.dnat("x", "tcp", "198.18.0.1:80", "fd00::2"), "rule x.to"),
    (lambda: rules.snat("x", "198.18.0.0/24", "198.18.0.2:80"), "rule x.to"),
    (lambda: rules.snat("x", "198.18.0.0/24", "198.18.0.2", ports="0-10"), "rule x.ports"),
    (lambda: rules.rule_from({"name": "x", "kind": "masq", "match": "a", "to": "b"}), "rule x.kind"),
    (lambda: rules.rule_from({"name": "x", "kind": "dnat", "match": "a", "to": "b", "color": 1}), "rule x.color"),
    (lambda: rules.service("s", "tcp", "198.18.0.1", []), "service s.vip"),
    (lambda: rules.service("s", "tcp", "198.18.0.1:80", [], table_size=65536), "service s.table_size"),
    (lambda: rules.service("s", "tcp", "198.18.0.1:80", ["fd00::1"]), "service s.backends[0]"),
    (lambda: rules.service("s", "tcp", "198.18.0.1:80", ["198.18.0.2@0"]), "service s.backends[0]"),
    (lambda: rules.service("s", "tcp", "198.18.0.1:80", ["198.18.0.2", "198.18.0.2"]), "service s.backends[1]"),
    (lambda: rules.service("s", "tcp", "198.18.0.1:80", [f"198.18.0.2@{rules.MAX_WEIGHT + 1}"]),
     "service s.backends[0]"),
    (lambda: rules.service_from({"name": "s", "proto": "tcp", "vip": "198.18.0.1:80",
                                 "backends": [{"backend": "198.18.0.2", "weight": "3"}]}), "service s.backends[0]"),
    (lambda: rules.service_from({"name": "s", "proto": "tcp", "vip": "198.18.0.1:80",
                                 "backends": [{"backend": "198.18.0.2", "weight": True}]}), "service s.backends[0]"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(PolicyError) as e:
        call()
    assert e.value.path == field


def test_service_backends_and_weights():
    s = rules.service("api", "udp", "198.18.0.1:53", ["198.18.0.2@3", "198.18.0.3:5353"])
    assert [(b.name, b.weight) for b in s.backends] == [("198.18.0.2", 3), ("198.18.0.3:5353", 1)]
    assert rules.service_from(s.to_dict()) == s
    heavy = rules.service("api", "udp", "198.18.0.1:53", [f"198.18.0.2@{rules.MAX_WEIGHT}", "198.18.0.3"])
    assert [b.weight for b in heavy.backends] == [rules.MAX_WEIGHT, 1]
    # at the bound, the default table still gives the weight-1 backend a slot
    assert maglev.shares(maglev.build(heavy.weights()))["198.18.0.3"] > 0


def test_maglev_follows_weights_and_fills_every_slot():
    t = maglev.build([("a", 1), ("b", 3), ("c", 6)], 10007)
    assert None not in t
    sh = maglev.shares(t)
    for name, w in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert abs(sh[name] - w) < 0.01
    assert maglev.build([("a", 1)], 7) == ["a"] * 7 and maglev.build([], 7) == [None] * 7


def test_maglev_removal_moves_the_removed_backends_slots_and_little_else():
    # Maglev is near-minimal, not minimal: with a table > 100x the backends, <= 1% more than the removed share
    # moves (flows themselves stay put through their conntrack entries, tests/kernel/test_lb.py)
    names = [(f"b{i}", 1) for i in range(20)]
    old = maglev.build(names, 65537)
    new = maglev.build(names[:-1], 65537)
    moved = [i for i in range(len(old)) if old[i] != new[i]]
    assert {i for i, b in enumerate(old) if b == "b19"} <= set(moved)
    assert maglev.disruption(old, new) == len(moved) / 65537
    assert maglev.disruption(old, new) - maglev.shares(old)["b19"] < 0.01
    # drained (weight 0) is removed from the table the same way
    assert maglev.build([*names[:-1], ("b19", 0)], 65537) == new


def test_the_nat_word_test_is_regex_word_boundaries():
    import random
    import re

    from bpfgate.nat import policy as nat_policy

    rng = random.Random(7)
    words = ["nat", "xnat", "nat_", "_nat", "nat1", "a nat", "nat:", "énat", "denat-x", "nat\n", "(nat)", "NAT",
             "nat\u0301", "1nat", "-nat-", "ナnat", "nat٣"]
    word = re.compile(r"\bnat\b")
    for _ in range(5000):
        text = "".join(rng.choice(words + [" ", "\n", "x", "é", "_", "-"]) for _ in range(rng.randint(0, 6)))
        assert nat_policy._maybe_nat(text) == bool(word.search(text)), repr(text)
