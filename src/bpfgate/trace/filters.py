"""Which events the user asked for: pid, port, address (or CIDR), cgroup, network namespace. Applied to
the JSON form of an event, so the same filter serves `trace tcp` and `trace drops`; several values of one
kind are ORed, different kinds ANDed. Bad values raise BadInput naming the option (the CLI prints one
line). The namespace filter is also applied in the kernel (the tracers load it into `netns_filter`): events
of other namespaces are never sent, which keeps a trace of one container cheap whatever the host does."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Iterable

from bpfgate.errors import BadInput

_ADDR_KEYS = ("laddr", "raddr", "saddr", "daddr")
_PORT_KEYS = ("lport", "rport", "sport", "dport")


@dataclass(frozen=True)
class Filter:
    pids: frozenset[int] = frozenset()
    ports: frozenset[int] = frozenset()
    nets: tuple = ()  # ip_network objects
    cgroup_ids: frozenset[int] = frozenset()
    cgroup_paths: tuple[str, ...] = field(default=(), compare=False)
    netns: frozenset[int] = frozenset()  # namespace inode numbers

    @classmethod
    def parse(cls, *, pids: Iterable = (), ports: Iterable = (), addrs: Iterable[str] = (),
              cgroups: Iterable[str] = (), netns: Iterable = ()) -> "Filter":
        cg = [(str(c), cgroup_id(str(c))) for c in cgroups]
        return cls(frozenset(_int("--pid", p, 1, 2**32 - 1) for p in pids),
                   frozenset(_int("--port", p, 1, 65535) for p in ports),
                   tuple(_net(a) for a in addrs),
                   frozenset(i for _, i in cg), tuple(p for p, _ in cg),
                   frozenset(netns_inode(str(n)) for n in netns))

    @property
    def empty(self) -> bool:
        return not (self.pids or self.ports or self.nets or self.cgroup_ids or self.netns)

    def match(self, ev: dict) -> bool:
        if self.netns and ev.get("netns") not in self.netns:
            return False
        if self.pids and ev.get("pid") not in self.pids:
            return False
        if self.cgroup_ids and ev.get("cgroup_id") not in self.cgroup_ids:
            return False
        if self.ports and not any(ev.get(k) in self.ports for k in _PORT_KEYS):
            return False
        if self.nets:
            addrs = [ipaddress.ip_address(ev[k]) for k in _ADDR_KEYS if ev.get(k)]
            if not any(a.version == n.version and a in n for a in addrs for n in self.nets):
                return False
        return True

    def describe(self) -> dict:
        return {"pid": sorted(self.pids), "port": sorted(self.ports), "addr": [str(n) for n in self.nets],
                "cgroup": list(self.cgroup_paths), "netns": sorted(self.netns)}


def _int(opt: str, value, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadInput(f"trace filter {opt}", f"{value!r} is not a number") from None
    if not lo <= n <= hi:
        raise BadInput(f"trace filter {opt}", f"{n} is out of range {lo}..{hi}")
    return n


def _net(text: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BadInput("trace filter --addr", f"{text!r} is not an IP address or CIDR prefix") from None


def netns_inode(name: str) -> int:
    """A network namespace's inode: an iproute2 name (/run/netns/NAME), a path (/proc/PID/ns/net), or the
    number itself."""
    if name.isdigit():
        return int(name)
    path = name if "/" in name else f"/run/netns/{name}"
    try:
        return os.stat(path).st_ino
    except OSError as e:
        raise BadInput("trace filter --netns", f"{name!r}: {e.strerror} (see `ip netns list`)") from None


def cgroup_id(path_or_id: str, mount: str | None = None) -> int:
    """cgroup v2 id (the directory's inode number) of a path: absolute, or relative to the cgroup2 mount."""
    if path_or_id.isdigit():
        return int(path_or_id)
    if mount is None:
        from bpfgate.doctor.system import cgroup2_mount

        mount = cgroup2_mount()
    path = path_or_id
    if mount and not (path.startswith(mount + "/") or path == mount):
        path = os.path.join(mount, path_or_id.lstrip("/"))
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadInput("trace filter --cgroup", f"{path_or_id!r}: {e.strerror}"
                           + ("" if mount else " (no cgroup v2 mount found)")) from None
    return st.st_ino
