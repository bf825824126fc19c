"""`trace drops`: every skb the kernel freed as dropped (skb:kfree_skb), with the kernel's drop reason:
per-reason counts (all drops, kept in the kernel) and per-flow events (ring buffer). Drops made by a
bpfgate TC program are attributed to it (bpfgate.trace.attribution)."""

from __future__ import annotations

from typing import Any

from bpfgate.errors import NotSupported
from bpfgate.trace import names
from bpfgate.trace.backend import Extra, Hook
from bpfgate.trace.base import Tracer
from bpfgate.trace.filters import Filter

HOOKS = (Hook("skb", "kfree_skb", "bg_drop_btf", "bg_drop_tp", "drops with reasons", required=True,
              extras=(Extra("trace_event_raw_kfree_skb", "rx_sk", "6.11",
                            "the PID of drops on receive by a socket"),)),)


def require() -> dict[int, str]:
    """The kernel's drop reasons (enum skb_drop_reason), or NotSupported: what `trace drops` is about,
    and kfree_skb's reason argument, came in Linux 5.17."""
    table = names.drop_reasons()
    if not table:
        raise NotSupported("trace drops", "the kernel has no drop reasons (no enum skb_drop_reason in its BTF)",
                           min_kernel="5.17")
    return table


class DropTracer(Tracer):
    """Per-flow events through poll()/events(); counts() for the per-reason totals.

    reasons: only events of these reasons (names or codes; counts always cover every reason).
    include_unspecified: also emit events for NOT_SPECIFIED (plentiful and uninformative: counted only,
    by default). tcp: a running TcpTracer whose socket owners give drops a PID."""

    OBJECT = "trace_drops"
    WHAT = "trace drops"
    HOOKS = HOOKS

    def __init__(self, *, filters: Filter | None = None, prefer: str = "auto", reasons: tuple = (),
                 include_unspecified: bool = False, tcp: Any = None, **kw: Any):
        table = require()
        self.reasons = frozenset(names.drop_reason_code(str(r), table) for r in reasons)
        skip = {} if include_unspecified else {"cfg_skip_reason": names.drop_reason_code("NOT_SPECIFIED", table)}

        def share(obj):
            if tcp is not None and tcp.obj is not None:
                obj.reuse_map("socks", tcp.obj.map("socks").fd)

        super().__init__(filters=filters, prefer=prefer, rodata=skip, setup=share, **kw)

    def _keep(self, ev: dict) -> bool:
        if ev.get("type") == "drop" and self.reasons and ev["reason_code"] not in self.reasons:
            return False
        return super()._keep(ev)

    def counts(self) -> dict[str, int]:
        """Drop reason name -> packets dropped since start (all drops, whatever the filters)."""
        table = names.drop_reasons()
        m = self.obj.map("reason_counts")
        out = {names.drop_reason(int(k), table): sum(v) for k, v in m.items()}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))
