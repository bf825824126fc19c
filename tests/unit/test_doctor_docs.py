"""docs/doctor.md documents every check, the JSON keys and the essential set (fails on drift)."""

from __future__ import annotations

import re
from pathlib import Path

from bpfgate import doctor
from bpfgate.doctor.model import Check, document

DOC = (Path(__file__).resolve().parents[2] / "docs" / "doctor.md").read_text()


def _table_rows(text: str) -> dict[str, list[str]]:
    """First cell (a `code` name) -> the row's other cells, for every markdown table row in `text`."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `([a-z0-9_]+)` \|(.*)\|$", line)
        if m:
            rows.setdefault(m.group(1), [c.strip() for c in m.group(2).split("|")])
    return rows


def test_every_check_is_documented_with_its_essential_flag():
    rows = _table_rows(DOC.split("### System checks", 1)[1])
    for name in doctor.names():
        assert name in rows, f"docs/doctor.md does not document check {name!r}"
        assert (rows[name][0] == "yes") == (name in doctor.ESSENTIAL), name


def test_every_json_key_is_documented():
    rows = _table_rows(DOC.split("## JSON document", 1)[1].split("### System checks", 1)[0])
    doc = document([Check("kernel", "system", "ok", "x")])
    for key in [*doc, *doc["checks"][0]]:
        assert key in rows, f"docs/doctor.md does not document JSON key {key!r}"
