"""The rule language's additions that peers' users reach for: a rule's `comment`, counter reset (`rules
--reset`), through the real CLI entry point with the control plane on MemoryBackend."""

from __future__ import annotations

import json

import pytest
from test_policyctl_cli import be, one_line_error, run  # noqa: F401 - `be` is a fixture

from bpfgate.errors import PolicyError
from bpfgate.policy.model import Hook, HookPolicy, Rule
from bpfgate.policy.parse import load_text
from bpfgate.policy.ruledata import rule_data, rule_from_data

COMMENTED = """\
version: 1
interfaces: [eth0]
hooks:
  tc-ingress:
    default: allow
    rules:
      - name: web
        protocol: tcp
        dst_port: 80
        action: drop
        comment: "no plain HTTP [ticket 12]: use 443"
      - name: dns
        protocol: udp
        dst_port: 53
"""


def test_comment_round_trips_and_never_matches():
    pol = load_text(COMMENTED)
    web = pol.hooks[Hook.TC_INGRESS].rules[0]
    assert web.comment == "no plain HTTP [ticket 12]: use 443" and web.match_fields() == ["protocol", "dst_port"]
    assert rule_data(web)["comment"] == web.comment and rule_from_data(rule_data(web)) == web
    assert "comment" not in rule_data(pol.hooks[Hook.TC_INGRESS].rules[1])


@pytest.mark.parametrize("value, msg", [("", "at least 1 character"), ("two\nlines", "one line"),
                                        ("x" * 257, "at most 256"), (5, "valid string")])
def test_bad_comment_is_refused_at_its_line(value, msg):
    text = COMMENTED.replace('"no plain HTTP [ticket 12]: use 443"', json.dumps(value))
    with pytest.raises(PolicyError) as e:
        load_text(text, "p.yaml")
    assert e.value.path == "p.yaml:11 hooks.tc-ingress.rules[0].comment" and msg in e.value.reason


@pytest.fixture
def wide(monkeypatch):
    """A terminal wide enough for every column (rows are not cut)."""
    from bpfgate.cli import term

    monkeypatch.setattr(term.out, "width", 300)


def test_comment_through_apply_rules_export_and_rule_add(be, capsys, tmp_path, wide):  # noqa: F811
    f = tmp_path / "p.yaml"
    f.write_text(COMMENTED)
    assert run(capsys, "apply", str(f))[0] == 0
    code, out, _ = run(capsys, "rule", "add", "--dev", "eth0", "ssh", "--proto", "tcp", "--dport", "22",
                       "--comment", "ops jump host")
    assert code == 0
    rows = json.loads(run(capsys, "rules", "--json")[1])
    assert {r["name"]: r["comment"] for r in rows} == {"web": "no plain HTTP [ticket 12]: use 443", "dns": None,
                                                       "ssh": "ops jump host", "(default)": None}
    code, out, _ = run(capsys, "rules")
    assert code == 0 and "comment" in out and "ops jump host" in out
    code, out, _ = run(capsys, "policy", "export")
    assert "comment: 'no plain HTTP [ticket 12]: use 443'" in out and "comment: ops jump host" in out
    exported = tmp_path / "e.yaml"
    exported.write_text(out)
    assert "no change" in run(capsys, "apply", str(exported))[1]
    # a changed comment is a change of that rule alone
    exported.write_text(out.replace("ops jump host", "ops bastion"))
    code, out, _ = run(capsys, "apply", str(exported))
    assert code == 0 and "~ rule ssh: comment changed" in out


def test_rules_without_comments_have_no_comment_column(be, capsys, tmp_path, wide):  # noqa: F811
    f = tmp_path / "p.yaml"
    f.write_text(COMMENTED.replace('        comment: "no plain HTTP [ticket 12]: use 443"\n', ""))
    run(capsys, "apply", str(f))
    assert "comment" not in run(capsys, "rules")[1]


def test_reset_all_and_per_rule(be, capsys, tmp_path):  # noqa: F811
    f = tmp_path / "p.yaml"
    f.write_text(COMMENTED)
    run(capsys, "apply", str(f))
    key = (None, "eth0", Hook.TC_INGRESS)
    be.packets[key] = {"web": 5, "dns": 7, "(default)": 9}
    code, out, _ = run(capsys, "rules", "--reset", "--rule", "web", "--json")
    assert code == 0 and [(r["name"], r["packets"]) for r in json.loads(out)] == [("web", 5)]
    assert be.packets[key] == {"dns": 7, "(default)": 9}
    code, out, _ = run(capsys, "rules", "--json", "--rule", "(default)")
    assert [(r["name"], r["packets"]) for r in json.loads(out)] == [("(default)", 9)]
    code, out, _ = run(capsys, "rules", "--reset")
    assert code == 0 and "counters of 3 rule(s) reset" in out
    assert be.packets[key] == {}
    assert all(r["packets"] == 0 for r in json.loads(run(capsys, "rules", "--json")[1]))


def test_reset_of_an_unknown_rule_changes_nothing(be, capsys, tmp_path):  # noqa: F811
    f = tmp_path / "p.yaml"
    f.write_text(COMMENTED)
    run(capsys, "apply", str(f))
    be.packets[(None, "eth0", Hook.TC_INGRESS)] = {"web": 5}
    n = len(be.log)
    code, _, err = run(capsys, "rules", "--reset", "--rule", "web", "--rule", "nope")
    assert code == 2 and "rule nope" in one_line_error(err) and "no such rule" in err
    assert be.packets[(None, "eth0", Hook.TC_INGRESS)] == {"web": 5} and len(be.log) == n
    code, _, err = run(capsys, "rules", "--reset", "--dev", "eth9")
    assert code == 2 and "no bpfgate policy" in one_line_error(err)


def test_reset_with_nothing_running_is_not_found(be, capsys):  # noqa: F811
    code, _, err = run(capsys, "rules", "--reset")
    assert code == 2 and "no bpfgate policy is running" in one_line_error(err)
    code, out, _ = run(capsys, "rules")     # listing nothing is no error (as `nft list ruleset`)
    assert code == 0 and "no bpfgate policy is running" in out


# ---- reject ------------------------------------------------------------------------------------------

def _rule(**kw):
    return load_text("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n      - "
                     + json.dumps({"name": "r", "protocol": "udp", **kw}) + "\n", "p.yaml")


def test_reject_defaults_options_and_shorthand():
    from bpfgate.policy import layout as L
    from bpfgate.policy.compile import rule_action

    plain = _rule(action="reject").hooks[Hook.TC_INGRESS].rules[0]
    assert plain.reject is None and rule_data(plain) == {"name": "r", "protocol": "udp", "action": "reject"}
    act = rule_action(plain)
    assert (act.action, act.reject_with, act.reject_rate) == (L.ACT_REJECT, L.REJECT_WITH["port-unreachable"], 100)
    full = _rule(action="reject", reject={"with": "admin-prohibited", "rate": 5}).hooks[Hook.TC_INGRESS].rules[0]
    short = _rule(action={"reject": {"with": "admin-prohibited", "rate": 5}}).hooks[Hook.TC_INGRESS].rules[0]
    assert full == short and rule_from_data(rule_data(full)) == full
    assert rule_data(full)["reject"] == {"with": "admin-prohibited", "rate": 5}
    act = rule_action(full)
    assert (act.reject_with, act.reject_rate) == (L.REJECT_WITH["admin-prohibited"], 5)
    assert len(act.pack()) == L.RULE.size
    assert _rule(action={"reject": None}).hooks[Hook.TC_INGRESS].rules[0] == plain


@pytest.mark.parametrize("kw, field, msg", [
    ({"action": "drop", "reject": {"rate": 5}}, "reject", "reject options given but action is drop"),
    ({"action": "reject", "mark": 1}, "mark", "mark on a rejected packet has no effect"),
    ({"action": "reject", "reject": {"with": "host-unreachable"}}, "reject.with", "port-unreachable"),
    ({"action": "reject", "reject": {"rate": 0}}, "reject.rate", "greater than 0"),
    ({"action": "reject", "reject": {"rate": 10**6}}, "reject.rate", "less than or equal to 100000"),
    # the shorthand has no place in the file below `reject`/`redirect`: the unknown field is named
    ({"action": {"reject": {"rate": 5, "extra": 1}}}, "reject", "unknown field 'extra'"),
    ({"action": {"redirect": {"interface": "eth1", "extra": 1}}}, "redirect", "unknown field 'extra'"),
    ({"action": "reject", "reject": {"extra": 1}}, "reject.extra", "unknown field"),
    # a scalar where a mapping belongs: no class name of the model in the message
    ({"action": {"redirect": "eth1"}}, "redirect", "should be a mapping (key: value, ...)"),
])
def test_bad_reject_is_refused_at_its_field(kw, field, msg):
    with pytest.raises(PolicyError) as e:
        _rule(**kw)
    assert e.value.path.endswith(f"rules[0].{field}") and msg in e.value.reason


def test_reject_at_xdp_is_refused_with_advice():
    with pytest.raises(PolicyError) as e:
        load_text("interfaces: [eth0]\nhooks:\n  xdp:\n    rules:\n      - {name: r, action: reject}\n", "p.yaml")
    assert e.value.path == "p.yaml:5 hooks.xdp.rules[0].action" and "use tc-ingress" in e.value.reason


def test_rule_add_reject_options(be, capsys, tmp_path):  # noqa: F811
    f = tmp_path / "p.yaml"
    f.write_text(COMMENTED)
    run(capsys, "apply", str(f))
    code, _, err = run(capsys, "rule", "add", "--dev", "eth0", "closed", "--proto", "udp", "--dport", "9",
                       "--action", "reject", "--reject-with", "admin-prohibited", "--reject-rate", "7")
    assert code == 0, err
    rule = be.running(None)[("eth0", Hook.TC_INGRESS)].rules[-1]
    assert rule.action == "reject" and (rule.reject.with_, rule.reject.rate) == ("admin-prohibited", 7)
    rows = {r["name"]: r for r in json.loads(run(capsys, "rules", "--json")[1])}
    assert rows["closed"]["action"] == "reject" and rows["closed"]["options"]["reject"]["with"] == "admin-prohibited"
    code, _, err = run(capsys, "rule", "add", "--dev", "eth0", "x", "--reject-rate", "7")
    assert code in (1, 2) and "action is pass" in one_line_error(err)


# ---- negated matches ---------------------------------------------------------------------------------

def _rules(*rules, default="allow"):
    return HookPolicy.model_validate({"default": default, "rules": list(rules)})


def test_negation_parses_round_trips_and_expands_to_the_complement():
    import ipaddress

    r = Rule.model_validate({"name": "x", "src": "!198.18.0.0/16", "protocol": ["!tcp", "!udp"],
                             "dst": ["!fd00::/8", "!fe80::/10"]})
    assert r.negated == ("src", "dst", "protocol") and r.src == (ipaddress.ip_network("198.18.0.0/16"),)
    assert rule_data(r)["src"] == "!198.18.0.0/16" and rule_data(r)["protocol"] == ["!tcp", "!udp"]
    assert rule_from_data(rule_data(r)) == r
    comp = r.matching("src")
    assert len(comp) == 16 and all(n.version == 4 for n in comp)          # a /16 leaves 16 prefixes
    assert sum(n.num_addresses for n in comp) + 2 ** 16 == 2 ** 32
    assert not any(n.overlaps(ipaddress.ip_network("198.18.0.0/16")) for n in comp)
    assert all(n.version == 6 and not n.overlaps(ipaddress.ip_network("fd00::/8")) for n in r.matching("dst"))
    assert set(r.matching("protocol")) == set(range(256)) - {6, 17}
    ports = Rule.model_validate({"name": "p", "protocol": "tcp", "dst_port": ["!22", "!8000-8099"]})
    assert ports.matching("dst_port") == ((0, 21), (23, 7999), (8100, 65535))
    assert Rule.model_validate({"name": "n", "src": "!0.0.0.0/0"}).matching("src") == ()


@pytest.mark.parametrize("kw, where, msg", [
    ({"src": ["!198.18.0.0/16", "198.19.0.0/16"]}, "rules[0]", "negate every item"),
    ({"protocol": "!tcp", "dst_port": 80}, "rules[0].dst_port", "ports need protocol tcp, udp or sctp"),
    ({"negated": ["src"], "src": "198.18.0.0/16"}, "rules[0]", "negate a value with '!'"),
    ({"src": "!"}, "rules[0].src", "bad CIDR"),
    ({"protocol": "tcp", "dst_port": "!70000"}, "rules[0].dst_port", "out of range"),
])
def test_bad_negation_is_refused(kw, where, msg):
    with pytest.raises(PolicyError) as e:
        load_text("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n      - "
                  + json.dumps({"name": "r", **kw}) + "\n", "p.yaml")
    assert e.value.path.endswith(where) and msg in e.value.reason


def _verdicts(hp, packets):
    from bpfgate.policy.classify import Reference, naive
    from bpfgate.policy.compile import compile_hook

    c = compile_hook(hp, Hook.TC_INGRESS, ifindex=lambda n: 1)
    ref = Reference(c.conf(), c.cls, c.rules, c.names, c.classes)
    out = []
    for p in packets:
        got = ref.classify(p).name
        assert got == naive(hp, p).name, p
        out.append(got)
    return out, c


def test_negated_fields_match_only_packets_that_have_the_field():
    from bpfgate.policy.packet import Packet

    hp = _rules({"name": "outsiders", "src": "!198.18.0.0/16", "protocol": "tcp", "dst_port": "!443",
                 "action": "drop"})
    pk = lambda src, proto=6, dport=80, fam=4: Packet(family=fam, src=ipaddress.ip_address(src),  # noqa: E731
                                                      dst=ipaddress.ip_address("198.18.9.9" if fam == 4 else "fd00::9"),
                                                      proto=proto, sport=1234, dport=dport)
    import ipaddress

    got, c = _verdicts(hp, [pk("10.0.0.1"), pk("198.18.3.4"), pk("10.0.0.1", dport=443), pk("fd00::1", fam=6),
                            pk("10.0.0.1", proto=17)])
    assert got == ["outsiders", "(default)", "(default)", "(default)", "(default)"]
    # an address complement's prefixes (/1 .. /16): those of /8 and longer become prefix classes (one shape),
    # the shorter ones one raw shape (merged to /7: 127 entries): two shapes, not 16
    _got, c = _verdicts(_rules({"name": "o", "src": "!198.18.0.0/16", "protocol": "tcp", "dst_port": 80}), [])
    assert len(c.conf().shapes) == 2


def test_negation_keeps_the_shape_count_flat_and_the_classifier_report_says_its_cost():
    from bpfgate.policyctl.cost import report

    rules = [{"name": f"r{i}", "src": f"!198.{18 + i // 256}.{i % 256}.0/24", "protocol": "tcp", "dst_port": 80 + i,
              "action": "drop"} for i in range(200)]
    _got, c = _verdicts(_rules(*rules), [])
    rep = report("eth0", "tc-ingress", 200, c, c.conf())
    assert rep.lookups_worst <= 3, [s.fields for s in rep.shapes]
    assert len(rep.negations) == 200 and rep.negations[0].expands_to == 24
    assert "rule r0: src negated (1 written) = 24 prefixes; the rule holds" in rep.negations[0].line()
    assert rep.to_dict()["negations"][0]["field"] == "src"


def test_negation_in_rules_and_classifier_output(be, capsys, tmp_path, wide):  # noqa: F811
    f = tmp_path / "p.yaml"
    f.write_text("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n"
                 "      - {name: out, src: '!198.18.0.0/16', protocol: tcp, dst_port: '!22', action: drop}\n")
    assert run(capsys, "apply", str(f))[0] == 0
    rows = json.loads(run(capsys, "rules", "--json")[1])
    assert rows[0]["match"] == "src=!198.18.0.0/16 protocol=tcp dst_port=!22"
    code, out, _ = run(capsys, "policy", "classifier")
    assert code == 0 and "rule out: src negated (1 written) = 16 prefixes" in out
    assert "rule out: dst_port negated (1 written) = 2 port ranges" in out
    code, out, _ = run(capsys, "policy", "export")
    assert "src: '!198.18.0.0/16'" in out and "dst_port: '!22'" in out
def test_capture_of_a_reject_rule_labels_its_packets_dropped():
    from bpfgate.inspect.capture import VERDICTS, rule_filter

    rule = _rule(action="reject", dst_port=53).hooks[Hook.TC_INGRESS].rules[0]
    assert VERDICTS[rule_filter(rule).verdict] == "drop"
