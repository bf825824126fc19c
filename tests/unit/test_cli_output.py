"""What the CLI prints: tables never cut (plain full rows unless a terminal is wide enough), user text shown
as typed (no Rich markup), and big applies counted rather than listed line by line."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bpfgate import policyctl
from bpfgate.cli import main, term

LONG = "protocol=tcp dst_port=" + ",".join(str(p) for p in range(8000, 8060))
COLS = ["dev", "hook", "rule", "match", "tag", "packets"]
ROWS = [["eth0", "tc-ingress", "web", LONG, "b69636b460695503", 7],
        ["eth0", "tc-ingress", "v6", "dst=[fd00::1]/128 [tcp]", "0b1d34b21972b405", 0]]


def _terminal(monkeypatch, width: int) -> io.StringIO:
    buf = io.StringIO()
    monkeypatch.setattr(term, "out", Console(file=buf, force_terminal=True, width=width, highlight=False,
                                             soft_wrap=True, color_system=None))
    return buf


def test_pipe_gets_plain_full_rows(capsys):
    term.table(None, COLS, ROWS)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == COLS and len(out) == 3
    assert LONG in out[1] and "dst=[fd00::1]/128 [tcp]" in out[2] and "…" not in "".join(out)


def test_wide_terminal_gets_a_table(monkeypatch):
    buf = _terminal(monkeypatch, 400)
    term.table(None, COLS, ROWS)
    text = buf.getvalue()
    assert "┃" in text and LONG in text and "[fd00::1]/128 [tcp]" in text and "…" not in text


def test_narrow_terminal_leaves_out_optional_columns_then_goes_plain(monkeypatch):
    buf = _terminal(monkeypatch, 50)
    term.table(None, ["dev", "hook", "rule", "tag", "packets"], [r[:3] + r[4:] for r in ROWS], optional=["tag"])
    text = buf.getvalue()
    assert "┃" in text and "b69636b460695503" not in text and "left out for the terminal's width: tag" in text
    assert max(len(ln) for ln in text.splitlines()[:-1]) <= 50
    buf = _terminal(monkeypatch, 80)
    term.table(None, COLS, ROWS, optional=["tag"])   # the match column alone is wider: plain rows, never cut
    text = buf.getvalue()
    assert "┃" not in text and LONG in text and "…" not in text


def test_user_text_is_not_markup(capsys):
    term.ok("protocol [tcp] and [bold]x[/bold]")
    term.info("[fd00::1]:80")
    term.warning("[red]not red[/red]")
    out, err = capsys.readouterr()
    assert "protocol [tcp] and [bold]x[/bold]" in out and "[fd00::1]:80" in out
    assert "[red]not red[/red]" in err


@pytest.fixture
def be(monkeypatch):
    b = policyctl.MemoryBackend()
    monkeypatch.setattr(policyctl.api, "_backend", lambda backend=None: backend or b)
    return b


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main.run(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_big_apply_is_counted_and_verbose_lists_each(be, capsys, tmp_path):
    f = tmp_path / "big.yaml"
    rules = "".join(f"      - {{name: r{i}, protocol: tcp, dst_port: {1000 + i}, action: drop}}\n" for i in range(120))
    f.write_text("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n" + rules)
    code, out, _ = _run(capsys, "apply", "--dry-run", str(f))
    assert code == 0 and "120 rule(s) added (--verbose lists each)" in out and len(out.splitlines()) == 3
    code, out, _ = _run(capsys, "apply", "--dry-run", "-v", str(f))
    assert code == 0 and "+ rule r119 added at 119" in out and len(out.splitlines()) == 122
    code, out, _ = _run(capsys, "apply", str(f))
    assert code == 0 and len(out.splitlines()) == 3 and "applied: 1 attach; 120 rule change(s)" in out
