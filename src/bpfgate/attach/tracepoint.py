"""Tracepoints, raw tracepoints, BTF tracepoints, kprobes, fentry: links by the program's SEC().

No network namespace or device: the point is what the SEC() names. Held by the attaching process (a
tracing session ends with it) unless opts.pin names a path.
"""

from __future__ import annotations

from bpfgate.kernel import links

from . import linked
from .point import Options, prog_ids
from .record import Attachment


def attach(obj, prog_name: str, opts: Options) -> Attachment:
    prog = obj.program(prog_name)
    _, prog_id, name = prog_ids(prog)
    link = links.attach_auto(obj, prog_name)
    att = Attachment(hook="tracepoint", dev="", ifindex=0, netns=None, method="link", prog_id=prog_id,
                     prog_name=name, owner=opts.owner, tracepoint=getattr(prog, "section", "") or prog_name,
                     pins=list(opts.pins), state=list(opts.state))
    return linked.keep(link, att, opts)


detach, alive = linked.detach, linked.alive
