"""TC through rtnetlink: the clsact qdisc and direct-action `bpf` filters at ingress/egress.

What `tc qdisc add dev X clsact` / `tc filter add dev X ingress prio P handle H bpf da fd N name S`
do, from Python. pyroute2 0.9.7's bpf options table stops at TCA_BPF_FLAGS, so the message classes
below add TCA_BPF_FLAGS_GEN/TAG/ID (and TCA_CHAIN at the top level) to read back what is attached.
"""

from __future__ import annotations

import errno
import socket
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass
from typing import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELQDISC,
    RTM_DELTFILTER,
    RTM_GETQDISC,
    RTM_GETTFILTER,
    RTM_NEWQDISC,
    RTM_NEWTFILTER,
)
from pyroute2.netlink.rtnl.tcmsg import sched_bpf, tcmsg

from bpfgate.errors import AttachError, BpfgateError, NotFound, PolicyError
from bpfgate.kernel import netlink
from bpfgate.kernel.netlink import Dev, on_where, resolve, translate

TC_H_CLSACT = 0xFFFFFFF1  # == TC_H_INGRESS: clsact and ingress qdiscs share this parent
CLSACT_HANDLE = 0xFFFF0000
PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{IN,E}GRESS)
TCA_BPF_FLAG_ACT_DIRECT = 1

ETH_P = {"all": 0x0003, "ip": 0x0800, "ipv6": 0x86DD, "arp": 0x0806, "802.1q": 0x8100, "802.1ad": 0x88A8}
_ETH_P_NAMES = {v: k for k, v in ETH_P.items()}


class BpfOptions(sched_bpf.options):
    """cls_bpf's TCA_OPTIONS with the attributes the kernel sends back on dump (enum order matters)."""

    nla_map = sched_bpf.options.nla_map + (
        ("TCA_BPF_FLAGS_GEN", "uint32"),
        ("TCA_BPF_TAG", "cdata"),  # 8 raw bytes, what `tc`/`bpftool` print as hex
        ("TCA_BPF_ID", "uint32"),
    )


class TcMsg(tcmsg):
    """tcmsg with the top-level attributes after TCA_STAB, and BpfOptions for kind 'bpf'."""

    nla_map = tcmsg.nla_map + (
        ("TCA_PAD", "hex"),
        ("TCA_DUMP_INVISIBLE", "flag"),
        ("TCA_CHAIN", "uint32"),
        ("TCA_HW_OFFLOAD", "uint8"),
        ("TCA_INGRESS_BLOCK", "uint32"),
        ("TCA_EGRESS_BLOCK", "uint32"),
        ("TCA_DUMP_FLAGS", "hex"),
        ("TCA_EXT_WARN_MSG", "asciiz"),
    )

    @staticmethod
    def get_options(self, *argv, **kwarg):
        if self.get_attr("TCA_KIND") == "bpf":
            return BpfOptions
        return tcmsg.get_options(self, *argv, **kwarg)


_TC_TYPES = (RTM_NEWQDISC, RTM_DELQDISC, RTM_NEWTFILTER, RTM_DELTFILTER)


@contextmanager
def route(netns: str | None = None, op: str | None = None) -> Iterator[IPRoute]:
    """netlink.route() whose TC replies decode through TcMsg (the policy is per socket)."""
    with netlink.route(netns, op) as ipr:
        ipr.register_policy({t: TcMsg for t in _TC_TYPES})
        yield ipr


def _parent(direction: str, op: str) -> int:
    try:
        return PARENTS[direction]
    except KeyError:
        raise AttachError(op, f"unknown direction {direction!r}", hint="ingress or egress") from None


def _request(ipr: IPRoute, msg: TcMsg, kind: int, flags: int, op: str, hints: dict | None = None) -> list:
    try:
        return list(ipr.nlm_request(msg, kind, flags))
    except (NetlinkError, OSError) as e:
        raise translate(op, e, hints) from None


# the kernel says only EINVAL for a program of the wrong type (or a stale fd)
_ATTACH_HINTS = {errno.EINVAL: "is it a sched_cls (SEC(\"tc\")) program?",
                 errno.EBADF: "not an open program file descriptor"}


# ---------------------------------------------------------------- clsact qdisc


def _qdiscs(ipr: IPRoute, index: int, op: str) -> list:
    msg = TcMsg()
    msg["index"] = index
    return [m for m in _request(ipr, msg, RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, op) if m["index"] == index]


def _ingress_slot(ipr: IPRoute, index: int, op: str) -> str | None:
    """Kind of the qdisc at the ingress/clsact parent ('clsact', 'ingress') or None."""
    for m in _qdiscs(ipr, index, op):
        if m["parent"] == TC_H_CLSACT:
            return m.get_attr("TCA_KIND")
    return None


def has_clsact(dev: Dev, netns: str | None = None) -> bool:
    op = f"look for the clsact qdisc on {on_where(dev, netns)}"
    with route(netns, op) as ipr:
        return _ingress_slot(ipr, resolve(ipr, dev, op), op) == "clsact"


def _clsact_msg(index: int) -> TcMsg:
    msg = TcMsg()
    msg["index"] = index
    msg["handle"] = CLSACT_HANDLE
    msg["parent"] = TC_H_CLSACT
    msg["attrs"] = [("TCA_KIND", "clsact")]
    return msg


def ensure_clsact(dev: Dev, netns: str | None = None) -> bool:
    """Make sure `dev` has a clsact qdisc. True if this call created it (so the caller owns it and may
    remove it later), False if it was already there."""
    op = f"add the clsact qdisc on {on_where(dev, netns)}"
    with route(netns, op) as ipr:
        index = resolve(ipr, dev, op)
        present = _ingress_slot(ipr, index, op)
        if present == "clsact":
            return False
        if present is not None:
            raise AttachError(op, f"an {present!r} qdisc holds the ingress slot",
                              hint=f"remove it first: tc qdisc del dev {dev} {present}")
        try:
            ipr.nlm_request(_clsact_msg(index), RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        except NetlinkError as e:
            # lost a race with someone else creating it: theirs, not ours
            if _ingress_slot(ipr, index, op) == "clsact":
                return False
            raise translate(op, e) from None
        return True


def remove_clsact(dev: Dev, netns: str | None = None) -> bool:
    """Delete the clsact qdisc of `dev` and every filter on it. False if there was none."""
    op = f"remove the clsact qdisc from {on_where(dev, netns)}"
    with route(netns, op) as ipr:
        index = resolve(ipr, dev, op)
        if _ingress_slot(ipr, index, op) != "clsact":
            return False
        _request(ipr, _clsact_msg(index), RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, op)
        return True


# ---------------------------------------------------------------- bpf filters


@dataclass(frozen=True)
class TcFilter:
    """One filter at clsact ingress/egress as the kernel reports it (`tc filter show dev X ingress`)."""

    ifindex: int
    direction: str
    kind: str
    handle: int
    priority: int
    protocol: str  # 'all', 'ip', 'ipv6', ... or '0x88cc'
    chain: int = 0
    prog_id: int = 0  # bpf only (TCA_BPF_ID)
    name: str = ""  # TCA_BPF_NAME, the filter's name, what tc prints first ("dropper.o:[tc]")
    prog_name: str = ""  # the program's own name (bpf_prog_info), what tc prints after "name"
    tag: str = ""  # hex
    direct_action: bool = False


def protocol_number(protocol: str | int) -> int:
    if isinstance(protocol, int):
        return protocol
    if protocol in ETH_P:
        return ETH_P[protocol]
    try:
        return int(protocol, 16)
    except ValueError:
        raise PolicyError("protocol", f"unknown ethernet protocol {protocol!r}") from None


def protocol_name(number: int) -> str:
    return _ETH_P_NAMES.get(number, f"0x{number:04x}")


def _info(priority: int, protocol: int) -> int:
    # tcm_info = TC_H_MAKE(prio << 16, htons(protocol))
    return ((priority & 0xFFFF) << 16) | socket.htons(protocol)


def decode_filter(msg, direction: str) -> TcFilter:
    """TcMsg (RTM_NEWTFILTER) -> TcFilter. Pure: unit-tested on encoded bytes."""
    info = msg["info"]
    kind = msg.get_attr("TCA_KIND") or ""
    f = dict(ifindex=msg["index"], direction=direction, kind=kind, handle=msg["handle"],
             priority=info >> 16, protocol=protocol_name(socket.ntohs(info & 0xFFFF)),
             chain=msg.get_attr("TCA_CHAIN") or 0)
    opts = msg.get_attr("TCA_OPTIONS") if kind == "bpf" else None
    if opts is not None:
        tag = opts.get_attr("TCA_BPF_TAG")
        f.update(prog_id=opts.get_attr("TCA_BPF_ID") or 0, name=opts.get_attr("TCA_BPF_NAME") or "",
                 tag=tag.hex() if isinstance(tag, (bytes, bytearray)) else "",
                 direct_action=bool((opts.get_attr("TCA_BPF_FLAGS") or 0) & TCA_BPF_FLAG_ACT_DIRECT))
    return TcFilter(**f)


def filter_msg(index: int, direction: str, *, handle: int, priority: int, protocol: int = ETH_P["all"],
               prog_fd: int | None = None, name: str | None = None, direct_action: bool = True) -> TcMsg:
    """The RTM_*TFILTER message for a bpf filter (prog_fd None: for delete)."""
    msg = TcMsg()
    msg["index"] = index
    msg["handle"] = handle
    msg["parent"] = PARENTS[direction]
    msg["info"] = _info(priority, protocol)
    attrs: list = [("TCA_KIND", "bpf")]
    if prog_fd is not None:
        opts = [("TCA_BPF_FD", prog_fd), ("TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT if direct_action else 0)]
        if name:
            opts.append(("TCA_BPF_NAME", name))
        attrs.append(("TCA_OPTIONS", {"attrs": opts}))
    msg["attrs"] = attrs
    return msg


def _check_ids(handle: int, priority: int, op: str) -> None:
    # 0 asks the kernel to pick one, and then we could not find/delete "our" filter reliably
    if not 0 < handle <= 0xFFFFFFFF or not 0 < priority <= 0xFFFF:
        raise AttachError(op, f"handle {handle} / priority {priority} out of range",
                          hint="explicit handle 1..2^32-1 and priority 1..65535")


def add_filter(dev: Dev, direction: str, prog_fd: int, *, handle: int = 1, priority: int = 1,
               name: str = "bpfgate", protocol: str | int = "all", direct_action: bool = True,
               replace: bool = False, netns: str | None = None) -> TcFilter:
    """Attach program `prog_fd` as a bpf filter at clsact `direction` of `dev` (the qdisc must exist:
    ensure_clsact). Fails with EEXIST if handle+priority is taken, unless `replace` (which also creates).
    Returns the filter as the kernel now reports it (with its prog id)."""
    op = f"{'replace' if replace else 'attach'} tc {direction} filter on {on_where(dev, netns)}"
    _parent(direction, op)  # validates the direction
    _check_ids(handle, priority, op)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
    with route(netns, op) as ipr:
        index = resolve(ipr, dev, op)
        msg = filter_msg(index, direction, handle=handle, priority=priority, protocol=protocol_number(protocol),
                         prog_fd=prog_fd, name=name, direct_action=direct_action)
        _request(ipr, msg, RTM_NEWTFILTER, flags, op, _ATTACH_HINTS)
        for f in _filters(ipr, index, direction, op):
            if f.handle == handle and f.priority == priority:
                return f
    raise NotFound(op, "the filter vanished right after it was attached")


def replace_filter(dev: Dev, direction: str, prog_fd: int, **kwargs) -> TcFilter:
    """add_filter(..., replace=True): swap the program of handle+priority atomically (or create it)."""
    return add_filter(dev, direction, prog_fd, replace=True, **kwargs)


def delete_filter(dev: Dev, direction: str, *, handle: int, priority: int, netns: str | None = None) -> None:
    """Delete the bpf filter handle+priority. NotFound if there is no such filter."""
    op = f"delete tc {direction} filter (handle {handle:#x}, prio {priority}) on {on_where(dev, netns)}"
    _parent(direction, op)
    _check_ids(handle, priority, op)
    with route(netns, op) as ipr:
        index = resolve(ipr, dev, op)
        if _ingress_slot(ipr, index, op) != "clsact":   # the kernel says EINVAL, not "no such filter"
            raise NotFound(op, "no clsact qdisc there (removed with its filters)")
        # ETH_P 0: match the filter whatever its protocol
        msg = filter_msg(index, direction, handle=handle, priority=priority, protocol=0)
        _request(ipr, msg, RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK, op)


def _filters(ipr: IPRoute, index: int, direction: str, op: str) -> list[TcFilter]:
    msg = TcMsg()
    msg["index"] = index
    msg["parent"] = PARENTS[direction]
    try:
        replies = _request(ipr, msg, RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, op)
    except NotFound:
        return []  # no clsact qdisc: no filters
    # each priority also dumps a header message with handle 0 (the classifier instance, no options)
    found = [decode_filter(m, direction) for m in replies if m["handle"] and m["index"] == index]
    return [dataclasses.replace(f, prog_name=_prog_name(f.prog_id)) for f in found]


def _prog_name(prog_id: int) -> str:
    """Netlink carries only the id; the name is in bpf_prog_info. '' if the program is gone already."""
    if not prog_id:
        return ""
    from bpfgate.kernel.objects import Program  # libbpf: only loaded when a bpf filter is listed

    try:
        prog = Program.from_id(prog_id)
    except BpfgateError:
        return ""
    try:
        return prog.name
    finally:
        prog.close()


def list_filters(dev: Dev, direction: str, netns: str | None = None) -> list[TcFilter]:
    """Filters at clsact `direction` of `dev`, in kernel order (priority, then handle)."""
    op = f"list tc {direction} filters on {on_where(dev, netns)}"
    _parent(direction, op)
    with route(netns, op) as ipr:
        return _filters(ipr, resolve(ipr, dev, op), direction, op)
