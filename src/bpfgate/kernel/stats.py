"""Program run statistics (run_cnt, run_time_ns): off by default in the kernel, on while an fd is held."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from bpfgate.errors import from_errno
from bpfgate.kernel import libbpf as L

BPF_STATS_RUN_TIME = 0
SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


def sysctl_enabled() -> bool:
    try:
        with open(SYSCTL) as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def enable_stats() -> int:
    """Turn run-time stats on for as long as the returned fd stays open (bpf_enable_stats)."""
    fd = L.bpf_enable_stats(BPF_STATS_RUN_TIME)
    if fd < 0:
        raise from_errno("enable BPF run-time stats", L.libc_errno())
    return fd


@contextmanager
def stats_enabled() -> Iterator[None]:
    fd = enable_stats()
    try:
        yield
    finally:
        os.close(fd)
