"""`bpfgate doctor` against the real kernel: the JSON document, the core probes, optional features
reported with reasons, nothing left behind, `--fix` mounting tracefs (in a private mount namespace, so
the host's mounts are never touched), and an unprivileged run that reports instead of crashing."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from bpfgate import doctor
from bpfgate.doctor import probes, system
from bpfgate.errors import NotFound
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

TIMEOUT = scaled(120)  # seconds for a whole doctor run (it takes about one)
TOP_KEYS = {"schema", "bpfgate", "kernel", "core_ok", "exit_code", "missing", "checks"}
CHECK_KEYS = {"name", "kind", "status", "detail", "impact", "fix", "errno", "essential"}
# what must work on the machines bpfgate is developed and tested on (DESIGN.md section 2)
MUST_WORK = ["btf", "maps", "ringbuf", "tc", "xdp_generic", "test_run", "tp_btf", "cgroup_skb", "sockops",
             "engine", "capture", "flows", "syn", "attempts"]
# bpfgate's tracers: they load (ok), or load without what this kernel's tracepoints lack (warn, saying what)
TRACERS = ["trace_tcp", "trace_drops"]
# may be absent (they are here: CONFIG_KPROBES off, fentry EPERM); a reason is then mandatory
OPTIONAL = ["kprobes", "fentry", "tracepoints", "tcx", "xdp_native", "xdp_live_frames", "raw_tracepoints",
            "sk_msg", "sk_skb"]


def bpfgate(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "bpfgate.cli.main", *args],
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def report() -> tuple[int, dict]:
    r = bpfgate("doctor", "--json")
    assert r.stderr == "", r.stderr  # no traceback, no libbpf noise
    return r.returncode, json.loads(r.stdout)


def too_old_here(check: dict) -> bool:
    """A check refused because this kernel predates what it needs, naming a version newer than this
    kernel's (Debian 11's 5.10: flows and syn need atomic fetch instructions, 5.12; trace drops the drop
    reasons, 5.17). The issue's rule: works, or refused naming the feature and the version that has it."""
    need = re.search(r"\(needs Linux >= (\d+)\.(\d+)\)", check["detail"])
    have = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    return check["status"] == "missing" and need is not None and tuple(map(int, need.groups())) > have


def by_name(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def test_json_document_keys_are_stable(report):
    rc, doc = report
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == 1 and doc["kernel"] == os.uname().release
    assert [c["name"] for c in doc["checks"]] == doctor.names()
    for c in doc["checks"]:
        assert set(c) == CHECK_KEYS, c["name"]
        assert c["kind"] in ("system", "probe", "object") and c["status"] in ("ok", "missing", "warn")
        assert isinstance(c["detail"], str) and c["detail"]
        assert c["essential"] == (c["name"] in doctor.ESSENTIAL)
        assert (c["impact"] == "") == (c["status"] == "ok"), c
    assert doc["missing"] == [c["name"] for c in doc["checks"] if c["status"] == "missing"]
    assert rc == doc["exit_code"]


@pytest.mark.smoke
def test_core_works_here_and_exit_status_is_zero(report):
    rc, doc = report
    checks = by_name(doc)
    broken = {n: checks[n]["detail"] for n in MUST_WORK
              if checks[n]["status"] != "ok" and not too_old_here(checks[n])}
    assert not broken
    assert doc["core_ok"] is True and rc == 0


def test_bpfgate_objects_are_loaded_and_the_engine_is_essential(report):
    _, doc = report
    checks = by_name(doc)
    assert checks["engine"]["kind"] == "object" and checks["engine"]["essential"]
    assert "TC, XDP" in checks["engine"]["detail"] and "cgroup_skb" in checks["engine"]["detail"]
    for name in TRACERS:
        c = checks[name]
        assert c["kind"] == "object", c
        if too_old_here(c):
            continue
        assert c["status"] in ("ok", "warn"), c
        assert "loaded" in c["detail"] and (c["status"] == "ok") == (c["impact"] == ""), c
        if c["status"] == "warn":
            assert "Linux >= " in c["impact"], c  # what is lost names the version that has it


def test_optional_features_are_ok_or_missing_with_a_reason(report):
    _, doc = report
    checks = by_name(doc)
    for name in OPTIONAL:
        c = checks[name]
        assert c["kind"] == "probe" and c["status"] in ("ok", "missing"), c
        if c["status"] == "missing":
            assert c["detail"] and c["impact"], c  # why, and what bpfgate does without it
            assert c["errno"], c  # the kernel's answer, e.g. ENOENT (no kprobe PMU) or EPERM (fentry)
    kprobes = checks["kprobes"]
    if not os.path.exists(probes.KPROBE_PMU):  # this VM: CONFIG_KPROBES off
        assert kprobes["status"] == "missing" and "CONFIG_KPROBES" in kprobes["detail"]
        assert "tracepoint" in kprobes["impact"]


def test_system_facts_match_the_host(report):
    _, doc = report
    checks = by_name(doc)
    assert checks["btf"]["status"] == "ok"
    cg2 = [line.split()[1] for line in open("/proc/self/mounts") if line.split()[2] == "cgroup2"]
    if cg2:
        assert checks["cgroup2"]["status"] == "ok" and checks["cgroup2"]["detail"].split()[-1] in cg2
    from bpfgate.kernel import libbpf

    assert checks["libbpf"]["detail"].startswith(libbpf.version())
    assert checks["capabilities"]["status"] == "ok"  # kernel tests run as root
    tracefs_here = system.tracefs_mounted()
    assert (checks["tracefs"]["status"] == "ok") == tracefs_here
    if not tracefs_here:
        assert checks["tracefs"]["fix"] == "mount -t tracefs nodev /sys/kernel/tracing"
        assert checks["tracepoints"]["status"] == "missing" and checks["tracepoints"]["fix"]


def test_human_table_and_exit_status():
    r = bpfgate("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    for word in ("check", "status", "detail", "impact", "kprobes", "xdp_generic", "core ready"):
        assert word in r.stdout
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- nothing left behind


def _bg_probe_prog_ids(after: int = 0) -> list[int]:
    from bpfgate.kernel import libbpf as L
    from bpfgate.kernel.objects import Program

    found, cur = [], ctypes.c_uint32(after)
    while L.bpf_prog_get_next_id(cur.value, ctypes.byref(cur)) == 0:
        try:
            prog = Program.from_id(cur.value)
        except Exception:
            continue  # freed meanwhile
        try:
            if prog.name.startswith("bg_probe_"):
                found.append(cur.value)
        finally:
            prog.close()
    return found


def _max_prog_id() -> int:
    from bpfgate.kernel import libbpf as L

    last, cur = 0, ctypes.c_uint32(0)
    while L.bpf_prog_get_next_id(cur.value, ctypes.byref(cur)) == 0:
        last = cur.value
    return last


def _root_state() -> dict:
    cg = system.cgroup2_mount()
    return {
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
        "ifaces": sorted(os.listdir("/sys/class/net")),
        "cgroups": sorted(d for d in os.listdir(cg) if d.startswith("bpfgate-doctor-")) if cg else [],
    }


def test_probes_leave_nothing_behind_in_process():
    """In this very process (so no fd can hide behind process exit): after every probe ran, the
    scratch cgroups and every probe program are gone, and this thread is back in its own namespace.
    A tc filter, XDP program or TCX link holds its program, so a scratch namespace (or attachment)
    that outlived its probe would keep a bg_probe_* program alive."""
    my_netns = os.stat("/proc/thread-self/ns/net").st_ino
    before, first_id = _root_state(), _max_prog_id()
    checks = doctor.run_checks(only=list(probes.PROBES))
    assert [c.name for c in checks] == list(probes.PROBES)
    assert os.stat("/proc/thread-self/ns/net").st_ino == my_netns
    after = _root_state()
    assert not [i for i in after["ifaces"] if i.startswith("bgprobe")]
    assert not after["cgroups"]
    # scratch namespaces are anonymous: none may show up under /run/netns (others' tests may add theirs)
    assert not [n for n in set(after["netns"]) - set(before["netns"]) if "probe" in n or "doctor" in n]
    # the kernel frees namespaces and programs asynchronously: wait (bounded) for the last reference
    deadline = time.monotonic() + scaled(15)
    while _bg_probe_prog_ids(first_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _bg_probe_prog_ids(first_id) == [], "a probe program is still referenced (attachment or fd left)"


def test_a_failing_probe_still_cleans_up(monkeypatch):
    """A probe that fails after attaching (here: made to fail on purpose) leaves nothing either."""
    from bpfgate.kernel import netlink

    real = netlink.xdp_attach

    def attach_then_fail(*a, **kw):
        real(*a, **kw)
        raise OSError(5, "injected failure after attach")

    monkeypatch.setattr(netlink, "xdp_attach", attach_then_fail)
    my_netns, first_id = os.stat("/proc/thread-self/ns/net").st_ino, _max_prog_id()
    c = doctor.run_check("xdp_generic")
    assert c.status == "missing" and "injected failure" in c.detail and c.errno == "EIO"
    assert os.stat("/proc/thread-self/ns/net").st_ino == my_netns
    deadline = time.monotonic() + scaled(15)
    while _bg_probe_prog_ids(first_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _bg_probe_prog_ids(first_id) == []


# ---------------------------------------------------------------- Python API


def test_feature_available_runs_one_check_once(monkeypatch):
    doctor.clear_cache()
    calls = []
    real = doctor.run_check
    monkeypatch.setattr(doctor, "run_check", lambda name, **kw: calls.append(name) or real(name, **kw))
    assert doctor.feature_available("tp_btf") is True
    assert doctor.feature_available("tp_btf") is True
    kprobes = doctor.feature_available("kprobes")
    assert kprobes == os.path.exists(probes.KPROBE_PMU)
    assert calls == ["tp_btf", "kprobes"]
    with pytest.raises(NotFound):
        doctor.feature_available("warp_drive")
    doctor.clear_cache()


# ---------------------------------------------------------------- --fix and unprivileged runs


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) from util-linux")
def test_fix_mounts_tracefs_and_bpffs_in_a_private_mount_namespace():
    """Inside `unshare -m` (private propagation) the host's mounts are untouched whatever happens:
    unmount tracefs and bpffs there, then `doctor --fix` must mount both and the tracepoint probe work."""
    host_before = open("/proc/self/mounts").read()
    script = (
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; "
        "umount /sys/kernel/debug 2>/dev/null; "  # debugfs would automount tracefs at debug/tracing
        "umount /sys/fs/bpf 2>/dev/null; "
        "grep -c -E ' (tracefs|bpf) ' /proc/self/mounts; "  # 0: nothing mounted before the fix
        # >&2, not > /dev/stderr: in a virtme-ng guest /dev/stderr is a link to a virtio console port,
        # so opening it by name sends the JSON to the guest's console instead of this pipe
        f"{sys.executable} -m bpfgate.cli.main doctor --fix --json >&2; echo rc=$?; "
        "grep -E ' (tracefs|bpf) ' /proc/self/mounts"
    )
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=TIMEOUT)
    lines = r.stdout.splitlines()
    assert lines[0] == "0", r.stdout
    assert "rc=0" in lines, r.stdout
    doc = json.loads(r.stderr)
    checks = by_name(doc)
    assert checks["tracefs"]["status"] == "ok" and "--fix" in checks["tracefs"]["detail"]
    assert checks["bpffs"]["status"] == "ok" and "--fix" in checks["bpffs"]["detail"]
    assert checks["tracepoints"]["status"] == "ok", checks["tracepoints"]
    assert any(" /sys/kernel/tracing tracefs " in line for line in lines)
    assert any(" /sys/fs/bpf bpf " in line for line in lines)
    # the host's mount table did not change: the mounts lived and died with the private namespace
    assert _mount_points(open("/proc/self/mounts").read()) == _mount_points(host_before)


def _mount_points(table: str) -> set[tuple[str, str]]:
    return {(p[1], p[2]) for p in (line.split() for line in table.splitlines()) if p[2] in ("tracefs", "bpf")}


def test_without_fix_doctor_only_reports(report):
    _, doc = report
    tracefs = by_name(doc)["tracefs"]
    if tracefs["status"] == "missing":
        assert not system.tracefs_mounted()  # the report run did not mount it


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv(1) from util-linux")
def test_unprivileged_run_reports_instead_of_crashing():
    """As nobody with no capabilities: every probe is MISSING with EPERM and a fix, exit status 1,
    one JSON document, no traceback."""
    drop = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all")
    probe = subprocess.run([*drop, sys.executable, "-c", "import bpfgate.doctor"], capture_output=True, timeout=scaled(30))
    if probe.returncode != 0:  # e.g. a checkout under /root: nobody cannot even read the code
        pytest.skip("user nobody cannot run this checkout's Python")
    r = bpfgate("doctor", "--json", prefix=drop)
    assert "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["core_ok"] is False and doc["exit_code"] == 1
    checks = by_name(doc)
    assert checks["capabilities"]["status"] == "missing"
    for name in ("maps", "tc", "xdp_generic", "ringbuf"):
        assert checks[name]["status"] == "missing" and checks[name]["errno"] in ("EPERM", "EACCES")
        assert "root" in checks[name]["fix"]


def test_attached_but_never_run_is_missing(monkeypatch):
    """The packet-path probes require the program to run on frames crossing the scratch veth: with the
    frames suppressed, attaching alone does not pass."""
    names = ["tc", "xdp_generic"] + (["tcx"] if doctor.check("tcx").ok else [])  # TCX: Linux >= 6.6
    monkeypatch.setattr(probes, "RUN_WAIT", 0.2)
    monkeypatch.setattr(probes.scratch, "send_frame", lambda ifname, frame: None)
    for name in names:
        c = doctor.run_check(name)
        assert c.status == "missing" and "did not run" in c.detail, c
