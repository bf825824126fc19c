"""cgroup v2 directories as targets of a policy (the policy engine at cgroup_skb, socket policy).

A cgroup target is named by its path: absolute, or relative to the cgroup v2 mount (read from
/proc/self/mounts: /sys/fs/cgroup on most machines, /sys/fs/cgroup/unified on hybrid ones). Inside bpfgate a
target is a string: a device name, or a cgroup path (it starts with "/"; device names never hold a "/").
Directories named after a target (pins, state) quote a cgroup path into one path component.
"""

from __future__ import annotations

import os

from bpfgate.errors import BadInput, NotFound, NotSupported

CGROUP2_MAGIC_FILE = "cgroup.controllers"   # only cgroup v2 directories have it (v1 ones have cgroup.procs too)


def cgroup2_mount() -> str | None:
    from bpfgate.doctor.system import cgroup2_mount   # the one reading of /proc/self/mounts

    return cgroup2_mount()


def is_cgroup(target: str) -> bool:
    return target.startswith("/")


def normalise(path: str) -> str:
    """A policy file's cgroup (absolute, or relative to the cgroup v2 mount) as an absolute path; no check
    that it exists (resolve() does, before anything is attached)."""
    if not path.startswith("/"):
        root = cgroup2_mount()
        if root is None:
            raise ValueError(f"cgroup {path!r} is relative but no cgroup v2 file system is mounted")
        path = os.path.join(root, path)
    return os.path.normpath(path)


def resolve(path: str) -> str:
    """The cgroup v2 directory at `path` (absolute, normalised), or a one-line error naming what it is not."""
    op = f"cgroup {path}"
    try:
        full = normalise(path)
    except ValueError as e:
        raise NotFound(op, str(e)) from None
    if not os.path.isdir(full):
        raise NotFound(op, "no such cgroup directory")
    root = cgroup2_mount()
    real = os.path.realpath(full)
    if (root is None or not (real == root or real.startswith(root.rstrip("/") + "/"))
            or not os.path.exists(os.path.join(real, CGROUP2_MAGIC_FILE))):
        if root is None:   # the machine lacks it, whatever path was given
            raise NotSupported(op, "no cgroup v2 file system is mounted", hint="bpfgate doctor --fix mounts it")
        raise BadInput(op, "not a cgroup v2 directory", hint=f"cgroup v2 is mounted at {root}")
    return full


def dir_name(target: str) -> str:
    """One path component for a target: a device name as it is, a cgroup path quoted ("%2Fsys%2F...")."""
    if not is_cgroup(target):
        return target
    from urllib.parse import quote

    return quote(target, safe="")


def from_dir_name(name: str) -> str:
    if not name.startswith("%2F"):
        return name
    from urllib.parse import unquote

    return unquote(name)
