"""Every BPF attachment we can see: tc filters, TCX, XDP per interface, and cgroup attachments.

What `tc filter show`, `bpftool net` and `bpftool cgroup tree` show, in one list, with run statistics
and whether each one is bpfgate's (a program named bg_* or one bpfgate recorded attaching).
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from bpfgate import attach
from bpfgate.errors import BpfgateError
from bpfgate.kernel import libbpf as L
from bpfgate.kernel import netlink, netns, tc
from bpfgate.kernel.objects import Program, ProgInfo
from bpfgate.kernel.stats import stats_enabled

BG_PREFIX = "bg_"
TCX_ATTACH = {"tcx-ingress": 46, "tcx-egress": 47}
CGROUP_ATTACH = attach.cgroup.ATTACH_TYPES
MAX_CGROUPS = 2000  # bound the walk of a big cgroup tree


@dataclass
class Entry:
    hook: str  # tc-ingress, tc-egress, tcx-ingress, tcx-egress, xdp, cgroup_* / sock_ops
    target: str  # interface name or cgroup path
    netns: str | None
    prog_id: int
    prog_name: str = ""
    tag: str = ""
    prog_type: str = ""
    run_cnt: int = 0
    run_time_ns: int = 0
    bpfgate: bool = False
    owner: str = ""  # bpfgate's record: which module attached it
    details: dict[str, Any] = field(default_factory=dict)  # handle, priority, direct-action, xdp mode

    @property
    def avg_ns(self) -> float | None:
        return self.run_time_ns / self.run_cnt if self.run_cnt else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["avg_ns"] = round(self.avg_ns, 1) if self.avg_ns is not None else None
        return d


def _info(prog_id: int) -> ProgInfo | None:
    try:
        p = Program.from_id(prog_id)
    except BpfgateError:
        return None
    try:
        return p.info()
    finally:
        p.close()


def _fill(e: Entry, recorded: dict[tuple, attach.Attachment]) -> Entry:
    info = _info(e.prog_id)
    if info:
        e.prog_name = info.name
        e.tag, e.prog_type = info.tag, info.type
        e.run_cnt, e.run_time_ns = info.run_cnt, info.run_time_ns
    rec = recorded.get((e.netns, e.target, e.hook, e.prog_id))
    e.owner = rec.owner if rec else ""
    e.bpfgate = bool(rec) or e.prog_name.startswith(BG_PREFIX)
    return e


def _tcx_prog_ids(ifindex: int, attach_type: int) -> list[int]:
    ids = (ctypes.c_uint32 * 64)()
    cnt = ctypes.c_uint32(64)
    flags = ctypes.c_uint32(0)
    if L.bpf_prog_query(ifindex, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)) != 0:
        return []  # no TCX on this kernel, or nothing attached
    return list(ids[: cnt.value])


def interface_entries(netns_name: str | None = None) -> list[Entry]:
    out: list[Entry] = []
    for itf in netlink.interfaces(netns_name):
        for direction in ("ingress", "egress"):
            for f in tc.list_filters(itf.ifindex, direction, netns_name):
                if f.kind != "bpf":
                    continue
                out.append(Entry(f"tc-{direction}", itf.name, netns_name, f.prog_id, f.prog_name, f.tag,
                                 details={"handle": f"{f.handle:#x}", "priority": f.priority,
                                          "direct_action": f.direct_action, "protocol": f.protocol,
                                          "filter_name": f.name}))
        with netns.entered(netns_name):
            for hook, at in TCX_ATTACH.items():
                for pid in _tcx_prog_ids(itf.ifindex, at):
                    out.append(Entry(hook, itf.name, netns_name, pid))
        xdp = netlink.xdp_query(itf.ifindex, netns_name)
        for mode, pid in xdp.ids().items():
            if pid:
                out.append(Entry("xdp", itf.name, netns_name, pid, details={"mode": mode}))
    return out


def cgroup2_mount() -> str | None:
    """Where cgroup v2 is mounted (from /proc/self/mounts; never assumed)."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


def cgroup_entries(root: str | None = None) -> list[Entry]:
    root = root or cgroup2_mount()
    if not root:
        return []
    out: list[Entry] = []
    seen = 0
    for dirpath, dirnames, _ in os.walk(root):
        seen += 1
        if seen > MAX_CGROUPS:
            break
        try:
            fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            for hook, at in CGROUP_ATTACH.items():
                ids = (ctypes.c_uint32 * 64)()
                cnt = ctypes.c_uint32(64)
                flags = ctypes.c_uint32(0)
                if L.bpf_prog_query(fd, at, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)) != 0:
                    continue
                for pid in ids[: cnt.value]:
                    out.append(Entry(hook, dirpath, None, pid, details={"attach_flags": flags.value}))
        finally:
            os.close(fd)
    return out


def all_netns() -> list[str | None]:
    names: list[str | None] = [None]
    try:
        names += sorted(os.listdir(netns.NETNS_RUN_DIR))
    except FileNotFoundError:
        pass
    return names


def gone_netns() -> list[str]:
    """Named namespaces that bpfgate still holds records or state for but that no longer exist (deleted
    with a policy attached): what it holds for them is stale."""
    names = {a.netns for a in attach.records()} | {st.netns for st in attach.stale_state(any_netns=True)}
    return sorted(n for n in names if n is not None and not netns.exists(n))


def collect(netns_names: Iterable[str | None] = (None,), *, cgroups: bool = True,
            stats_window: float = 0.0, gone: bool = False) -> list[Entry]:
    """All attachments in the given namespaces (None: ours). stats_window > 0: turn run-time stats on for
    that many seconds first, so run_cnt/run_time_ns show live traffic (they are off by default).
    gone: also what bpfgate holds for namespaces deleted since (stale)."""
    if stats_window > 0:
        with stats_enabled():
            time.sleep(stats_window)
            return collect(netns_names, cgroups=cgroups, gone=gone)
    recorded = {(a.netns, a.target, a.hook, a.prog_id): a for a in attach.records()}
    entries: list[Entry] = []
    netns_names = list(netns_names)
    for ns in netns_names:
        if ns is not None and not netns.exists(ns) and ns in gone_netns():
            continue   # deleted with something of bpfgate's attached: what it left is listed as stale below
        entries += interface_entries(ns)
    if cgroups:
        entries += cgroup_entries()
    entries = [_fill(e, recorded) for e in entries] + record_entries()
    return entries + stale_entries(netns_names + (gone_netns() if gone else []), entries)


def record_entries() -> list[Entry]:
    """Attachments no device or cgroup walk finds (programs on a sockmap, tracepoint links): from their
    records, each checked in the kernel (live, or stale: its link, map or program is gone)."""
    out = []
    for a in attach.records():
        if a.method not in attach.SELF_CHECKED:
            continue
        e = _fill(Entry(a.hook, a.target, a.netns, a.prog_id, a.prog_name, bpfgate=True, owner=a.owner), {})
        e.owner = a.owner
        if not attach.alive(a):
            e.details["stale"] = f"record {a.key}: not attached in the kernel"
        out.append(e)
    return out


def stale_entries(netns_names: Iterable[str | None], live: list[Entry]) -> list[Entry]:
    """What bpfgate still holds for attachments the kernel no longer has: records whose filter, link or
    program is gone (its interface or namespace was deleted), and family state no record claims.
    `bpfgate detach` removes both."""
    seen = {(e.netns, e.target, e.hook, e.prog_id) for e in live}
    out = []
    for ns in netns_names:
        for a in attach.find(netns_name=ns):
            if a.method in attach.SELF_CHECKED:
                continue   # record_entries() judged them
            if (a.netns, a.target, a.hook, a.prog_id) not in seen:
                out.append(Entry(a.hook, a.dev, a.netns, a.prog_id, a.prog_name, bpfgate=True, owner=a.owner,
                                 details={"stale": f"record {a.key}: not attached in the kernel"}))
        for st in attach.stale_state(ns):
            out.append(Entry(st.hook, st.target, st.netns, 0, bpfgate=True, owner=st.family,
                             details={"stale": f"state {st.path}: no attachment claims it"}))
    return out


def orphans(entries: list[Entry]) -> list[Entry]:
    """bpfgate programs attached with no record (a crashed run, a manual attach): detach can take them."""
    recorded = {(a.netns, a.target, a.hook, a.prog_id) for a in attach.records()}
    return [e for e in entries if e.bpfgate and (e.netns, e.target, e.hook, e.prog_id) not in recorded
            and not e.hook.startswith(("cgroup", "sock_ops")) and "stale" not in e.details]


def detach_orphan(e: Entry) -> str | None:
    """Remove an unrecorded bpfgate attachment found by collect(); returns what was removed."""
    where = e.target + (f" (netns {e.netns})" if e.netns else "")
    if e.hook.startswith("tc-"):
        tc.delete_filter(e.target, e.hook[3:], handle=int(e.details["handle"], 16),
                         priority=e.details["priority"], netns=e.netns)
        return f"tc {e.hook[3:]} filter {e.prog_name} on {where} (unrecorded)"
    if e.hook == "xdp":
        netlink.xdp_detach(e.target, mode=e.details.get("mode"), netns=e.netns)
        return f"xdp {e.prog_name} on {where} (unrecorded)"
    if e.hook.startswith("tcx-"):
        from bpfgate.kernel.links import Link, link_info

        next_id = ctypes.c_uint32(0)
        while L.bpf_link_get_next_id(next_id.value, ctypes.byref(next_id)) == 0:
            try:
                link = Link.from_id(next_id.value)
            except BpfgateError:
                continue
            if link_info(link.fd).type == "tcx" and link_info(link.fd).prog_id == e.prog_id:
                link.detach()
                return f"{e.hook} {e.prog_name} on {where} (unrecorded link)"
            link.close()
    return None
