"""`bpfgate doctor` command wiring without a kernel: run_checks is replaced by a canned report. The
command is registered on its own group, so other command modules cannot break these tests."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from bpfgate import doctor
from bpfgate.cli import doctor_cmd
from bpfgate.doctor.model import Check


def canned(**status: str) -> list[Check]:
    out = []
    for n in doctor.names():
        st = status.get(n, "ok")
        out.append(Check(n, "system" if n == "tracefs" else "probe", st, f"{n} detail [x]",
                         impact="" if st == "ok" else f"{n} impact",
                         fix="mount -t tracefs nodev /sys/kernel/tracing" if n == "tracefs" and st != "ok" else None))
    return out


def run(monkeypatch, argv, checks, seen=None):
    def fake(*, fix=False, only=None):
        if seen is not None:
            seen.append(fix)
        return checks

    monkeypatch.setattr(doctor, "run_checks", fake)
    app = click.Group()
    doctor_cmd.register(app)
    result = CliRunner().invoke(app, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result


def test_json_and_exit_zero_when_core_ok(monkeypatch):
    code, out = run(monkeypatch, ["doctor", "--json"], canned(kprobes="missing", fentry="missing"))
    doc = json.loads(out.output)
    assert code == 0 and doc["exit_code"] == 0 and doc["missing"] == ["kprobes", "fentry"]


def test_exit_one_when_an_essential_check_is_missing(monkeypatch):
    code, out = run(monkeypatch, ["doctor", "--json"], canned(tc="missing"))
    assert code == 1 and json.loads(out.output)["core_ok"] is False
    code, out = run(monkeypatch, ["doctor"], canned(xdp_generic="missing"))
    assert code == 1 and "core not ready: xdp_generic" in out.output


def test_table_shows_reason_impact_and_fix(monkeypatch):
    seen: list[bool] = []
    code, out = run(monkeypatch, ["doctor"], canned(tracefs="missing"), seen)
    assert code == 0 and seen == [False]
    text = " ".join(out.output.split())
    assert "MISSING" in text and "tracefs impact" in text and "[x]" in text  # detail is not Rich markup
    assert "mount -t tracefs nodev" in text and "core ready" in text


def test_fix_flag_is_passed(monkeypatch):
    seen: list[bool] = []
    run(monkeypatch, ["doctor", "--fix", "--json"], canned(), seen)
    assert seen == [True]
