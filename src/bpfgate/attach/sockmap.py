"""sk_msg and sk_skb programs on a sockmap/sockhash (BPF_PROG_ATTACH with the map as target).

The map is the attach point: it is recorded by id (and its pin, if the caller names one in opts.pins), so
a later `bpfgate detach` reopens it while it exists; when the map is gone the attachment went with it.
"""

from __future__ import annotations

import errno

from bpfgate.errors import BpfgateError, from_errno
from bpfgate.kernel import libbpf as L
from bpfgate.kernel.maps import Map, map_info

from .point import Options, Point, need, prog_ids
from .record import Attachment, save

# enum bpf_attach_type (uapi): the map-targeted ones
ATTACH_TYPES = {"sk_skb_stream_parser": 4, "sk_skb_stream_verdict": 5, "sk_msg_verdict": 7, "sk_skb_verdict": 38}
SECTIONS = {"sk_msg": "sk_msg_verdict", "sk_skb/stream_verdict": "sk_skb_stream_verdict",
            "sk_skb/stream_parser": "sk_skb_stream_parser", "sk_skb/verdict": "sk_skb_verdict"}


def attach(prog, point: Point, opts: Options) -> Attachment:
    need(point.map, "map", "to a sockmap")
    hook = opts.attach_type or SECTIONS.get(getattr(prog, "section", ""), "")
    if hook not in ATTACH_TYPES:
        raise BpfgateError("attach to a sockmap", f"unknown map attach type {hook or '(none)'!r}",
                           hint=f"one of {', '.join(ATTACH_TYPES)}")
    fd, prog_id, prog_name = prog_ids(prog)
    info = map_info(point.map.fd)
    rc = L.bpf_prog_attach(fd, point.map.fd, ATTACH_TYPES[hook], 0)
    if rc != 0:
        raise from_errno(f"attach {prog_name} to map id {info.id} ({hook})", -rc if rc < 0 else L.libc_errno())
    att = Attachment(hook=hook, dev="", ifindex=0, netns=None, method="sockmap", prog_id=prog_id,
                     prog_name=prog_name, owner=opts.owner, map=f"id:{info.id}", pins=list(opts.pins),
                     state=list(opts.state))
    try:
        return save(att)
    except BaseException:
        L.bpf_prog_detach2(fd, point.map.fd, ATTACH_TYPES[hook])
        raise


def _open(att: Attachment):
    """(map, program) of the attachment, or None when either is gone (and the attachment with it)."""
    from bpfgate.kernel.objects import Program

    try:
        m = Map.from_id(int(att.map.split(":", 1)[1]))
    except BpfgateError:
        return None
    try:
        return m, Program.from_id(att.prog_id)
    except BpfgateError:
        m.close()
        return None


def alive(att: Attachment) -> bool:
    opened = _open(att)
    if opened is None:
        return False
    for x in opened:
        x.close()
    return True


def detach(att: Attachment) -> list[str]:
    opened = _open(att)
    if opened is None:
        return []
    m, prog = opened
    try:
        rc = L.bpf_prog_detach2(prog.fd, m.fd, ATTACH_TYPES[att.hook])
        if rc != 0:
            err = -rc if rc < 0 else L.libc_errno()
            if err in (errno.ENOENT, errno.EINVAL):
                return []
            raise from_errno(f"detach {att.prog_name} from map {att.map}", err)
    finally:
        prog.close()
        m.close()
    return [f"{att.hook} {att.prog_name} on map {att.map}"]
