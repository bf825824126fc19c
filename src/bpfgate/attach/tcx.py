"""TCX links (kernel >= 6.6): tc without qdiscs, ordered by anchors instead of priorities.

A family marked first in order.py goes first in the chain (BPF_F_BEFORE, no anchor), the others are
appended. Pinned under /sys/fs/bpf/bpfgate/links/ unless the caller holds the link (opts.pin "" and
pinned=False): then it lives as long as the attaching process.
"""

from __future__ import annotations

from bpfgate.errors import BpfgateError
from bpfgate import lazy
from bpfgate.kernel import links, netns, pins

from . import linked
from .point import Options, Point, prog_ids
from .record import Attachment

netlink = lazy.module("bpfgate.kernel.netlink")   # pyroute2: imported when an attach or detach needs it


def link_pin_path(att_netns: str | None, dev: str, hook: str) -> str:
    return pins.pin_path("links", att_netns or "-", dev, hook)


def attach(prog, point: Point, opts: Options, *, pinned: bool = True) -> Attachment:
    if point.direction not in ("ingress", "egress"):
        raise BpfgateError("attach tcx", f"direction must be ingress or egress, not {point.direction!r}")
    fd, prog_id, prog_name = prog_ids(prog)
    ifindex = netlink.ifindex(point.dev, point.netns)
    hook = f"tcx-{point.direction}"
    att = Attachment(hook=hook, dev=point.dev, ifindex=ifindex, netns=point.netns, method="tcx", prog_id=prog_id,
                     prog_name=prog_name, owner=opts.owner, pins=list(opts.pins), state=list(opts.state))
    with netns.entered(point.netns):
        link = links.attach_tcx(fd, ifindex, point.direction, first=opts.tcx_first())
    return linked.keep(link, att, opts, link_pin_path(point.netns, point.dev, hook) if pinned else "")


detach = linked.detach
