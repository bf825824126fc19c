"""Throwaway places for probes to attach to: a network namespace with a veth pair, a cgroup.

The namespace is anonymous: the calling thread unshare()s into it and setns()es back. It has no name
in /run/netns and no process in it, so the kernel destroys it (with its veths, qdiscs, filters and XDP
programs) as soon as the thread leaves and the last socket into it closes, whatever happened inside,
even if we are SIGKILLed: nothing to clean up, nothing another tool could see or keep alive.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from bpfgate.errors import BpfgateError, NotSupported, from_errno

CLONE_NEWNET = 0x40000000
VETH, PEER = "bgprobe0", "bgprobe1"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True)
class Veth:
    name: str
    ifindex: int
    peer: str
    peer_ifindex: int


@contextmanager
def netns() -> Iterator[None]:
    """Run the body (this thread only) in a new, empty network namespace with only `lo`, up, and IPv6
    quiet. Always returns to the caller's namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise from_errno("create a scratch network namespace", err,
                             hint="needs CAP_SYS_ADMIN" if err == errno.EPERM else None)
        try:
            _quiet_ipv6()
            _links(lambda ipr: None)
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:  # cannot happen with our own fd; never stay behind silently
                raise from_errno("return from the scratch network namespace", ctypes.get_errno())
    finally:
        os.close(home)


@contextmanager
def netns_with_veth() -> Iterator[Veth]:
    """netns() holding the veth pair bgprobe0 <-> bgprobe1, both up, no addresses."""
    with netns():
        yield _links(lambda ipr: ipr.link("add", ifname=VETH, kind="veth", peer=PEER))


def _links(create) -> Veth | None:
    """Run `create(ipr)`, then bring every interface up; the Veth when there is one."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:  # created here, so bound to the scratch namespace
            create(ipr)
            indexes = {}
            for link in ipr.get_links():
                indexes[link.get_attr("IFLA_IFNAME")] = link["index"]
                ipr.link("set", index=link["index"], state="up")
    except NetlinkError as e:
        if e.code == errno.EOPNOTSUPP:
            raise NotSupported("veth", "the kernel has no veth driver (CONFIG_VETH)") from None
        raise from_errno("set up interfaces in the scratch namespace", e.code) from None
    if VETH not in indexes:
        return None
    return Veth(VETH, indexes[VETH], PEER, indexes[PEER])


@contextmanager
def tcp_pair(timeout: float = 2.0) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected (client, server) TCP pair over 127.0.0.1 of this thread's namespace."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=timeout)
        try:
            listener.settimeout(timeout)
            server, _ = listener.accept()
            try:
                server.settimeout(timeout)
                yield client, server
            finally:
                server.close()
        finally:
            client.close()


def _quiet_ipv6() -> None:
    """No IPv6 on the scratch interfaces: a veth coming up would otherwise send router solicitations
    and MLD reports by itself, and probes count the frames their programs see."""
    try:  # /proc/sys/net is the opening thread's namespace: this one is the scratch namespace's
        with open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f:
            f.write("1")
    except FileNotFoundError:  # a kernel without IPv6 sends nothing by itself anyway
        pass


def send_frame(ifname: str, frame: bytes) -> None:
    """Put one raw Ethernet frame on `ifname` of this thread's namespace (the scratch one: the frame
    crosses the veth to its peer and ends there, nothing routes it anywhere)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        s.send(frame)


@contextmanager
def cgroup(root: str) -> Iterator[str]:
    """An empty child cgroup of the cgroup2 mount `root`, removed afterwards (rmdir: it holds no task)."""
    path = os.path.join(root, f"bpfgate-doctor-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        os.mkdir(path)
    except OSError as e:
        raise BpfgateError(f"create cgroup {path}", e.strerror or str(e)) from None
    try:
        yield path
    finally:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
