"""Attach bpfgate programs to interfaces, remember what we did, and undo exactly that.

One entry point per hook, each usable in the current or a named network namespace:
  attach_tc(prog, "eth0", "ingress")                       clsact + direct-action filter (what `tc` shows)
  attach_tc(prog, "eth0", "ingress", method="libbpf")      the same through libbpf's bpf_tc_*
  attach_tc(prog, "eth0", "ingress", method="tcx")         a TCX link (kernel >= 6.6), pinned
  attach_xdp(prog, "eth0", mode="native"|"generic"|"auto", link=False)

Every attachment is recorded under /run/bpfgate/attachments/ (what we attached, whether we created the
clsact qdisc, which pins and which state under /run/bpfgate belong to it) so `bpfgate detach`, run later
from another process, removes our filters, links, pins and state, and a clsact qdisc only if bpfgate
created it and nothing else uses it. State a family keeps under /run/bpfgate/<family>/ that no record
claims (left by a crash, or by a bpfgate that did not record state) is stale: `status` shows it and
`detach` removes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterable

from bpfgate.errors import BpfgateError, NotFound
from bpfgate.kernel import links, netlink, netns, pins, tc

RUN_ROOT = "/run/bpfgate"
STATE_DIR = os.path.join(RUN_ROOT, "attachments")
# families that keep state per attach point under RUN_ROOT/<family>/<netns|->/<dev>/<hook>/, with a
# meta.json naming the keys of the attachments it belongs to
FAMILY_STATE = ("engine",)
DEFAULT_HANDLE = 0xB9F  # "bpf": stable, so a second attach replaces rather than stacks
DEFAULT_PRIORITY = 100
HOOKS = ("tc-ingress", "tc-egress", "tcx-ingress", "tcx-egress", "xdp")


@dataclass
class Attachment:
    hook: str  # one of HOOKS
    dev: str
    ifindex: int
    netns: str | None
    method: str  # "tc" (netlink), "libbpf", "tcx", "xdp", "xdp-link"
    prog_id: int
    prog_name: str
    owner: str = ""  # what attached it: "engine", "capture", ...
    handle: int = 0
    priority: int = 0
    xdp_mode: str = ""
    created_clsact: bool = False
    pins: list[str] = field(default_factory=list)  # removed on detach (maps, links, programs)
    state: list[str] = field(default_factory=list)  # directories under RUN_ROOT removed on detach

    @property
    def key(self) -> str:
        extra = f"-{self.handle:x}-{self.priority}" if self.hook.startswith("tc-") else ""
        return f"{self.netns or '-'}.{self.dev}.{self.hook}{extra}"

    @property
    def direction(self) -> str:
        return self.hook.split("-", 1)[1] if "-" in self.hook else ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- records -----------------------------------------------------------------------------------------


def _record_path(key: str) -> str:
    return os.path.join(STATE_DIR, key + ".json")


def _save(att: Attachment) -> None:
    os.makedirs(STATE_DIR, exist_ok=True)
    tmp = _record_path(att.key) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(att.to_dict(), f)
    os.replace(tmp, _record_path(att.key))


def _forget(att: Attachment) -> None:
    try:
        os.unlink(_record_path(att.key))
    except FileNotFoundError:
        pass


def _clsact_marker(att_netns: str | None, dev: str) -> str:
    return os.path.join(STATE_DIR, "clsact", f"{att_netns or '-'}.{dev}")


def _mark_clsact_ours(att_netns: str | None, dev: str) -> None:
    path = _clsact_marker(att_netns, dev)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def records() -> list[Attachment]:
    """Every attachment bpfgate recorded (any namespace)."""
    out = []
    try:
        names = sorted(os.listdir(STATE_DIR))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(STATE_DIR, name)) as f:
                out.append(Attachment(**json.load(f)))
        except (OSError, ValueError, TypeError):
            continue  # a torn or foreign file is not ours to trust
    return out


def find(dev: str | None = None, hook: str | None = None, netns_name: str | None = None,
         any_netns: bool = False, owner: str | None = None) -> list[Attachment]:
    return [a for a in records()
            if (dev is None or a.dev == dev) and (hook is None or a.hook == hook)
            and (any_netns or a.netns == netns_name) and (owner is None or a.owner == owner)]


def state_root(family: str) -> str:
    return os.path.join(RUN_ROOT, family)


@dataclass(frozen=True)
class StaleState:
    """A family's state directory that no attachment record claims."""

    path: str
    family: str
    netns: str | None
    dev: str
    hook: str


def _claimed_by(path: str, keys: set[str]) -> bool:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            return bool(keys & set(json.load(f).get("attachments", [])))
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def stale_state(netns_name: str | None = None, any_netns: bool = False, dev: str | None = None,
                hook: str | None = None) -> list[StaleState]:
    """State directories of bpfgate families that no recorded attachment claims (by its record's `state`,
    or by the record keys in the state's meta.json)."""
    recs = records()
    claimed = {p for a in recs for p in a.state}
    keys = {a.key for a in recs}
    out = []
    for family in FAMILY_STATE:
        root = state_root(family)
        for ns in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            ns_name = None if ns == "-" else ns
            if not any_netns and ns_name != netns_name:
                continue
            for d in sorted(os.listdir(os.path.join(root, ns))) if os.path.isdir(os.path.join(root, ns)) else []:
                if dev is not None and d != dev:
                    continue
                base = os.path.join(root, ns, d)
                for h in sorted(os.listdir(base)) if os.path.isdir(base) else []:
                    path = os.path.join(base, h)
                    if (hook is None or h == hook) and path not in claimed and not _claimed_by(path, keys):
                        out.append(StaleState(path, family, ns_name, d, h))
    return out


def remove_state(path: str) -> bool:
    """Remove a state directory and the parents it leaves empty (up to its family's root)."""
    if not os.path.abspath(path).startswith(RUN_ROOT + os.sep):
        raise BpfgateError("remove state", f"{path} is not under {RUN_ROOT}")
    existed = os.path.exists(path)
    shutil.rmtree(path, ignore_errors=True)
    family_root = os.path.join(RUN_ROOT, os.path.relpath(path, RUN_ROOT).split(os.sep)[0])
    parent = os.path.dirname(os.path.abspath(path))
    while parent.startswith(family_root + os.sep):
        try:
            os.rmdir(parent)
        except OSError:
            break
        parent = os.path.dirname(parent)
    return existed


def link_pin_path(att_netns: str | None, dev: str, hook: str) -> str:
    return pins.pin_path("links", att_netns or "-", dev, hook)


# ---- attach --------------------------------------------------------------------------------------------


def _prog(prog: Any) -> tuple[int, int, str]:
    from bpfgate.kernel.objects import prog_info

    fd = prog if isinstance(prog, int) else prog.fd
    info = prog_info(fd)
    return fd, info.id, info.name


def attach_tc(prog: Any, dev: str, direction: str, *, netns_name: str | None = None, method: str = "tc",
              handle: int = DEFAULT_HANDLE, priority: int = DEFAULT_PRIORITY, owner: str = "",
              replace: bool = True, extra_pins: Iterable[str] = (), state: Iterable[str] = ()) -> Attachment:
    """Attach a SEC("tc") program at `direction` of `dev`. `replace`: swap our own filter in place
    (same handle/priority) atomically instead of failing."""
    if direction not in ("ingress", "egress"):
        raise BpfgateError("attach tc", f"direction must be ingress or egress, not {direction!r}")
    if method not in ("tc", "libbpf", "tcx"):
        raise BpfgateError("attach tc", f"method must be tc, libbpf or tcx, not {method!r}")
    fd, prog_id, prog_name = _prog(prog)
    ifindex = netlink.ifindex(dev, netns_name)  # NotFound for an unknown interface/namespace
    att = Attachment(hook=f"tc-{direction}" if method != "tcx" else f"tcx-{direction}", dev=dev,
                     ifindex=ifindex, netns=netns_name, method=method, prog_id=prog_id, prog_name=prog_name,
                     owner=owner, pins=list(extra_pins), state=list(state))
    previous = {a.key: a for a in find(dev, att.hook, netns_name)}
    if method == "tcx":
        with netns.entered(netns_name):
            link = links.attach_tcx(fd, ifindex, direction)
        path = link_pin_path(netns_name, dev, att.hook)
        try:
            if os.path.exists(path):  # replacing our own: the old link goes when its pin goes
                pins.unpin(path)
            link.pin(path)
        except BaseException:
            link.detach()
            raise
        link.close()
        att.pins.append(path)
    else:
        att.handle, att.priority = handle, priority
        if att.key in previous:
            att.created_clsact = previous[att.key].created_clsact
            if not replace:
                raise BpfgateError(f"attach tc {direction} on {dev}", "bpfgate already has a filter there",
                                   hint="detach it first, or replace")
        if method == "tc":
            created = tc.ensure_clsact(dev, netns_name)
            try:
                tc.add_filter(dev, direction, fd, handle=handle, priority=priority, name=prog_name,
                              replace=replace, netns=netns_name)
            except BaseException:
                if created:
                    tc.remove_clsact(dev, netns_name)
                raise
        else:
            with netns.entered(netns_name):
                _, created = links.tc_attach_libbpf(fd, ifindex, direction, handle=handle, priority=priority,
                                                    replace=replace)
        att.created_clsact = att.created_clsact or created
        if created:  # per device, not per filter: the last of our filters to go takes the qdisc along
            _mark_clsact_ours(netns_name, dev)
    _save(att)
    return att


def attach_xdp(prog: Any, dev: str, *, mode: str = "auto", netns_name: str | None = None, link: bool = False,
               owner: str = "", replace: bool = True, extra_pins: Iterable[str] = (),
               state: Iterable[str] = ()) -> Attachment:
    """Attach a SEC("xdp") program. link=True makes an XDP link (pinned; driver mode only)."""
    fd, prog_id, prog_name = _prog(prog)
    ifindex = netlink.ifindex(dev, netns_name)
    att = Attachment(hook="xdp", dev=dev, ifindex=ifindex, netns=netns_name, method="xdp-link" if link else "xdp",
                     prog_id=prog_id, prog_name=prog_name, owner=owner, xdp_mode=mode, pins=list(extra_pins),
                     state=list(state))
    if link:
        with netns.entered(netns_name):
            lk = links.attach_xdp_link(fd, ifindex)
        path = link_pin_path(netns_name, dev, "xdp")
        try:
            lk.pin(path)
        except BaseException:
            lk.detach()
            raise
        lk.close()
        att.pins.append(path)
    else:
        attached = netlink.xdp_attach(dev, fd, mode=mode, replace=replace, netns=netns_name)
        att.xdp_mode = attached.mode or mode
    _save(att)
    return att


# ---- detach --------------------------------------------------------------------------------------------


def detach(att: Attachment) -> list[str]:
    """Undo one attachment; returns what was removed (for the user). Tolerates half-gone state."""
    done: list[str] = []
    where = f"{att.dev}" + (f" (netns {att.netns})" if att.netns else "")
    try:
        if att.method in ("tc", "libbpf"):
            try:
                tc.delete_filter(att.dev, att.direction, handle=att.handle, priority=att.priority, netns=att.netns)
                done.append(f"tc {att.direction} filter {att.prog_name} (handle {att.handle:#x} prio {att.priority}) on {where}")
            except NotFound:
                pass
            marker = _clsact_marker(att.netns, att.dev)
            if os.path.exists(marker) and _clsact_unused(att):
                if tc.remove_clsact(att.dev, att.netns):
                    done.append(f"clsact qdisc on {where} (created by bpfgate)")
                os.unlink(marker)
        elif att.method == "xdp":
            state = netlink.xdp_query(att.dev, att.netns)
            if state.prog_id == att.prog_id or att.prog_id in state.ids().values():
                netlink.xdp_detach(att.dev, netns=att.netns)
                done.append(f"xdp {att.prog_name} on {where}")
    except NotFound:  # interface or namespace already gone: nothing attached there any more
        if att.method in ("tc", "libbpf"):
            try:
                os.unlink(_clsact_marker(att.netns, att.dev))
            except FileNotFoundError:
                pass
    for path in att.pins:
        if pins.unpin(path):
            done.append(f"pin {path}")
            pins.prune_empty(os.path.dirname(path))
    for path in att.state:
        if remove_state(path):
            done.append(f"state {path}")
    _forget(att)
    return done


def _clsact_unused(att: Attachment) -> bool:
    """True if no filter remains at either side of the clsact qdisc (ours are gone already)."""
    return not tc.list_filters(att.dev, "ingress", att.netns) and not tc.list_filters(att.dev, "egress", att.netns)


def detach_matching(dev: str | None = None, hook: str | None = None, netns_name: str | None = None,
                    any_netns: bool = False, owner: str | None = None) -> list[str]:
    """Detach the recorded attachments that match, then remove family state no record claims any more."""
    done: list[str] = []
    for att in find(dev, hook, netns_name, any_netns, owner):
        done.extend(detach(att))
    if owner is None:
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
