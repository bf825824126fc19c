"""The rule language's additions that peers' users reach for: a rule's `comment`, counter reset (`rules
--reset`), through the real CLI entry point with the control plane on MemoryBackend."""

from __future__ import annotations

import json

import pytest
from test_policyctl_cli import be, one_line_error, run  # noqa: F401 - `be` is a fixture

from bpfgate.errors import PolicyError
from bpfgate.policy.model import Hook
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
