"""The one terminal helper: tables, JSON output, messages. Commands print through here."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Indented for a reader on a terminal; compact into a pipe or file, as `nft -j` prints (json's C
    encoder serves only compact output: indenting 100k rules costs seconds)."""
    indent = 2 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(data, indent=indent, default=str) + "\n")


def print_json_line(data: Any, flush: bool = True) -> None:
    """One JSON object per line. Streams that print bursts pass flush=False and call flush() per burst."""
    sys.stdout.write(json.dumps(data, separators=(",", ":"), default=str) + "\n")
    if flush:
        sys.stdout.flush()


def flush() -> None:
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]],
          optional: Sequence[str] = (), markup: bool = False, wrap: bool = False) -> None:
    """Rows under a header. A Rich table only on a terminal wide enough for every cell in full; otherwise
    (a pipe, a file, a narrow terminal) plain aligned rows, never a cell cut to "…", as tc and nft print.
    On a terminal, the `optional` columns are left out (in that order, and said so) before the table
    gives up its frame. Cells are text as given ("[fd00::1]:80" is not Rich markup), unless `markup`:
    then the caller escaped what a user typed, and plain rows drop the styles. `wrap`: prose cells (doctor's
    details) that a terminal's Rich table may wrap, whatever its width (folded, never cut)."""
    from rich.text import Text

    cells = [["" if v is None else str(v) for v in r] for r in rows]
    if markup:
        styled, cells = cells, [[Text.from_markup(v).plain for v in r] for r in cells]
    cols = list(columns)
    if not out.is_terminal:
        _plain_table(title, cols, cells)
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
        _plain_table(title, cols, cells)
    if left_out:
        info(f"(left out for the terminal's width: {', '.join(left_out)}; --json has every field)")


def _rich_table(title: str | None, columns: Sequence[str], cells: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in cells:
        t.add_row(*r)
    return t


def _plain_table(title: str | None, columns: Sequence[str], cells: list[list[str]]) -> None:
    cells = [[" / ".join(v.splitlines()) if "\n" in v else v for v in r] for r in cells]   # a row is a line
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [title] if title else []
    for r in [list(columns), *cells]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    out.file.write("\n".join(lines) + "\n")
    out.file.flush()


def ok(msg: str) -> None:
    out.print(f"[green]OK[/green]   {_escape(msg)}")


def fail(msg: str) -> None:
    out.print(f"[red]FAIL[/red] {_escape(msg)}")


def info(msg: str, markup: bool = False) -> None:
    """A line of text; `markup=True` for a caller's own Rich markup (user input in it must be escaped)."""
    out.print(msg, markup=markup)


def warning(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {_escape(msg)}", markup=True)


def _escape(msg: str) -> str:
    from rich.markup import escape

    return escape(msg)   # text a user typed ("[tcp]", "[fd00::1]:80") is shown as typed


def error(msg: str) -> None:
    from rich.markup import escape

    msg = " ".join(ln.strip() for ln in msg.splitlines() if ln.strip())   # one line, whatever the cause said
    err.print(f"[red]bpfgate: error:[/red] {escape(msg)}", markup=True)   # [fd00::1]:80 is not markup
