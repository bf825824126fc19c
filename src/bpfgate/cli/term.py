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
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def print_json_line(data: Any, flush: bool = True) -> None:
    """One JSON object per line. Streams that print bursts pass flush=False and call flush() per burst."""
    sys.stdout.write(json.dumps(data, separators=(",", ":"), default=str) + "\n")
    if flush:
        sys.stdout.flush()


def flush() -> None:
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    out.print(t)


def ok(msg: str) -> None:
    out.print(f"[green]OK[/green]   {msg}")


def fail(msg: str) -> None:
    out.print(f"[red]FAIL[/red] {msg}")


def info(msg: str) -> None:
    out.print(msg)


def error(msg: str) -> None:
    from rich.markup import escape

    err.print(f"[red]bpfgate: error:[/red] {escape(msg)}", markup=True)   # [fd00::1]:80 is not markup
