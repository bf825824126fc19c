"""clsact direct-action filters: method "tc" (rtnetlink, what `tc filter` does) or "libbpf" (bpf_tc_*).

The filter's priority and handle come from the family's slot (order.py). The clsact qdisc is created when
missing and marked as bpfgate's; the last of bpfgate's filters to go takes it along, a qdisc someone else
made stays.
"""

from __future__ import annotations

import os

from bpfgate.errors import BpfgateError, NotFound
from bpfgate import lazy
from bpfgate.kernel import links, netns

from . import record
from .point import Options, Point, prog_ids
from .record import Attachment

netlink = lazy.module("bpfgate.kernel.netlink")   # pyroute2: imported when an attach or detach needs it
tc = lazy.module("bpfgate.kernel.tc")

METHODS = ("tc", "libbpf")


def attach(prog, point: Point, opts: Options) -> Attachment:
    direction = point.direction
    if direction not in ("ingress", "egress"):
        raise BpfgateError("attach tc", f"direction must be ingress or egress, not {direction!r}")
    if opts.method not in METHODS:
        raise BpfgateError("attach tc", f"method must be tc, libbpf or tcx, not {opts.method!r}")
    fd, prog_id, prog_name = prog_ids(prog)
    ifindex = netlink.ifindex(point.dev, point.netns)  # NotFound for an unknown interface/namespace
    handle, priority = opts.tc_ids()
    att = Attachment(hook=f"tc-{direction}", dev=point.dev, ifindex=ifindex, netns=point.netns,
                     method=opts.method, prog_id=prog_id, prog_name=prog_name, owner=opts.owner,
                     handle=handle, priority=priority, pins=list(opts.pins), state=list(opts.state))
    previous = {a.key: a for a in record.find(point.dev, att.hook, point.netns)}
    if att.key in previous:
        att.created_clsact = previous[att.key].created_clsact
        if not opts.replace:
            raise BpfgateError(f"attach tc {direction} on {point.dev}", "bpfgate already has a filter there",
                               hint="detach it first, or replace")
    if opts.method == "tc":
        created = tc.ensure_clsact(point.dev, point.netns)
        try:
            tc.add_filter(point.dev, direction, fd, handle=handle, priority=priority, name=prog_name,
                          replace=opts.replace, netns=point.netns)
        except BaseException:
            if created:
                tc.remove_clsact(point.dev, point.netns)
            raise
    else:
        with netns.entered(point.netns):
            _, created = links.tc_attach_libbpf(fd, ifindex, direction, handle=handle, priority=priority,
                                                replace=opts.replace)
    att.created_clsact = att.created_clsact or created
    if created:  # per device, not per filter: the last of our filters to go takes the qdisc along
        record.mark_clsact_ours(point.netns, point.dev)
    return record.save(att)


def detach(att: Attachment) -> list[str]:
    done = []
    try:
        try:
            tc.delete_filter(att.dev, att.direction, handle=att.handle, priority=att.priority, netns=att.netns)
            done.append(f"tc {att.direction} filter {att.prog_name} (handle {att.handle:#x} prio {att.priority}) "
                        f"on {att.where}")
        except NotFound:
            pass
        if _clsact_ours_and_unused(att):
            if tc.remove_clsact(att.dev, att.netns):
                done.append(f"clsact qdisc on {att.where} (created by bpfgate)")
            record.unmark_clsact(att.netns, att.dev)
    except NotFound:  # interface or namespace already gone: nothing attached there any more
        record.unmark_clsact(att.netns, att.dev)
    return done


def _clsact_ours_and_unused(att: Attachment) -> bool:
    """bpfgate created the device's clsact and no filter is left at either side (ours are gone already)."""
    if not os.path.exists(record.clsact_marker(att.netns, att.dev)):
        return False
    return not tc.list_filters(att.dev, "ingress", att.netns) and not tc.list_filters(att.dev, "egress", att.netns)
