"""`trace tcp`: connect, accept, close (duration, bytes, final state), failed connects with their cause,
retransmits and resets, each with the PID of the process that owns the socket (see trace_tcp.bpf.c for
how the owner is carried with the socket when the kernel reports a change outside process context)."""

from __future__ import annotations

from bpfgate.trace.backend import Hook
from bpfgate.trace.base import Tracer

HOOKS = (
    Hook("sock", "inet_sock_set_state", "bg_tcp_state_btf", "bg_tcp_state_tp",
         "connect/accept/close and failed connects", required=True),
    Hook("tcp", "tcp_retransmit_skb", "bg_tcp_retrans_btf", "bg_tcp_retrans_tp", "retransmits"),
    Hook("tcp", "tcp_receive_reset", "bg_tcp_rst_rx_btf", "bg_tcp_rst_rx_tp", "resets received"),
    Hook("tcp", "tcp_send_reset", "bg_tcp_rst_tx_btf", "bg_tcp_rst_tx_tp", "resets sent"),
)


class TcpTracer(Tracer):
    """with TcpTracer(filters=Filter.parse(ports=[80])) as t:
           for ev in t.events(timeout=10): print(ev)      # dicts, see bpfgate.trace.format"""

    OBJECT = "trace_tcp"
    WHAT = "trace tcp"
    HOOKS = HOOKS
