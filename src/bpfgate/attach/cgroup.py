"""cgroup programs of every type, as BPF links on a cgroup v2 directory (kernel >= 5.7).

The attach type is named (opts.attach_type, e.g. cgroup_inet_egress, cgroup_inet4_connect, sock_ops) or
taken from the program's SEC(). Pinned under /sys/fs/bpf/bpfgate/links/cgroup/ when opts.pin names a path,
else held by the attaching process.
"""

from __future__ import annotations

import errno
import os

from bpfgate.errors import BpfgateError, from_errno
from bpfgate.kernel import links

from . import linked
from .point import Options, Point, need, prog_ids
from .record import Attachment

# enum bpf_attach_type (uapi): the cgroup ones
ATTACH_TYPES = {
    "cgroup_inet_ingress": 0, "cgroup_inet_egress": 1, "cgroup_inet_sock_create": 2, "sock_ops": 3,
    "cgroup_device": 6, "cgroup_inet4_bind": 8, "cgroup_inet6_bind": 9, "cgroup_inet4_connect": 10,
    "cgroup_inet6_connect": 11, "cgroup_inet4_post_bind": 12, "cgroup_inet6_post_bind": 13,
    "cgroup_udp4_sendmsg": 14, "cgroup_udp6_sendmsg": 15, "cgroup_sysctl": 18,
    "cgroup_udp4_recvmsg": 19, "cgroup_udp6_recvmsg": 20, "cgroup_getsockopt": 21,
    "cgroup_setsockopt": 22, "cgroup_inet_sock_release": 34,
}
# libbpf SEC() names -> attach type (the usual ones; others: name opts.attach_type)
SECTIONS = {
    "cgroup_skb/ingress": "cgroup_inet_ingress", "cgroup_skb/egress": "cgroup_inet_egress",
    "cgroup/sock_create": "cgroup_inet_sock_create", "cgroup/sock": "cgroup_inet_sock_create",
    "cgroup/sock_release": "cgroup_inet_sock_release", "sockops": "sock_ops", "cgroup/dev": "cgroup_device",
    "cgroup/bind4": "cgroup_inet4_bind", "cgroup/bind6": "cgroup_inet6_bind",
    "cgroup/connect4": "cgroup_inet4_connect", "cgroup/connect6": "cgroup_inet6_connect",
    "cgroup/post_bind4": "cgroup_inet4_post_bind", "cgroup/post_bind6": "cgroup_inet6_post_bind",
    "cgroup/sendmsg4": "cgroup_udp4_sendmsg", "cgroup/sendmsg6": "cgroup_udp6_sendmsg",
    "cgroup/recvmsg4": "cgroup_udp4_recvmsg", "cgroup/recvmsg6": "cgroup_udp6_recvmsg",
    "cgroup/sysctl": "cgroup_sysctl", "cgroup/getsockopt": "cgroup_getsockopt",
    "cgroup/setsockopt": "cgroup_setsockopt",
}


def attach_type(prog, opts: Options) -> str:
    name = opts.attach_type or SECTIONS.get(getattr(prog, "section", ""), "")
    if name not in ATTACH_TYPES:
        raise BpfgateError("attach to a cgroup", f"unknown cgroup attach type {name or '(none)'!r}",
                           hint=f"one of {', '.join(ATTACH_TYPES)}")
    return name


def attach(prog, point: Point, opts: Options) -> Attachment:
    need(point.cgroup, "cgroup", "cgroup")
    hook = attach_type(prog, opts)
    fd, prog_id, prog_name = prog_ids(prog)
    op = f"attach {prog_name} to cgroup {point.cgroup} ({hook})"
    try:
        cg_fd = os.open(point.cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise from_errno(op, e.errno or errno.ENOENT) from None
    try:
        link = links.link_create(fd, cg_fd, ATTACH_TYPES[hook], op)
    finally:
        os.close(cg_fd)
    att = Attachment(hook=hook, dev="", ifindex=0, netns=None, method="cgroup", prog_id=prog_id,
                     prog_name=prog_name, owner=opts.owner, cgroup=os.path.abspath(point.cgroup),
                     pins=list(opts.pins), state=list(opts.state))
    return linked.keep(link, att, opts)


detach = linked.detach
