"""What the CLI prints: tables never cut (plain full rows unless a terminal is wide enough), user text shown
as typed (no Rich markup), and big applies counted rather than listed line by line."""

from __future__ import annotations

import io
import threading

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


def test_long_table_on_a_terminal_is_plain_rows(monkeypatch):
    """Rich measures every cell: 100k rules took ~20 s on a terminal. Past RICH_ROWS_MAX rows, plain rows."""
    buf = _terminal(monkeypatch, 400)
    rows = [["eth0", "tc-ingress", f"r{i}", "src=198.18.0.0/15", "", i] for i in range(term.RICH_ROWS_MAX + 1)]
    term.table(None, COLS, rows)
    text = buf.getvalue().splitlines()
    assert "┃" not in "".join(text[:5]) and len(text) == len(rows) + 1 and text[-1].split()[2] == rows[-1][2]
    buf = _terminal(monkeypatch, 400)
    term.table(None, COLS, rows[:term.RICH_ROWS_MAX])
    assert "┃" in buf.getvalue()


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
    monkeypatch.setattr(policyctl.common, "default_backend", b)
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


@pytest.mark.parametrize("argv, kw", [
    (["apply", "p.yaml"], {"file": "p.yaml"}),
    (["apply", "--netns", "n1", "p.yaml", "--json"], {"file": "p.yaml", "netns": "n1", "as_json": True}),
    (["apply", "--netns=n1", "--dry-run", "-v", "p.yaml"], {"file": "p.yaml", "netns": "n1", "dry_run": True,
                                                           "verbose": True}),
])
def test_entry_reads_the_plain_apply_forms(argv, kw):
    from bpfgate.cli.entry import apply_args

    want = {"file": None, "netns": None, "dry_run": False, "as_json": False, "verbose": False, **kw}
    assert apply_args(argv) == want


@pytest.mark.parametrize("argv", [
    [], ["rules"], ["apply"], ["apply", "-"], ["apply", "a.yaml", "b.yaml"], ["apply", "--netns"],
    ["apply", "--netns", "--json", "p.yaml"], ["apply", "--netns=", "p.yaml"], ["apply", "--confirm", "30", "p.yaml"],
    ["apply", "--confirmed", "p.yaml"], ["apply", "--mode", "xdp-native", "p.yaml"], ["apply", "--force", "p.yaml"],
    ["apply", "--", "p.yaml"], ["apply", "-vx", "p.yaml"], ["apply", "--help"], ["apply", "", "p.yaml"],
])
def test_entry_leaves_every_other_form_to_click(argv):
    """Whatever the no-change answer is not sure of goes to the full command line (which errors or applies)."""
    from bpfgate.cli.entry import answered, apply_args

    assert apply_args(argv) is None and not answered(argv)


@pytest.mark.parametrize("argv, netns", [
    (["rule", "add", "x", "--dev", "eth0"], None), (["rule", "del", "x", "--netns", "n1", "--dev", "eth0"], "n1"),
    (["set", "add", "s", "198.18.0.1", "--netns=n1"], "n1"),
    (["set", "del", "--netns", "n0", "s", "80", "--netns", "n1"], "n1"),   # click's: the last one
])
def test_entry_reads_the_namespace_of_an_edit_an_agent_may_answer(argv, netns):
    from bpfgate.cli.entry import edit_args

    assert edit_args(argv) == {"netns": netns}


@pytest.mark.parametrize("argv", [
    [], ["rule"], ["rules"], ["rule", "list"], ["set", "list"], ["apply", "p.yaml"], ["rule", "add", "--help"],
    ["rule", "add", "x", "-h"], ["set", "add", "s", "--", "80"], ["rule", "del", "x", "--netns"],
    ["rule", "del", "x", "--netns", "--json"], ["rule", "del", "x", "--netns="], ["--json", "rule", "add", "x"],
])
def test_entry_leaves_other_commands_and_unsure_edits_to_click(argv):
    from bpfgate.cli.entry import answered_by_agent, edit_args

    assert edit_args(argv) is None and answered_by_agent(argv) is None


def test_captured_output_is_printed_as_the_clients_streams_would(capsys):
    """What the agent prints for a client is kept (not written to its own streams), with the client's colour
    and terminal; other threads still print to the real streams."""
    with term.Captured([True, False], [True, False]) as cap:
        term.ok("x [y]")
        other = threading.Thread(target=term.ok, args=("another thread",))
        other.start()
        other.join()
        term.print_json({"a": 1})
        term.error("bad\n thing")
    assert capsys.readouterr() == ("OK   another thread\n", "")
    assert cap.out.getvalue() == '\x1b[32mOK\x1b[0m   x [y]\n{\n  "a": 1\n}\n'
    assert cap.err.getvalue() == "bpfgate: error: bad thing\n"
    with term.Captured([False, True], [False, True]) as cap:
        term.print_json({"a": 1})
        term.warning("w")
    assert cap.out.getvalue() == '{"a": 1}\n' and cap.err.getvalue() == "\x1b[33mwarning:\x1b[0m w\n"
    term.ok("after")
    assert capsys.readouterr().out == "OK   after\n"


def test_messages_without_a_console_are_plain_and_coloured_only_on_a_terminal(capsys, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    for name in ("out", "err"):   # no Rich console made yet (another test's may be)
        monkeypatch.delitem(vars(term), name, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    term.ok("x [y]")
    term.error("bad\n  thing")
    out, err = capsys.readouterr()
    assert out == "OK   x [y]\n" and err == "bpfgate: error: bad thing\n"
    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    term.ok("x")
    assert tty.getvalue() == "\x1b[32mOK\x1b[0m   x\n"
    monkeypatch.setenv("NO_COLOR", "1")
    term.ok("z")
    assert tty.getvalue().endswith("OK   z\n")
