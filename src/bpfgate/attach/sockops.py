"""sock_ops programs: a cgroup attachment of type sock_ops (TCP events of the cgroup's sockets)."""

from __future__ import annotations

import dataclasses

from . import cgroup
from .point import Options, Point
from .record import Attachment


def attach(prog, point: Point, opts: Options) -> Attachment:
    return cgroup.attach(prog, point, dataclasses.replace(opts, attach_type="sock_ops"))


detach = cgroup.detach
