"""The attach layer: every program bpfgate attaches goes through here, and is recorded.

One module per kind of attach point, each with attach(prog, point, opts) -> Attachment and
detach(att) -> [what was removed]:
  tc.py          clsact direct-action filters (methods "tc": rtnetlink, "libbpf": bpf_tc_*)
  tcx.py         TCX links (kernel >= 6.6), ordered by anchors
  xdp.py         XDP through netlink or as a link; one program per device
  cgroup.py      cgroup programs of every attach type, as links
  sockops.py     sock_ops programs (a cgroup attach type)
  sockmap.py     sk_msg / sk_skb programs on a sockmap or sockhash
  tracepoint.py  tracepoints, raw/BTF tracepoints, kprobes, fentry, by the program's SEC()
A Point names where (netns + device and direction | cgroup path | map | tracepoint), one Options object
says how (owner family, method, pins and state that belong to it ...). order.py holds the one table of
where each family runs at a shared hook (tc priority, TCX place; XDP: one program per device).

record.py keeps the one record of what bpfgate attached (/run/bpfgate/attachments/): `bpfgate status` and
`bpfgate detach` read it, and detach removes each attachment with its pins and its state under
/run/bpfgate, then any family state no record claims any more.

    from bpfgate import attach
    att = attach.attach_tc(prog, "eth0", "ingress")                       # clsact + da filter
    att = attach.attach_tc(prog, "eth0", "ingress", method="tcx")         # a TCX link, pinned
    att = attach.attach_xdp(prog, "eth0", mode="generic")
    att = attach.attach(prog, attach.Point.of_cgroup("/sys/fs/cgroup/x"), attach.Options(owner="..."),
                        kind="cgroup")
    attach.detach(att)                                                    # or att.close() for a held link
"""

from __future__ import annotations

import os
from typing import Iterable

from bpfgate import families
from bpfgate.errors import BpfgateError, NotFound
from bpfgate.kernel import pins

from . import cgroup, order, record, sockmap, sockops, tc, tcx, tracepoint, xdp
from .linked import pin_held
from .point import Options, Point
from .record import (
    FAMILY_STATE,
    RUN_ROOT,
    STATE_DIR,
    Attachment,
    StaleState,
    find,
    forget,
    records,
    remove_state,
    stale_state,
    state_root,
)
from .tcx import link_pin_path

DEFAULT_HANDLE, DEFAULT_PRIORITY = order.DEFAULT.handle, order.DEFAULT.priority
DEVICE_HOOKS = ("tc-ingress", "tc-egress", "tcx-ingress", "tcx-egress", "xdp")
HOOKS = DEVICE_HOOKS + tuple(cgroup.ATTACH_TYPES) + tuple(sockmap.ATTACH_TYPES) + ("tracepoint",)
KINDS = {"tc": tc, "tcx": tcx, "xdp": xdp, "cgroup": cgroup, "sockops": sockops, "sockmap": sockmap}
SELF_CHECKED = ("sockmap", "link")   # kinds status cannot find by walking devices and cgroups
_UNDO = {"tc": tc, "libbpf": tc, "tcx": tcx, "xdp": xdp, "xdp-link": xdp, "cgroup": cgroup, "sockmap": sockmap,
         "link": tracepoint}

__all__ = ["Attachment", "DEFAULT_HANDLE", "DEFAULT_PRIORITY", "FAMILY_STATE", "HOOKS", "Options", "Point",
           "RUN_ROOT", "STATE_DIR", "StaleState", "attach", "attach_tc", "attach_xdp", "detach",
           "detach_matching", "find", "link_pin_path", "pin_held", "order", "records", "remove_state",
           "replace_program", "stale_state", "state_root"]


def attach(prog, point: Point, opts: Options | None = None, *, kind: str) -> Attachment:
    """Attach `prog` at `point` with the kind module `kind` (tc, tcx, xdp, cgroup, sockops, sockmap)."""
    try:
        module = KINDS[kind]
    except KeyError:
        raise BpfgateError("attach", f"unknown kind of attach point {kind!r}", hint=", ".join(KINDS)) from None
    return module.attach(prog, point, opts or Options())


def attach_tc(prog, dev: str, direction: str, *, netns_name: str | None = None, method: str = "tc",
              handle: int = 0, priority: int = 0, owner: str = "", replace: bool = True,
              extra_pins: Iterable[str] = (), state: Iterable[str] = ()) -> Attachment:
    """A SEC("tc") program at `direction` of `dev`: a clsact filter (method tc or libbpf; handle and priority
    default to the owner family's slot, order.py) or a pinned TCX link (method tcx). `replace`: swap our own
    filter in place (same handle/priority) atomically instead of failing."""
    point = Point.device(dev, direction, netns_name)
    opts = Options(owner=owner, method=method, handle=handle, priority=priority, replace=replace,
                   pins=extra_pins, state=state)
    if method == "tcx":
        return tcx.attach(prog, point, opts)
    return tc.attach(prog, point, opts)


def attach_xdp(prog, dev: str, *, mode: str = "auto", netns_name: str | None = None, link: bool = False,
               owner: str = "", replace: bool = True, extra_pins: Iterable[str] = (),
               state: Iterable[str] = ()) -> Attachment:
    """A SEC("xdp") program. link=True makes an XDP link (pinned; driver mode only)."""
    return xdp.attach(prog, Point.device(dev, "", netns_name),
                      Options(owner=owner, mode=mode, link=link, replace=replace, pins=extra_pins, state=state))


def replace_program(att: Attachment, prog) -> Attachment:
    """Run `prog` at `att`'s attach point in place of its program, atomically: a tc filter replaced at the
    same handle and priority, XDP replaced on the device, a link updated (TCX, XDP link, cgroup). Every
    packet or call meets the old program or the new one, never neither. The record names the new one."""
    from bpfgate.kernel import links

    if att.method in ("tc", "libbpf"):
        return attach_tc(prog, att.dev, att.direction, netns_name=att.netns, method=att.method, handle=att.handle,
                         priority=att.priority, owner=att.owner, replace=True, extra_pins=att.pins,
                         state=att.state)
    if att.method == "xdp":
        return attach_xdp(prog, att.dev, mode=att.xdp_mode or "auto", netns_name=att.netns, owner=att.owner,
                          replace=True, extra_pins=att.pins, state=att.state)
    if att.method in ("tcx", "xdp-link", "cgroup") and att.link_pin:
        from .point import prog_ids

        with links.Link.from_pin(att.link_pin) as link:
            links.link_update(link, prog)
        att.prog_id, att.prog_name = prog_ids(prog)[1:]
        return record.save(att)
    raise BpfgateError(f"replace the program on {att.where}", f"not possible for a {att.method} attachment")


def alive(att: Attachment) -> bool:
    """The kernel still has this attachment (for the kinds that can tell: links, programs on maps)."""
    return _UNDO[att.method].alive(att) if att.method in SELF_CHECKED else True


# families whose attach points share kernel pieces with each other (the policy engines of one device share
# a flow table, a tracker and a lookup-only switch): their own detach keeps the others right
FAMILY_DETACH = families.detachers()


def _family_detach(att: Attachment) -> list[str] | None:
    """The owner family's detach of `att`'s attach point, or None (then the generic detach)."""
    if att.owner not in FAMILY_DETACH:
        return None
    import importlib

    return importlib.import_module(FAMILY_DETACH[att.owner]).detach(att)


def detach(att: Attachment) -> list[str]:
    """Undo one attachment with its pins and state; returns what was removed (for the user). Tolerates
    half-gone state (the device, namespace, map or program already gone)."""
    done: list[str] = []
    if att.held is not None:   # a link this process holds: detach it now, whoever else holds it
        att.held.detach()
        att.held = None
        done.append(f"{att.hook} link {att.prog_name} on {att.where}")
    else:
        undone = []
        try:
            undone = _UNDO[att.method].detach(att) if att.method in _UNDO else []
        except NotFound:   # the interface or namespace is gone: nothing is attached there any more
            pass
        if att.method in _UNDO and not undone:   # the record alone goes: say so, as status calls it stale
            undone = [f"record of {att.hook} {att.prog_name} on {att.where} (not attached in the kernel)"]
        done += undone
    for path in att.pins:
        if pins.unpin(path):
            done.append(f"pin {path}")
            pins.prune_empty(os.path.dirname(path))
    for path in att.state:
        if remove_state(path):
            done.append(f"state {path}")
    forget(att)
    return done


def detach_matching(dev: str | None = None, hook: str | None = None, netns_name: str | None = None,
                    any_netns: bool = False, owner: str | None = None, target: str | None = None) -> list[str]:
    """Detach the recorded attachments that match, then remove family state no record claims any more
    (only for device and namespace matches: a cgroup or map target has no family state)."""
    done: list[str] = []
    for att in find(dev, hook, netns_name, any_netns, owner, target):
        if att.key not in {a.key for a in records()}:
            continue   # its family's detach of an earlier one took it along
        done.extend(_family_detach(att) or detach(att))
    if owner is None and target is None:
        for st in stale_state(netns_name, any_netns, dev, hook):
            if remove_state(st.path):
                done.append(f"state {st.path} (no attachment left)")
        _forget_empty_namespaces(netns_name, any_netns)
    return done


def _forget_empty_namespaces(netns_name: str | None, any_netns: bool) -> None:
    """A namespace with nothing of bpfgate's attached keeps no control-plane state either (its lock file;
    a pending rollback stays: its watcher still needs it)."""
    from bpfgate.policyctl import pending

    if any_netns:
        try:
            names = [None if n == "-" else n for n in os.listdir(pending.STATE_DIR)]
        except FileNotFoundError:
            names = []
    else:
        names = [netns_name]
    for ns in names:
        if find(netns_name=ns) or stale_state(ns):
            continue
        with pending.locked(ns):   # as `policy remove` does: no apply of the namespace runs meanwhile
            if not find(netns_name=ns):
                pending.forget(ns)
