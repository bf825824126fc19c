"""`bpfgate doctor` command wiring without a kernel: run_checks is replaced by a canned report."""

from __future__ import annotations

import json

import pytest

from bpfgate import doctor
from bpfgate.cli import main
from bpfgate.doctor.model import Check


def canned(**status: str) -> list[Check]:
    out = []
    for n in doctor.names():
        st = status.get(n, "ok")
        out.append(Check(n, "system" if n == "tracefs" else "probe", st, f"{n} detail [x]",
                         impact="" if st == "ok" else f"{n} impact",
                         fix="mount -t tracefs nodev /sys/kernel/tracing" if n == "tracefs" and st != "ok" else None))
    return out


def run(monkeypatch, capsys, argv, checks, seen=None):
    def fake(*, fix=False, only=None):
        if seen is not None:
            seen.append(fix)
        return checks

    monkeypatch.setattr(doctor, "run_checks", fake)
    with pytest.raises(SystemExit) as e:
        main.run(argv)
    return e.value.code, capsys.readouterr()


def test_json_and_exit_zero_when_core_ok(monkeypatch, capsys):
    code, out = run(monkeypatch, capsys, ["doctor", "--json"], canned(kprobes="missing", fentry="missing"))
    doc = json.loads(out.out)
    assert code == 0 and doc["exit_code"] == 0 and doc["missing"] == ["kprobes", "fentry"]
    assert out.err == ""


def test_exit_one_when_an_essential_check_is_missing(monkeypatch, capsys):
    code, out = run(monkeypatch, capsys, ["doctor", "--json"], canned(tc="missing"))
    assert code == 1 and json.loads(out.out)["core_ok"] is False
    code, out = run(monkeypatch, capsys, ["doctor"], canned(xdp_generic="missing"))
    assert code == 1 and "core not ready: xdp_generic" in out.out


def test_table_shows_reason_impact_and_fix(monkeypatch, capsys):
    seen: list[bool] = []
    code, out = run(monkeypatch, capsys, ["doctor"], canned(tracefs="missing"), seen)
    assert code == 0 and seen == [False]
    text = " ".join(out.out.split())
    assert "MISSING" in text and "tracefs impact" in text and "[x]" in text  # detail is not Rich markup
    assert "mount -t tracefs nodev" in text and "core ready" in text


def test_fix_flag_is_passed(monkeypatch, capsys):
    seen: list[bool] = []
    run(monkeypatch, capsys, ["doctor", "--fix", "--json"], canned(), seen)
    assert seen == [True]
