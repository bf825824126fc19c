"""What starts an agent round between its --interval ticks: a file of the policy directory written, moved
or removed (inotify), and an interface of its namespace that appears, goes or changes (rtnetlink link
events). A new container's veth gets its policy within a round's time instead of up to --interval seconds,
and a policy file saved is enforced as it is closed. Writers should still replace files atomically
(write, then rename): a round that an interval tick starts may read a file half written."""

from __future__ import annotations

import ctypes
import os
import select
import socket
import threading
from typing import Callable

from bpfgate.errors import BpfgateError, from_errno
from bpfgate.kernel import netns as netns_mod

# <sys/inotify.h>: a file closed after writing, moved in or out, removed (not IN_CREATE/IN_MODIFY: mid-write)
_IN_EVENTS = 0x008 | 0x040 | 0x080 | 0x200
_RTMGRP_LINK = 1


class Watcher:
    """Calls `wake` (from its thread) when the policy directory or the namespace's interfaces change."""

    def __init__(self, policy_dir: str, netns: str | None, wake: Callable[[], None]):
        self.wake = wake
        self._fds: list[int] = []
        self._sock: socket.socket | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                raise from_errno(f"watch {policy_dir}", ctypes.get_errno())
            self._fds.append(fd)
            if libc.inotify_add_watch(fd, os.fsencode(policy_dir), _IN_EVENTS) < 0:
                raise from_errno(f"watch {policy_dir}", ctypes.get_errno())
            with netns_mod.entered(netns):   # the socket stays in the namespace it was made in
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                           | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
            self._sock.bind((0, _RTMGRP_LINK))
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, name="bpfgate-watch", daemon=True)

    @classmethod
    def start(cls, policy_dir: str, netns: str | None, wake: Callable[[], None]) -> "Watcher":
        w = cls(policy_dir, netns, wake)
        w._thread.start()
        return w

    def _run(self) -> None:
        assert self._sock is not None
        watched = [*self._fds, self._sock.fileno(), self._stop_r]
        while True:
            ready, _, _ = select.select(watched, [], [])
            if self._stop_r in ready:
                return
            for fd in ready:   # drain what arrived; what it says does not matter: a round reads everything
                try:
                    while (self._sock.recv(65536) if fd == self._sock.fileno() else os.read(fd, 65536)):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:   # ENOBUFS: events were lost, which is one more reason for a round
                    pass
            self.wake()

    def close(self) -> None:
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        if getattr(self, "_thread", None) is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        for fd in (*self._fds, self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._fds, self._stop_r, self._stop_w = [], -1, -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watch(policy_dir: str, netns: str | None, wake: Callable[[], None]) -> tuple[Watcher | None, str | None]:
    """A started Watcher, or (None, why not): the agent then acts on its interval alone."""
    try:
        return Watcher.start(policy_dir, netns, wake), None
    except (BpfgateError, OSError) as e:
        return None, str(e)
