"""XDP: one program per device (bpfgate runs no dispatcher; order.py says how families share it).

Through netlink (`ip link set dev X xdp`; modes auto, native, generic), or as an XDP link (driver mode),
pinned under /sys/fs/bpf/bpfgate/links/ unless the caller holds it.
"""

from __future__ import annotations

from bpfgate import lazy
from bpfgate.kernel import links, netns

from . import linked
from .point import Options, Point, prog_ids
from .record import Attachment, save
from .tcx import link_pin_path

netlink = lazy.module("bpfgate.kernel.netlink")   # pyroute2: imported when an attach or detach needs it


def attach(prog, point: Point, opts: Options, *, pinned: bool = True) -> Attachment:
    fd, prog_id, prog_name = prog_ids(prog)
    ifindex = netlink.ifindex(point.dev, point.netns)
    att = Attachment(hook="xdp", dev=point.dev, ifindex=ifindex, netns=point.netns,
                     method="xdp-link" if opts.link else "xdp", prog_id=prog_id, prog_name=prog_name,
                     owner=opts.owner, xdp_mode=opts.mode, pins=list(opts.pins), state=list(opts.state))
    if opts.link:
        with netns.entered(point.netns):
            link = links.attach_xdp_link(fd, ifindex)
        return linked.keep(link, att, opts, link_pin_path(point.netns, point.dev, "xdp") if pinned else "")
    attached = netlink.xdp_attach(point.dev, fd, mode=opts.mode, replace=opts.replace, netns=point.netns)
    att.xdp_mode = attached.mode or opts.mode
    return save(att)


def detach(att: Attachment) -> list[str]:
    if att.method == "xdp-link":
        return linked.detach(att)
    state = netlink.xdp_query(att.dev, att.netns)   # NotFound: the device is gone, and our program with it
    if state.prog_id == att.prog_id or att.prog_id in state.ids().values():
        netlink.xdp_detach(att.dev, netns=att.netns)
        return [f"xdp {att.prog_name} on {att.where}"]
    return []
