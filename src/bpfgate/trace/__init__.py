"""TCP tracing with PIDs and kernel drop reasons, from tracepoints (works without kprobes).

    from bpfgate.trace import TcpTracer, DropTracer, Filter
    with TcpTracer(filters=Filter.parse(ports=[8080])) as t:
        print(t.backends())                    # which backend each tracepoint uses, what is missing
        for ev in t.events(timeout=10):        # dicts: see bpfgate.trace.format for the keys
            print(ev["event"], ev["pid"], ev["comm"], ev["raddr"], ev["rport"])
"""

from bpfgate.trace.drops import DropTracer
from bpfgate.trace.filters import Filter
from bpfgate.trace.tcp import TcpTracer

__all__ = ["TcpTracer", "DropTracer", "Filter", "availability"]


def availability() -> dict[str, list[dict]]:
    """Per tracer, the backend each tracepoint would use here and what is missing, without loading
    anything (for `bpfgate doctor`); a tp_btf that then fails to load still falls back at run time."""
    from bpfgate.trace import backend, drops, tcp

    return {"trace tcp": [c.describe() for c in backend.choose(tcp.HOOKS)],
            "trace drops": [c.describe() for c in backend.choose(drops.HOOKS)]}
