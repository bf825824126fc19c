"""Owners of TCP listeners that existed before tracing began, read from /proc (what `ss -p` does).

trace_tcp learns a listener's owner when listen() runs; for a server started earlier, its accepted
connections would show no PID until they close. So at start we seed the `listeners` map: every process's
socket fds (/proc/PID/fd -> socket:[inode]) joined with the LISTEN sockets of its network namespace
(/proc/PID/net/tcp, tcp6: local port and inode), keyed like the BPF side by (netns inode, port).
Best effort: processes that exit or that we may not read are skipped.
"""

from __future__ import annotations

import os
from typing import Iterator

TCP_LISTEN = "0A"  # /proc/net/tcp state column


def _listen_inodes(pid: str) -> dict[int, int]:
    """inode -> local port of LISTEN sockets in pid's network namespace."""
    out = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[3] == TCP_LISTEN:
                        out[int(cols[9])] = int(cols[1].rsplit(":", 1)[1], 16)
        except OSError:
            continue
    return out


def _socket_inodes(pid: str) -> Iterator[int]:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            yield int(target[8:-1])


def _comm(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().strip()[:15]
    except OSError:
        return b""


def _cgroup_id(pid: str, mount: str | None) -> int:
    if not mount:
        return 0
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return os.stat(os.path.join(mount, line[3:].strip().lstrip("/"))).st_ino
    except OSError:
        pass
    return 0


def existing_listeners() -> dict[tuple[int, int], tuple[int, bytes, int]]:
    """(netns inode, port) -> (pid, comm, cgroup id) for every listening TCP socket we can attribute."""
    from bpfgate.doctor.system import cgroup2_mount

    mount = cgroup2_mount()
    listens_by_ns: dict[int, dict[int, int]] = {}
    found: dict[tuple[int, int], tuple[int, bytes, int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if ns not in listens_by_ns:
            listens_by_ns[ns] = _listen_inodes(pid)
        listens = listens_by_ns[ns]
        if not listens:
            continue
        for inode in _socket_inodes(pid):
            port = listens.get(inode)
            if port is not None and (ns, port) not in found:
                found[(ns, port)] = (int(pid), _comm(pid), _cgroup_id(pid, mount))
    return found


def seed(listeners_map) -> int:
    """Add existing_listeners() to trace_tcp's `listeners` map, after attach, without replacing what
    listen() recorded meanwhile; returns how many were added."""
    from bpfgate.errors import BpfgateError
    from bpfgate.kernel.maps import BPF_NOEXIST

    n = 0
    for (ns, port), (pid, comm, cgid) in existing_listeners().items():
        owner = {"pid": pid, "comm": list(comm.ljust(16, b"\0")), "cgroup_id": cgid}
        try:
            listeners_map.update({"netns": ns, "port": port, "pad": 0}, owner, BPF_NOEXIST)
            n += 1
        except BpfgateError:
            continue  # already known from a listen() we saw, or the map is full
    return n
