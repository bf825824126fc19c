"""The one terminal helper: tables, JSON output, messages. Commands print through here."""

from __future__ import annotations

import io
import os
import sys
from contextvars import ContextVar

TYPE_CHECKING = False   # not `from typing`: typing is ~5 ms of the start of a command answered before click
if TYPE_CHECKING:
    from typing import Any, Iterable, Sequence

    from rich.console import Console
    from rich.table import Table


def __getattr__(name: str) -> Console:
    """`out` and `err`: Rich consoles, made (and Rich imported, ~70 ms) when a command first prints through
    one; messages without markup are written without them (a quick command's whole run is ~100 ms)."""
    if name not in ("out", "err"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    console = globals()[name] = Console(stderr=name == "err", highlight=False, soft_wrap=True)
    return console


def _console(name: str) -> Console:
    cap = _capture.get()
    if cap is not None:
        return cap.console(name)
    return globals().get(name) or __getattr__(name)


class _Kept(io.StringIO):
    """One stream of a captured command: its text, and the terminal and colour of the stream it stands for."""

    def __init__(self, tty: bool, colour: bool):
        super().__init__()
        self.tty, self.colour = tty, colour

    def isatty(self) -> bool:
        return self.tty


class Captured:
    """What a command prints in this thread while `with Captured(...)`, kept as text for another process to
    write (the agent runs the CLI's one-rule edits for it: cli/entry.py), printed as that process's own
    stdout/stderr would have it (a terminal or not, in colour or not: its `streams()`)."""

    def __init__(self, tty: Sequence[bool], colour: Sequence[bool]):
        self.out, self.err = _Kept(bool(tty[0]), bool(colour[0])), _Kept(bool(tty[1]), bool(colour[1]))
        self._consoles: dict[str, Console] = {}
        self._token = None

    def __enter__(self) -> Captured:
        self._token = _capture.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _capture.reset(self._token)

    def stream(self, name: str) -> _Kept:
        return self.out if name == "out" else self.err

    def console(self, name: str) -> Console:
        if name not in self._consoles:
            from rich.console import Console

            kept = self.stream(name)
            self._consoles[name] = Console(file=kept, force_terminal=kept.colour, no_color=not kept.colour,
                                           highlight=False, soft_wrap=True)
        return self._consoles[name]


_capture: ContextVar[Captured | None] = ContextVar("bpfgate_term_capture", default=None)


def streams() -> dict:
    """Whether this process's stdout and stderr are terminals, and in colour: what Captured takes."""
    return {"tty": [sys.stdout.isatty(), sys.stderr.isatty()], "colour": [_colour(sys.stdout), _colour(sys.stderr)]}


def _stream(name: str):
    cap = _capture.get()
    if cap is not None:
        return cap.stream(name)
    return sys.stdout if name == "out" else sys.stderr


def _colour(stream) -> bool:
    """Whether Rich would colour this stream (its defaults: FORCE_COLOR, NO_COLOR, a dumb terminal, a tty)."""
    if isinstance(stream, _Kept):
        return stream.colour
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("NO_COLOR") or os.environ.get("TERM", "").lower() in ("dumb", "unknown"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


_COLOURS = {"green": "32", "red": "31", "yellow": "33"}


def _tagged(name: str, tag: str, colour: str, msg: str) -> None:
    """`tag` in its colour, then the message as typed (no markup), on stdout ("out") or stderr ("err"):
    through the Rich console once one is made (one writer keeps the order), else written straight."""
    console = globals().get(name) if _capture.get() is None else None
    if console is not None:
        from rich.markup import escape

        console.print(f"[{colour}]{tag}[/{colour}]{escape(msg)}" if tag else msg, markup=bool(tag))
        return
    stream = _stream(name)
    if tag and _colour(stream):
        tag = f"\x1b[{_COLOURS[colour]}m{tag}\x1b[0m"
    stream.write(f"{tag}{msg}\n")
    stream.flush()


def print_json(data: Any) -> None:
    """Indented for a reader on a terminal; compact into a pipe or file, as `nft -j` prints (json's C
    encoder serves only compact output: indenting 100k rules costs seconds)."""
    import json   # here: a command answered by an agent prints no JSON, and json is ~5 ms of its start

    out = _stream("out")
    indent = None if json_compact() else 2
    out.write(json.dumps(data, indent=indent, default=str) + "\n")


def json_compact() -> bool:
    """Whether print_json prints compact JSON (into a pipe or a file)."""
    return not _stream("out").isatty()


def print_json_text(text: str) -> None:
    """JSON already encoded compact (what print_json would print when json_compact())."""
    _stream("out").write(text + "\n")


def print_json_line(data: Any, flush: bool = True) -> None:
    """One JSON object per line. Streams that print bursts pass flush=False and call flush() per burst."""
    import json

    out = _stream("out")
    out.write(json.dumps(data, separators=(",", ":"), default=str) + "\n")
    if flush:
        out.flush()


def flush() -> None:
    _stream("out").flush()


# past this many rows a terminal gets plain rows too, as nft prints a large set: Rich measures every cell
# (100k rules: ~20 s) for a table nobody reads whole
RICH_ROWS_MAX = 2000


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          optional: Sequence[str] = (), markup: bool = False, wrap: bool = False) -> None:
    """Rows under a header. A Rich table only on a terminal wide enough for every cell in full, for at most
    RICH_ROWS_MAX rows; otherwise (a pipe, a file, a narrow terminal, a long table) plain aligned rows, never
    a cell cut to "…", as tc and nft print.
    On a terminal, the `optional` columns are left out (in that order, and said so) before the table
    gives up its frame. Cells are text as given ("[fd00::1]:80" is not Rich markup), unless `markup`:
    then the caller escaped what a user typed, and plain rows drop the styles. `wrap`: prose cells (doctor's
    details) that a terminal's Rich table may wrap, whatever its width (folded, never cut)."""
    from rich.text import Text

    cells = [["" if v is None else str(v) for v in r] for r in rows]
    if markup:
        styled, cells = cells, [[Text.from_markup(v).plain for v in r] for r in cells]
    cols = list(columns)
    stream = _stream("out")
    if globals().get("out") is None and not stream.isatty() and not os.environ.get("FORCE_COLOR"):
        _plain_table(title, cols, cells, stream)   # a pipe: no Rich needed
        return
    out = _console("out")
    if not out.is_terminal or len(cells) > RICH_ROWS_MAX:
        _plain_table(title, cols, cells, out.file)
        return
    shown = [[Text.from_markup(v) for v in r] for r in styled] if markup else [[Text(v) for v in r] for r in cells]
    left_out: list[str] = []
    for name in [None, *optional]:
        if name is not None and name in cols:
            i = cols.index(name)
            cols.pop(i)
            cells = [r[:i] + r[i + 1:] for r in cells]
            shown = [r[:i] + r[i + 1:] for r in shown]
            left_out.append(name)
        t = _rich_table(title, cols, shown)
        if wrap or out.measure(t, options=out.options.update(max_width=1 << 20)).maximum <= out.width:
            out.print(t)
            break
    else:
        _plain_table(title, cols, cells, out.file)
    if left_out:
        info(f"(left out for the terminal's width: {', '.join(left_out)}; --json has every field)")


def _rich_table(title: str | None, columns: Sequence[str], cells: list[list[Any]]) -> Table:
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in cells:
        t.add_row(*r)
    return t


def _plain_table(title: str | None, columns: Sequence[str], cells: list[list[str]], file) -> None:
    cells = [[" / ".join(v.splitlines()) if "\n" in v else v for v in r] for r in cells]   # a row is a line
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [title] if title else []
    for r in [list(columns), *cells]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    file.write("\n".join(lines) + "\n")
    file.flush()


def ok(msg: str) -> None:
    _tagged("out", "OK", "green", f"   {msg}")


def fail(msg: str) -> None:
    _tagged("out", "FAIL", "red", f" {msg}")


def info(msg: str, markup: bool = False) -> None:
    """A line of text; `markup=True` for a caller's own Rich markup (user input in it must be escaped)."""
    if markup:
        _console("out").print(msg, markup=True)
    else:
        _tagged("out", "", "", msg)


def detail(text: str) -> None:
    """Lines under an error (a verifier's log tail), as they are, on stderr."""
    _console("err").print(text, markup=False, highlight=False)


def warning(msg: str) -> None:
    _tagged("err", "warning:", "yellow", f" {msg}")


def error(msg: str) -> None:
    msg = " ".join(ln.strip() for ln in msg.splitlines() if ln.strip())   # one line, whatever the cause said
    _tagged("err", "bpfgate: error:", "red", f" {msg}")
