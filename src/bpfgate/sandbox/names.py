"""Names of sandbox objects: unique per run, parseable back to the owner PID, short enough for interfaces.

A sandbox's tag is `<prefix><pid in base36>-<3 random base36>`, e.g. `bg1x2f-k3p`. Namespaces are
`<tag>-<host>`, root-namespace interfaces `<tag><n>`; both can be traced back to the owning PID by
`owner_of`, which is what `sweep_stale` needs after a crash (SIGKILL leaves no chance to clean up).
"""

from __future__ import annotations

import os
import re
import secrets

IFNAMSIZ = 15  # usable characters of a Linux interface name (IFNAMSIZ 16 incl. NUL)
DEFAULT_PREFIX = "bg"
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_PREFIX_RE = re.compile(r"^[a-z]{1,3}$")
HOST_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def base36(n: int) -> str:
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = _B36[r] + s
        if not n:
            return s


def check_prefix(prefix: str) -> str:
    # <= 3 letters keeps `<tag><n>` within 15 characters for any PID (<= 2**22, 5 base36 digits)
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"sandbox prefix must be 1-3 lowercase letters, got {prefix!r}")
    return prefix


def new_tag(prefix: str = DEFAULT_PREFIX, pid: int | None = None) -> str:
    rand = "".join(secrets.choice(_B36) for _ in range(3))
    return f"{check_prefix(prefix)}{base36(os.getpid() if pid is None else pid)}-{rand}"


def tag_re(prefix: str) -> re.Pattern:
    return re.compile(rf"^({re.escape(check_prefix(prefix))}([0-9a-z]+)-[0-9a-z]{{3}})(.*)$")


def owner_of(name: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, int] | None:
    """(tag, owner pid) of a sandbox object's name, or None if the name is not one of ours."""
    m = tag_re(prefix).match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2), 36)


def netns_name(tag: str, host: str) -> str:
    if not HOST_RE.match(host):
        raise ValueError(f"host name must match {HOST_RE.pattern}, got {host!r}")
    return f"{tag}-{host}"


def root_ifname(tag: str, n: int) -> str:
    name = f"{tag}{n}"
    if len(name) > IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ} characters")
    return name


def check_ifname(name: str) -> str:
    if not 0 < len(name) <= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"bad interface name {name!r} (1-{IFNAMSIZ} characters, no '/' or spaces)")
    return name


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (None if gone): tells a PID from its reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # field 22; the command name (field 2) may contain spaces and parentheses, so split after its ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def is_alive(pid: int, start_time: int | None = None) -> bool:
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)
