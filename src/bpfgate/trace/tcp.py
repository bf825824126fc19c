"""`trace tcp`: connect, accept, close (duration, bytes, final state), failed connects with their cause,
retransmits and resets, each with the PID of the process that owns the socket (see trace_tcp.bpf.c for
how the owner is carried with the socket when the kernel reports a change outside process context)."""

from __future__ import annotations

from typing import Any, Iterable

from bpfgate.errors import BadInput, BpfgateError
from bpfgate.trace import owners
from bpfgate.trace.backend import Extra, Hook
from bpfgate.trace.base import Tracer
from bpfgate.trace.names import TCP_KINDS

HOOKS = (
    Hook("sock", "inet_sock_set_state", "bg_tcp_state_btf", "bg_tcp_state_tp",
         "connect/accept/close and failed connects", required=True),
    Hook("tcp", "tcp_retransmit_skb", "bg_tcp_retrans_btf", "bg_tcp_retrans_tp", "retransmits",
         extras=(Extra("trace_event_raw_tcp_retransmit_skb", "err", "6.17",
                       "failed retransmits (only successful ones are reported)"),)),
    Hook("tcp", "tcp_receive_reset", "bg_tcp_rst_rx_btf", "bg_tcp_rst_rx_tp", "resets received"),
    Hook("tcp", "tcp_send_reset", "bg_tcp_rst_tx_btf", "bg_tcp_rst_tx_tp", "resets sent",
         extras=(Extra("trace_event_raw_tcp_send_reset", "reason", "6.10",
                       "resets sent without a socket (to a closed port), and why a reset was sent"),)),
)


class TcpTracer(Tracer):
    """with TcpTracer(filters=Filter.parse(ports=[80])) as t:
           for ev in t.events(timeout=10): print(ev)      # dicts, see bpfgate.trace.format"""

    OBJECT = "trace_tcp"
    WHAT = "trace tcp"
    HOOKS = HOOKS

    def __init__(self, *, events: Iterable[str] | None = None, seed_listeners: bool = True, **kw: Any):
        """events: which of EVENTS to emit (None: all; empty: none, only keep socket owners for a
        DropTracer); the others are never sent by the kernel.
        seed_listeners: learn the owners of servers that were listening before we started (/proc)."""
        self.kinds = tuple(EVENTS) if events is None else tuple(events)
        super().__init__(rodata={"cfg_kinds": kinds_mask(self.kinds) if self.kinds else 0}, **kw)
        self.seeded = 0
        if seed_listeners:
            try:
                self.seeded = owners.seed(self.obj.map("listeners"))
            except (OSError, BpfgateError):
                pass  # best effort: accepts on those listeners then show their owner from close() on


EVENTS = tuple(TCP_KINDS.values())


def kinds_mask(events: Iterable[str]) -> int:
    """Bit (1 << enum bg_tcp_kind) per event name; BpfgateError for a name that is not an event."""
    code = {name: n for n, name in TCP_KINDS.items()}
    mask = 0
    for e in events:
        if e not in code:
            raise BadInput("trace tcp --events", f"unknown event {e!r} (events: {', '.join(EVENTS)})")
        mask |= 1 << code[e]
    if not mask:
        raise BadInput("trace tcp --events", "no events selected")
    return mask
