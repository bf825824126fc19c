"""The order of bpfgate's families at a shared hook is one table in code (bpfgate.attach.order), written
down in docs/attach.md: the two must not drift, and no two families may share a tc slot."""

from __future__ import annotations

import pathlib

from bpfgate.attach import order
from bpfgate.attach.point import Options

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "attach.md"


def _doc_rows() -> list[tuple[str, ...]]:
    text = DOC.read_text()
    table = text[text.index("| family | tc priority"):].split("\n\n", 1)[0].splitlines()[2:]
    return [tuple(c.strip() for c in row.strip("|").split("|")) for row in table]


def test_docs_table_is_the_code_table():
    assert _doc_rows() == [tuple(str(x) for x in row) for row in order.table()]


def test_slots_run_in_table_order_and_never_collide():
    prios = [s.priority for s in order.SLOTS]
    assert prios == sorted(prios) and len(set(prios)) == len(prios)
    assert len({s.handle for s in order.SLOTS}) == len(order.SLOTS)
    # observers first in TCX as in tc: every "first" family runs before every appended one
    firsts = [s.tcx_first for s in order.SLOTS]
    assert firsts == sorted(firsts, reverse=True)


def test_options_take_the_family_slot():
    assert Options(owner="flows").tc_ids() == (0xB9F5, 1)
    assert Options(owner="engine-ct").tc_ids() == (order.slot("engine-ct").handle, 99)
    assert Options().tc_ids() == (order.DEFAULT.handle, order.DEFAULT.priority)
    assert Options(owner="flows").tcx_first() and not Options(owner="attempts").tcx_first()
    assert Options(owner="attempts", first=True).tcx_first()
