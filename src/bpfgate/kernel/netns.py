"""Named network namespaces (iproute2's /run/netns/NAME): enter one for the calling thread.

libbpf calls that take an ifindex (bpf_tc_*, bpf_xdp_attach, TCX links) act in the caller's network
namespace, so code that attaches inside a named namespace runs under `entered(name)`.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

from bpfgate.errors import NotFound, from_errno

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def path_of(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path_of(name))


def require(op: str, name: str | None) -> None:
    """NotFound unless network namespace `name` exists (None: ours): for a command that only reads state
    kept by namespace, where a misspelt one would read as a namespace where nothing runs."""
    if name is not None and not exists(name):
        raise NotFound(op, f"no such network namespace {name!r}", hint="see `ip netns list`")


def _setns(fd: int, op: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise from_errno(op, ctypes.get_errno())


@contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body in network namespace `name` (None: stay where we are); always switch back."""
    if name is None:
        yield
        return
    op = f"enter network namespace {name!r}"
    try:
        target = os.open(path_of(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(op, "no such network namespace", hint="see `ip netns list`") from None
    except PermissionError:
        raise from_errno(op, 1) from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, op)
        try:
            yield
        finally:
            _setns(home, f"return from network namespace {name!r}")
    finally:
        os.close(target)
        os.close(home)
