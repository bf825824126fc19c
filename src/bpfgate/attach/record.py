"""The one record of what bpfgate attached: /run/bpfgate/attachments/<key>.json per attachment.

A record names its attach point (netns + device and direction | cgroup path | map | tracepoint), how it
was attached (the kind module that undoes it), and what belongs to it: pins under /sys/fs/bpf/bpfgate and
state directories under /run/bpfgate. `bpfgate detach`, run later from any process, removes exactly that.

A family that keeps state per attach point does so under RUN_ROOT/<family>/<netns|->/<target>/<hook>/, with
a meta.json listing the keys of the records it belongs to; such a directory no record claims any more
(left by a crash, or by a bpfgate that did not record state) is stale: `status` shows it, `detach` removes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from bpfgate import families
from bpfgate.errors import BpfgateError
from bpfgate.families import RUN_ROOT, state_root  # noqa: F401 - the attach layer's names for them

STATE_DIR = os.path.join(RUN_ROOT, "attachments")
CLSACT_DIR = os.path.join(STATE_DIR, "clsact")   # a marker per device whose clsact qdisc bpfgate made
FAMILY_STATE = families.with_state()   # families with per-attach-point state under RUN_ROOT/<family>/


@dataclass
class Attachment:
    hook: str  # the attach type: tc-ingress, tcx-egress, xdp, cgroup_inet_egress, sock_ops, sk_msg, tracepoint ...
    dev: str  # the device; "" for a point that has none (cgroup, map, tracepoint)
    ifindex: int
    netns: str | None
    method: str  # the kind that made it and undoes it: tc, libbpf, tcx, xdp, xdp-link, cgroup, sockmap, link
    prog_id: int
    prog_name: str
    owner: str = ""  # the family that attached it: "engine", "flows", "attempts", ...
    handle: int = 0
    priority: int = 0
    xdp_mode: str = ""
    created_clsact: bool = False
    pins: list[str] = field(default_factory=list)  # removed on detach (maps, links, programs)
    state: list[str] = field(default_factory=list)  # directories under RUN_ROOT removed on detach
    cgroup: str = ""  # cgroup point: the cgroup v2 directory
    map: str = ""  # map point (sk_msg, sk_skb): the map's pin path, or "id:<map id>"
    tracepoint: str = ""  # tracepoint point: what the program's SEC() names
    link_id: int = 0  # a BPF link the kernel tracks: detached by its pin, or by id when it is not pinned
    link_pin: str = ""  # where the link is pinned (also in pins)
    pid: int = 0  # the process whose fd keeps an unpinned link alive (it goes when that process exits)

    @property
    def target(self) -> str:
        return self.dev or self.cgroup or self.map or self.tracepoint

    @property
    def key(self) -> str:
        if self.hook.startswith("tc-"):
            extra = f"-{self.handle:x}-{self.priority}"
        elif self.link_id:   # links of several families (or processes) may share one point
            extra = f"-link{self.link_id}"
        else:
            extra = ""
        target = self.dev or quote(self.target, safe="")
        return f"{self.netns or '-'}.{target}.{self.hook}{extra}"

    @property
    def direction(self) -> str:
        return self.hook.split("-", 1)[1] if self.hook.startswith(("tc-", "tcx-")) else ""

    @property
    def where(self) -> str:
        return self.target + (f" (netns {self.netns})" if self.netns else "")

    held = None  # not a field: the Link an unpinned link attachment's process holds (close() drops it)

    def close(self) -> None:
        """End an attachment this process holds (an unpinned link): the kernel detaches it; the record goes."""
        if self.held is not None:
            self.held.close()
            self.held = None
            forget(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def detach(self) -> list[str]:
        from bpfgate.attach import detach

        return detach(self)


def _record_path(key: str) -> str:
    return os.path.join(STATE_DIR, key + ".json")


def save(att: Attachment) -> Attachment:
    os.makedirs(STATE_DIR, exist_ok=True)
    tmp = _record_path(att.key) + f".{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(att.to_dict(), f)
    os.replace(tmp, _record_path(att.key))
    return att


def forget(att: Attachment) -> None:
    try:
        os.unlink(_record_path(att.key))
    except FileNotFoundError:
        pass


_FIELDS = {f.name for f in dataclasses.fields(Attachment)}


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
                data = json.load(f)
            att = Attachment(**{k: v for k, v in data.items() if k in _FIELDS})
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # a torn or foreign file is not ours to trust
        if att.pid and not att.link_pin and not _alive(att.pid):
            forget(att)   # a link only its process held: the kernel detached it when the process died
            continue
        out.append(att)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find(dev: str | None = None, hook: str | None = None, netns_name: str | None = None,
         any_netns: bool = False, owner: str | None = None, target: str | None = None) -> list[Attachment]:
    return [a for a in records()
            if (dev is None or a.dev == dev) and (hook is None or a.hook == hook)
            and (target is None or a.target == target)
            and (any_netns or a.netns == netns_name) and (owner is None or a.owner == owner)]


# ---- clsact qdiscs bpfgate created (per device, not per filter) ----------------------------------------


def clsact_marker(att_netns: str | None, dev: str) -> str:
    return os.path.join(CLSACT_DIR, f"{att_netns or '-'}.{dev}")


def mark_clsact_ours(att_netns: str | None, dev: str) -> None:
    path = clsact_marker(att_netns, dev)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def unmark_clsact(att_netns: str | None, dev: str) -> None:
    try:
        os.unlink(clsact_marker(att_netns, dev))
    except FileNotFoundError:
        pass


# ---- family state --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StaleState:
    """A family's state directory that no attachment record claims."""

    path: str
    family: str
    netns: str | None
    target: str
    hook: str


def _claimed_by(path: str, keys: set[str]) -> bool:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            return bool(keys & set(json.load(f).get("attachments", [])))
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _subdirs(path: str) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


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
        for ns in _subdirs(root):
            ns_name = None if ns == "-" else ns
            if not any_netns and ns_name != netns_name:
                continue
            for target in _subdirs(os.path.join(root, ns)):
                if dev is not None and target != dev:
                    continue
                for h in _subdirs(os.path.join(root, ns, target)):
                    path = os.path.join(root, ns, target, h)
                    if (hook is None or h == hook) and path not in claimed and not _claimed_by(path, keys):
                        out.append(StaleState(path, family, ns_name, target, h))
    return out


def remove_state(path: str) -> bool:
    """Remove a state directory and the parents it leaves empty (up to its family's root)."""
    path = os.path.abspath(path)
    if not path.startswith(RUN_ROOT + os.sep):
        raise BpfgateError("remove state", f"{path} is not under {RUN_ROOT}")
    existed = os.path.exists(path)
    shutil.rmtree(path, ignore_errors=True)
    family_root = os.path.join(RUN_ROOT, os.path.relpath(path, RUN_ROOT).split(os.sep)[0])
    parent = os.path.dirname(path)
    while parent.startswith(family_root + os.sep):
        try:
            os.rmdir(parent)
        except OSError:
            break
        parent = os.path.dirname(parent)
    return existed
