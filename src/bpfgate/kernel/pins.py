"""bpffs pins under /sys/fs/bpf/bpfgate/: state that outlives a process (programs, maps, links)."""

from __future__ import annotations

import os
import shutil
import subprocess

from bpfgate.errors import BpfgateError, from_errno

BPFFS = "/sys/fs/bpf"
PIN_ROOT = os.path.join(BPFFS, "bpfgate")
BPF_FS_MAGIC = 0xCAFE4A11


def is_bpffs(path: str = BPFFS) -> bool:
    """Whether `path` is on a bpf filesystem (from /proc/self/mounts: no statfs magic in os)."""
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == path and line.split()[2] == "bpf" for line in f)
    except OSError:
        return False


def mount_bpffs(path: str = BPFFS) -> None:
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "bpf", "bpf", path], capture_output=True, text=True)
    if r.returncode != 0:
        raise BpfgateError(f"mount bpffs at {path}", r.stderr.strip() or "mount failed")


def ensure_bpffs() -> None:
    """Pins need bpffs at /sys/fs/bpf: mount it when missing (as `bpftool` and systemd would)."""
    if not is_bpffs():
        mount_bpffs()


def ensure_parent(path: str) -> None:
    ensure_bpffs()
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise from_errno(f"create pin directory {parent}", e.errno or 1) from None


def pin_path(*parts: str) -> str:
    return os.path.join(PIN_ROOT, *parts)


def unpin(path: str) -> bool:
    """Remove a pin (file) or a directory of pins; True if something was removed."""
    try:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def prune_empty(path: str, stop: str = PIN_ROOT) -> None:
    """Remove empty directories from `path` up to and including `stop` (leave no empty pin dirs)."""
    path = os.path.abspath(path)
    while path.startswith(os.path.abspath(stop)):
        try:
            os.rmdir(path)
        except OSError:
            return
        if path == os.path.abspath(stop):
            return
        path = os.path.dirname(path)
