"""`rules` as columns: the rows a listing keeps, the journal replayed onto them, and the JSON written
straight from them, each against what the models and json.dumps give."""

from __future__ import annotations

import ipaddress
import json
import pickle
import random

from bpfgate import policyctl
from bpfgate.engine.listing import Listing
from bpfgate.policy.listed import LISTED_OPTIONS, MATCH_FIELDS, data_row
from bpfgate.policy.model import Policy, Rule
from bpfgate.policy.ruledata import net_text, rule_data, rule_from_data, rule_row
from bpfgate.policyctl.backend import MemoryBackend

RULES = [
    {"name": "web", "protocol": "tcp", "dst_port": [80, "8000-8099"], "action": "drop"},
    {"name": "v6", "src": ["!fd00::/64", "!fd00::1:0/112"], "action": "drop", "comment": "lab net ünïcode"},
    {"name": "lim", "protocol": "udp", "rate_limit": {"rate": 10, "unit": "packets", "over": "drop"}, "action": "pass"},
    {"name": "auto", "src": "198.18.0.0/24", "action": "drop", "owner": "syn-guard"},
    {"name": "flags", "protocol": "tcp", "tcp_flags": "syn,!ack", "ct": ["new"], "action": "drop", "count": False, "comment": 'say "hi"\\'},
    {"name": "any"},
]


def test_match_fields_are_the_models():
    fields = tuple(f for f in Rule.model_fields if f not in {"name", "action", "comment", "owner", "negated",
                                                            *LISTED_OPTIONS})
    assert MATCH_FIELDS == fields


def test_rows_columns_and_their_round_trip():
    rules = [rule_from_data(d) for d in RULES]
    rows = [rule_row(r) for r in rules]
    ls = Listing.of_rows("deny", 0, [7, 3, 9, 1, 4, 2], rows)
    assert ls.rows() == rows and ls.by_rid()[9] == rows[2]
    assert set(ls.more) == {3, 9, 1, 4}   # only the rules with options, an owner or a comment
    again = Listing.from_state(pickle.loads(pickle.dumps(ls.to_state())))   # as the listing file keeps it
    assert again.rows() == rows and again.default == "deny"
    by_action = {}
    assert all(by_action.setdefault(a, a) is a for a in again.actions)   # one str per action, not per row


def test_journal_replay_gives_the_rows_of_the_edited_state():
    rules = [rule_from_data(d) for d in RULES[:3]]
    ls = Listing.of_rows("allow", 0, [1, 2, 3], [rule_row(r) for r in rules])
    new = rule_from_data({"name": "new", "dst": "198.18.1.0/24", "action": "drop", "comment": "c"})
    repl = rule_from_data({"name": "web2", "protocol": "tcp", "dst_port": 443, "action": "reject"})
    records = [
        {"op": "add", "rule": rule_data(new), "position": 1, "slots": {"new": 4}},
        {"op": "delete", "name": "v6"},
        {"op": "replace", "name": "web", "rule": rule_data(repl), "slots": {"web2": 5}},
        {"op": "batch", "edits": [{"op": "delete", "name": "new"},
                                  {"op": "add", "rule": rule_data(new), "position": None}], "slots": {"new": 6}},
        {"op": "set_add", "name": "s", "elements": ["198.18.0.1"]},
        {"op": "release", "slots": [2]},
    ]
    assert ls.replay(records)
    assert ls.rids == [5, 3, 6]
    assert ls.rows() == [rule_row(repl), rule_row(rules[2]), rule_row(new)]
    assert set(ls.more) == {3, 6}
    old = Listing.of_rows("allow", 0, [1], [rule_row(rules[0])])
    assert not old.replay([{"op": "add", "rule": rule_data(new), "position": None}])   # no slots: cannot follow


def test_rules_json_is_what_json_dumps_writes():
    be = MemoryBackend()
    doc = {"version": 1, "interfaces": ["eth0", "eth1"], "hooks": {"tc-ingress": {"default": "deny", "rules": RULES}}}
    policyctl.apply(Policy.model_validate(doc), netns="ns", backend=be, force=True)
    be.packets[("ns", "eth0", policyctl.parse_hook("tc-ingress"))] = {"web": 12, "(default)": 3}
    tables = policyctl.rule_tables(netns="ns", backend=be)
    rows = policyctl.rules(netns="ns", backend=be)
    assert len(rows) == 2 * (len(RULES) + 1) and rows[0].packets == 12 and rows[len(RULES)].packets == 3
    assert policyctl.rules_json(tables) == json.dumps([r.to_dict() for r in rows], default=str)
    assert policyctl.rules_json(tables, indent=True) == json.dumps([r.to_dict() for r in rows], default=str, indent=2)
    assert policyctl.rules_json([], indent=True) == "[]"
    some = policyctl.rule_tables(netns="ns", backend=be, names=["v6", "(default)"], dev="eth1")
    assert policyctl.rules_json(some) == json.dumps(
        [r.to_dict() for r in policyctl.rules("eth1", netns="ns", backend=be, names=["v6", "(default)"])])


def test_net_text_is_ipaddress_text():
    rng = random.Random(7)
    nets = [ipaddress.ip_network(t) for t in ("::/0", "::1/128", "::ffff:0:0/96", "::ffff:1.2.3.4/128", "::1.2.3.4/128",
                                               "::ffff:0:1.2.3.4/128", "64:ff9b::102:304/128", "1:0:0:1::/64",
                                               "1:0:1:0:0:1::/96", "0:0:1::/48", "0.0.0.0/0", "198.18.0.0/15")]
    for _ in range(20000):   # zero runs of every length and place, ffff words, IPv4
        words = [rng.choice([0, 0, 0, 1, 0xffff, rng.randrange(1 << 16)]) for _ in range(8)]
        nets.append(ipaddress.IPv6Network((int("".join(f"{w:04x}" for w in words), 16), 128)))
        nets.append(ipaddress.IPv4Network((rng.randrange(1 << 32), 32)))
    assert [net_text(n) for n in nets] == [str(n) for n in nets]


def test_rule_row_of_plain_rules_is_the_generic_one():
    plain = [{"name": "a", "src": ["198.18.0.0/16", "fd00::/64"], "dst": "198.19.0.1", "action": "drop"},
             {"name": "b", "protocol": ["tcp", "udp"], "src_port": "1024-2048", "dst_port": [53, "80-81"]},
             {"name": "c", "protocol": 99, "action": "drop"}, {"name": "d"}]
    for d in plain + RULES:
        rule = rule_from_data(d)
        assert rule_row(rule) == data_row(rule_data(rule)), d
