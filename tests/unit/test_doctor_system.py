"""doctor's system checks on made-up /proc contents (file reads replaced, no kernel involved)."""

from __future__ import annotations

import pytest

from bpfgate.doctor import system
from bpfgate.errors import BpfgateError

HYBRID_MOUNTS = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
"""


@pytest.fixture
def files(monkeypatch):
    """Replace what system._read returns, per path (absent paths read as None: unreadable)."""
    content: dict[str, str] = {}
    monkeypatch.setattr(system, "_read", lambda path: content.get(path))
    return content


def test_cgroup2_mount_comes_from_mounts_not_a_fixed_path(files):
    files["/proc/self/mounts"] = HYBRID_MOUNTS
    assert system.cgroup2_mount() == "/sys/fs/cgroup/unified"
    files["/proc/self/mounts"] = "cgroup2 /run/x/cg cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
    assert system.cgroup2_mount() == "/sys/fs/cgroup"  # the system's, not a private one mounted earlier
    files["/proc/self/mounts"] = "cgroup2 /run/x/cg cgroup2 rw 0 0\n"
    assert system.cgroup2_mount() == "/run/x/cg"
    files["/proc/self/mounts"] = HYBRID_MOUNTS.replace("cgroup2", "cgroup")
    assert system.cgroup2_mount() is None
    c = system.check_cgroup2()
    assert c.status == "missing" and c.impact


def test_mount_points_with_escaped_spaces(files):
    files["/proc/self/mounts"] = "nodev /mnt/my\\040dir tracefs rw 0 0\n"
    assert system.mounts() == [("/mnt/my dir", "tracefs")]


def test_tracefs_at_either_place(files):
    files["/proc/self/mounts"] = HYBRID_MOUNTS
    assert not system.tracefs_mounted()
    files["/proc/self/mounts"] = HYBRID_MOUNTS + "tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n"
    assert system.tracefs_mounted()
    files["/proc/self/mounts"] = HYBRID_MOUNTS + "debugfs /sys/kernel/debug debugfs rw 0 0\n"
    assert system.tracefs_mounted() and "automounted" in system.check_tracefs().detail
    files["/proc/self/mounts"] = HYBRID_MOUNTS + "nodev /sys/kernel/tracing tracefs rw 0 0\n"
    c = system.check_tracefs()
    assert c.status == "ok" and c.detail == "mounted at /sys/kernel/tracing"


def test_tracefs_missing_offers_the_command_and_fix_runs_it(files, monkeypatch):
    files["/proc/self/mounts"] = HYBRID_MOUNTS
    mounted = []
    monkeypatch.setattr(system, "_mount", lambda *a: mounted.append(a))
    c = system.check_tracefs()
    assert c.status == "missing" and c.fix == "mount -t tracefs nodev /sys/kernel/tracing" and not mounted
    c = system.check_tracefs(fix=True)
    assert mounted == [("tracefs", "nodev", "/sys/kernel/tracing")] and c.status == "ok" and "--fix" in c.detail


def test_fix_that_fails_still_reports(files, monkeypatch):
    files["/proc/self/mounts"] = HYBRID_MOUNTS

    def refuse(*a):
        raise BpfgateError("mount tracefs at /sys/kernel/tracing", "permission denied")

    monkeypatch.setattr(system, "_mount", refuse)
    c = system.check_tracefs(fix=True)
    assert c.status == "missing" and "permission denied" in c.detail and c.fix


def test_bpffs_fix_uses_the_pins_helper(monkeypatch):
    from bpfgate.kernel import pins

    monkeypatch.setattr(pins, "is_bpffs", lambda path=pins.BPFFS: False)
    calls = []
    monkeypatch.setattr(pins, "mount_bpffs", lambda path=pins.BPFFS: calls.append(path))
    assert system.check_bpffs().fix == "mount -t bpf bpf /sys/fs/bpf" and not calls
    assert system.check_bpffs(fix=True).status == "ok" and calls == ["/sys/fs/bpf"]


@pytest.mark.parametrize("capeff, status, lacking", [
    ("000001ffffffffff", "ok", []),
    ("000001fffeffffff", "ok", []),  # CAP_SYS_RESOURCE (24) off: not one we need
    ("0000000000000000", "missing", ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_PERFMON"]),
    ("000000c000201000", "ok", []),  # exactly bits 12, 21, 38, 39
    ("0000008000201000", "missing", ["CAP_PERFMON"]),
])
def test_capabilities_from_capeff(files, capeff, status, lacking):
    files["/proc/self/status"] = f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n"
    c = system.check_capabilities()
    assert c.status == status
    for cap in lacking:
        assert cap in c.detail and cap in c.fix
    if lacking == ["CAP_PERFMON"]:
        assert "tracing" in c.impact


@pytest.mark.parametrize("value, status", [("1", "ok"), ("2", "ok"), ("0", "warn"), (None, "warn")])
def test_jit(files, value, status):
    if value is not None:
        files[system.JIT_SYSCTL] = value
    c = system.check_jit()
    assert c.status == status and (c.impact == "") == (status == "ok")


def test_informational_sysctls(files):
    files[system.UNPRIV_SYSCTL] = "2"
    files[system.STATS_SYSCTL] = "0"
    assert system.check_unprivileged_bpf().detail.startswith("2: disabled")
    assert system.check_bpf_stats().status == "ok"
