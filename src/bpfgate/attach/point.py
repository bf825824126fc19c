"""What every kind of attachment is given: an attach point and one options object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from bpfgate.errors import BpfgateError

from . import order


@dataclass(frozen=True)
class Point:
    """Where a program attaches: a network namespace plus a device and direction, a cgroup, a map or a
    tracepoint (exactly one of them)."""

    netns: str | None = None
    dev: str = ""
    direction: str = ""  # ingress | egress for tc/TCX; "" for XDP
    cgroup: str = ""  # cgroup v2 directory
    map: Any = None  # a Map (sk_msg, sk_skb programs attach to a sockmap/sockhash)
    tracepoint: str = ""  # set from the program's SEC() when attached

    @classmethod
    def device(cls, dev: str, direction: str = "", netns: str | None = None) -> "Point":
        return cls(netns=netns, dev=dev, direction=direction)

    @classmethod
    def of_cgroup(cls, path: str) -> "Point":
        return cls(cgroup=path)

    @classmethod
    def of_map(cls, m: Any) -> "Point":
        return cls(map=m)


@dataclass
class Options:
    """How to attach (one object for every kind; each kind reads the fields it knows)."""

    owner: str = ""  # the family attaching: picks the tc priority/handle and the TCX place (order.py)
    method: str = "tc"  # tc | libbpf (clsact filters)
    handle: int = 0  # clsact filter: 0 = the family's slot
    priority: int = 0
    first: bool | None = None  # TCX: first in the chain; None = the family's place
    mode: str = "auto"  # XDP: auto | native | generic
    link: bool = False  # XDP: a link instead of a netlink attachment
    attach_type: str = ""  # cgroup: cgroup_inet_ingress, sock_ops ...; map: sk_msg_verdict, sk_skb_stream_verdict ...
    pin: str = ""  # pin the link here (it then outlives the process); "" = the process holds it
    replace: bool = True  # swap our own attachment at the same point in place instead of failing
    pins: Iterable[str] = ()  # pins that belong to the attachment (removed on detach)
    state: Iterable[str] = ()  # state directories under /run/bpfgate that belong to it (removed on detach)

    def tc_ids(self) -> tuple[int, int]:
        s = order.slot(self.owner) if self.owner in {x.owner for x in order.SLOTS} else order.DEFAULT
        return self.handle or s.handle, self.priority or s.priority

    def tcx_first(self) -> bool:
        if self.first is not None:
            return self.first
        return self.owner in {x.owner for x in order.SLOTS if x.tcx_first}


def prog_ids(prog: Any) -> tuple[int, int, str]:
    """(fd, id, name) of a Program or a program fd."""
    from bpfgate.kernel.objects import prog_info

    fd = prog if isinstance(prog, int) else prog.fd
    info = prog_info(fd)
    return fd, info.id, info.name


def need(value: Any, what: str, kind: str) -> None:
    # `is None` for objects: an empty sockmap is falsy (Map has __len__) and still names a map
    if value is None or value == "":
        raise BpfgateError(f"attach {kind}", f"the attach point names no {what}")
