"""The policy commands through the real entry point (bpfgate.cli.main.run: errors mapped once), with the
control plane on MemoryBackend: bad input gives one line and an exit code, never a traceback."""

from __future__ import annotations

import json

import pytest

from bpfgate import policyctl
from bpfgate.cli import main

GOOD = """\
version: 1
interfaces: [eth0]
hooks:
  tc-ingress:
    default: deny
    rules:
      - name: est
        ct: [established, related]
      - name: web
        protocol: tcp
        dst_port: 80
"""


@pytest.fixture
def be(monkeypatch):
    b = policyctl.MemoryBackend()
    monkeypatch.setattr(policyctl.common, "default_backend", b)
    monkeypatch.setattr(policyctl._confirm, "STATE_DIR", "/nonexistent-bpfgate-test-state")
    return b


def run(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main.run(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("text, where", [
    ("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n      - name: a\n        dst_port: 80\n",
     "bad.yaml:6 hooks.tc-ingress.rules[0].dst_port: ports need protocol"),
    ("interfaces: [eth0]\nhooks:\n  tc-sideways: {}\n", "bad.yaml:3 hooks.tc-sideways"),
    ("interfaces: [eth0]\nhooks: {tc-ingress: {rules: [{name: a, colour: red}]}}\n", "unknown field"),
    ("interfaces: [eth0\n", "not valid YAML"),
])
def test_bad_policy_file_is_one_line(be, capsys, tmp_path, text, where):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    code, _out, err = run(capsys, "apply", str(f))
    assert code == 2 and where in one_line_error(err) and be.log == []


def test_missing_file_and_usage_errors(be, capsys, tmp_path):
    code, _, err = run(capsys, "apply", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read" in one_line_error(err)
    code, _, err = run(capsys, "apply")
    assert code == 2 and "missing FILE" in err and "Traceback" not in err
    code, _, err = run(capsys, "apply", "--confirmed", "--dry-run", "x.yaml")
    assert code == 2 and "cannot be combined" in err
    code, _, err = run(capsys, "confirm", "--netns", "no-such-pending")
    assert code == 2 and "no change is waiting" in one_line_error(err)


def test_apply_prints_changes_then_no_change(be, capsys, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    code, out, _ = run(capsys, "apply", "--dry-run", str(f))
    assert code == 0 and "+ eth0 tc-ingress: attach, default deny, 2 rule(s)" in out and "dry run" in out
    assert be.log == []
    code, out, _ = run(capsys, "apply", str(f))
    assert code == 0 and "+ rule web added at 1" in out and "applied: 1 attach" in out
    code, out, _ = run(capsys, "apply", str(f))
    assert code == 0 and "no change" in out
    code, out, _ = run(capsys, "apply", "--json", str(f))
    assert code == 0 and json.loads(out)["changed"] is False
    f.write_text(GOOD.replace("dst_port: 80", "dst_port: 8080"))
    code, out, _ = run(capsys, "apply", "--json", str(f))
    d = json.loads(out)
    assert d["applied"] and d["hooks"][0]["rules"] == [{"kind": "changed", "name": "web", "position": 1,
                                                        "fields": ["dst_port"]}]


def test_guard_message_and_force(be, capsys, tmp_path):
    f = tmp_path / "cut.yaml"
    f.write_text(GOOD.replace("ct: [established, related]", "protocol: udp"))
    code, _, err = run(capsys, "apply", str(f))
    assert code == 2 and "cut established connections" in one_line_error(err) and be.log == []
    code, out, _ = run(capsys, "apply", "--force", str(f))
    assert code == 0 and "applied" in out


def test_rules_table_cuts_a_long_address_list_and_json_has_it_all(be, capsys, tmp_path):
    nets = [f"198.18.{i // 256}.{i % 256}/32" for i in range(1000)]
    f = tmp_path / "p.yaml"
    f.write_text("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n      - name: block\n"
                 f"        src: [{', '.join(nets)}]\n        protocol: [tcp, udp, sctp]\n        action: drop\n")
    run(capsys, "apply", str(f))
    code, out, _ = run(capsys, "rules")
    assert code == 0 and "1000 in all; --json lists them" in out and "198.18.0.7/32" in out
    assert "198.18.0.8/32" not in out and "protocol=tcp,udp,sctp" in out.replace(" ", "").replace("\n", "")
    code, out, _ = run(capsys, "rules", "--json")
    (block,) = [r for r in json.loads(out) if r["name"] == "block"]
    assert block["match"].startswith("src=" + ",".join(nets) + " ")


def test_rule_add_del_rules_export(be, capsys, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    run(capsys, "apply", str(f))
    code, out, _ = run(capsys, "rule", "add", "--dev", "eth0", "--hook", "tc-ingress", "ssh", "--proto", "tcp",
                       "--dport", "22", "--src", "198.18.0.0/24", "--before", "web")
    assert code == 0 and "rule ssh added on eth0 tc-ingress at position 1" in out
    code, out, _ = run(capsys, "rule", "add", "--dev", "eth0", "lim", "--proto", "udp", "--rate", "10",
                       "--rate-per", "source", "--mark", "0x10", "--json")
    assert code == 0 and json.loads(out)["position"] == 3
    rule = be.running(None)[("eth0", policyctl.parse_hook("tc-ingress"))].rules[3]
    assert rule.mark == 16 and rule.rate_limit.per == "source"
    code, out, _ = run(capsys, "rules", "--json")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["est", "ssh", "web", "lim", "(default)"]
    assert rows[3]["options"]["rate_limit"]["rate"] == 10 and {"packets", "bytes"} <= set(rows[0])
    code, out, _ = run(capsys, "rules")
    assert code == 0 and "ssh" in out and "lim" in out
    code, out, _ = run(capsys, "rule", "del", "--dev", "eth0", "lim")
    assert code == 0 and "deleted" in out
    code, out, _ = run(capsys, "policy", "export")
    assert code == 0
    exported = tmp_path / "exported.yaml"
    exported.write_text(out)
    code, out, _ = run(capsys, "apply", str(exported))
    assert code == 0 and "no change" in out
    code, out, _ = run(capsys, "policy", "export", "--json")
    assert json.loads(out)[0]["interfaces"] == ["eth0"]
    code, out, _ = run(capsys, "policy", "remove", "--json")
    assert code == 0 and json.loads(out) == [{"dev": "eth0", "hook": "tc-ingress"}] and be.running(None) == {}
    code, _, err = run(capsys, "policy", "remove", "--dev", "eth0")
    assert code == 2 and "no bpfgate policy" in one_line_error(err)


@pytest.mark.parametrize("argv, msg", [
    (["rule", "add", "--dev", "eth0", "x", "--proto", "tcp", "--dport", "70000"], "port 70000 out of range"),
    (["rule", "add", "--dev", "eth0", "x", "--dport", "80"], "ports need protocol"),
    (["rule", "add", "--dev", "eth0", "x", "--src", "198.18.0.1/24"], "bad CIDR"),
    (["rule", "add", "--dev", "eth0", "x", "--ct", "sleepy"], "unknown ct state"),
    (["rule", "add", "--dev", "eth0", "x", "--proto", "tcp", "--tcp-flags", "syn,wat"], "unknown TCP flag"),
    (["rule", "add", "--dev", "eth0", "x", "--before", "nope"], "no rule named"),
    (["rule", "add", "--dev", "eth9", "x"], "no bpfgate policy is attached"),
    (["rule", "add", "--dev", "eth0", "est"], "exists"),
    (["rule", "del", "--dev", "eth0", "nope"], "no such rule"),
    (["rule", "del", "--dev", "eth0", "est"], "cut established"),
    (["rules", "--dev", "eth9"], "no bpfgate policy"),
])
def test_rule_bad_input_is_one_line(be, capsys, tmp_path, argv, msg):
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    run(capsys, "apply", str(f))
    n = len(be.log)
    code, _, err = run(capsys, *argv)
    assert code in (1, 2) and msg in one_line_error(err) and len(be.log) == n


def test_mark_must_be_a_number(be, capsys):
    code, _, err = run(capsys, "rule", "add", "--dev", "eth0", "x", "--mark", "ten")
    assert code == 2 and "not a number" in err and "Traceback" not in err


def test_apply_from_stdin(be, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD))
    code, out, _ = run(capsys, "apply", "-")
    assert code == 0 and "applied: 1 attach" in out
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD.replace("dst_port: 80", "dst_port: 99999")))
    code, _, err = run(capsys, "apply", "-")
    assert code == 2 and "<stdin>:11 hooks.tc-ingress.rules[1].dst_port" in one_line_error(err)


@pytest.mark.parametrize("ok", [True, False])
def test_demo_command_exit_code_and_json(monkeypatch, capsys, ok):
    from bpfgate import demo
    from bpfgate.kernel import caps

    res = demo.DemoResult([demo.Check("step one", "served", "HTTP 200", True),
                           demo.Check("step two", "dropped", "HTTP 200" if not ok else "no answer", ok)],
                          [{"position": 0, "name": "r", "action": "drop", "match": "any", "packets": 3, "bytes": 9}])
    monkeypatch.setattr(demo, "run", lambda report, timeout, mode: [report(c) for c in res.checks] and res)
    monkeypatch.setattr(caps, "require", lambda *a, **k: None)
    code, out, _ = run(capsys, "demo", "--json")
    d = json.loads(out)
    assert code == (0 if ok else 1) and d["ok"] is ok and len(d["checks"]) == 2 and d["counters"][0]["packets"] == 3
    code, out, _ = run(capsys, "demo")
    assert code == (0 if ok else 1)
    assert ("all 2 expectations held" in out) if ok else ("1 of 2 expectations failed" in out and "FAIL" in out)
