"""`bpfgate top`'s footer counts what happened since top started: the conntrack table it reads may be
shared with a policy engine or `flows --keep` and carry their earlier counts."""

from __future__ import annotations

import dataclasses

from rich.console import Console

from bpfgate.inspect.flows import FlowStats
from bpfgate.inspect.top import Top


class SharedTable:
    """A flow monitor over a table that counted 44 flows before top started."""

    dev = "eth0"

    def __init__(self):
        self.stats = FlowStats(live=3, created=44, ended=41, expired=0, evicted=0, unparsed=7, events_lost=0)

    def read(self):
        return [], self.stats

    def poll_ended(self, timeout_ms: int = 0):
        return []


def _footer(top: Top) -> str:
    console = Console(record=True, width=200)
    console.print(top.render(top.snapshot()))
    return next(ln for ln in console.export_text().splitlines() if "flows live" in ln)


def test_footer_counts_since_start():
    mon = SharedTable()
    top = Top(mon)
    assert "created 0  ended 0" in _footer(top) and "unparsed 0" in _footer(top)
    mon.stats = dataclasses.replace(mon.stats, live=4, created=46, ended=42)
    line = _footer(top)
    assert "flows live 4" in line and "created 2  ended 1" in line
