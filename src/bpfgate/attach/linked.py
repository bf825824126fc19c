"""What every link-based kind shares (TCX, XDP links, cgroups, tracepoints): pin the link or let the
attaching process hold it, record its id, and detach it later by pin or id from any process."""

from __future__ import annotations

import errno
import os

from bpfgate.errors import BpfgateError
from bpfgate.kernel import pins
from bpfgate.kernel.links import Link

from . import record
from .point import Options
from .record import Attachment


def keep(link: Link, att: Attachment, opts: Options, default_pin: str = "") -> Attachment:
    """Record `link` in `att`: pinned at opts.pin (or default_pin) it outlives this process; unpinned,
    `att.held` keeps it until att.close() (or the process exits)."""
    try:
        att.link_id = link.info().id
        path = opts.pin or default_pin
        if path:
            if os.path.exists(path):  # replacing our own: the old link goes when its pin goes, and its record
                pins.unpin(path)
                for old in record.records():
                    if old.link_pin == path:
                        record.forget(old)
            link.pin(path)
            att.link_pin = path
            att.pins.append(path)
        else:
            att.pid = os.getpid()
        record.save(att)
    except BaseException:
        link.detach()
        raise
    if path:
        link.close()
    else:
        att.held = link
    return att


def pin_held(att: Attachment, path: str, extra_pins=()) -> Attachment:
    """Turn a link this process holds into a pinned attachment that outlives the process; `extra_pins`
    (e.g. its maps) then belong to the record too."""
    if att.held is None:
        raise BpfgateError(f"pin the {att.hook} link on {att.where}", "this process does not hold it")
    att.held.pin(path)
    att.link_pin, att.pid = path, 0
    att.pins += [path, *extra_pins]
    record.save(att)
    att.held.close()
    att.held = None
    return att


def detach(att: Attachment) -> list[str]:
    """Detach the link now (BPF_LINK_DETACH), wherever it is held; its pins go with the record."""
    link = _open(att)
    if link is None:
        return []
    try:
        if link.info().prog_id != att.prog_id:
            return []  # the id was reused by another link: not ours
        link.detach()
    finally:
        link.close()
    return [f"{att.hook} link {att.prog_name} on {att.where}"]


def alive(att: Attachment) -> bool:
    link = _open(att)
    if link is None:
        return False
    try:
        return link.info().prog_id == att.prog_id
    finally:
        link.close()


def _open(att: Attachment) -> Link | None:
    if att.link_pin:
        try:
            return Link.from_pin(att.link_pin)
        except BpfgateError:
            pass  # unpinned by hand: try the id
    if att.link_id:
        try:
            return Link.from_id(att.link_id)
        except BpfgateError as e:
            if getattr(e, "errno", errno.ENOENT) not in (errno.ENOENT, errno.EPERM, None):
                raise
    return None
