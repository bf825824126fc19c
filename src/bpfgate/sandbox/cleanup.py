"""Removing what sandboxes made: the run's marker file, teardown steps, and sweeping crashed runs.

Every sandbox writes /run/bpfgate/sandbox/<tag>.json *before* it creates anything, listing what it is
about to make (namespaces, root-namespace interfaces, processes, work dir) and its owner (PID + start
time). A crashed run (SIGKILL, OOM kill) leaves that file behind (/run is tmpfs: a reboot clears it);
`sweep_stale` removes everything listed by files whose owner is gone, and also anything whose *name*
says it belongs to a dead PID (in case the marker itself was lost).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from bpfgate import families
from bpfgate.attach import record
from bpfgate.kernel import netns, pins
from bpfgate.sandbox import procs
from bpfgate.sandbox.names import DEFAULT_PREFIX, is_alive, owner_of, proc_start_time
from bpfgate.sandbox.timing import scaled


MARKER_DIR = "/run/bpfgate/sandbox"


@dataclass
class Record:
    """What one sandbox made (or is about to make): the marker file's content."""

    tag: str
    pid: int
    start_time: int | None
    netns: list[str] = field(default_factory=list)
    ifaces: list[str] = field(default_factory=list)  # in the root namespace
    procs: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, start time)
    workdir: str | None = None

    @property
    def path(self) -> str:
        return os.path.join(MARKER_DIR, f"{self.tag}.json")

    def save(self) -> None:
        os.makedirs(MARKER_DIR, exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f)
        os.replace(tmp, self.path)  # atomic: a crash never leaves half a file

    def claim(self) -> None:
        """Create the marker; fails if another sandbox has the same tag."""
        os.makedirs(MARKER_DIR, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        self.save()

    @classmethod
    def load(cls, path: str) -> "Record":
        with open(path) as f:
            d = json.load(f)
        d["procs"] = [tuple(p) for p in d.get("procs", [])]
        return cls(**d)


# ---- teardown steps: each is idempotent and never raises for "already gone" ----------------------

def kill_recorded(pid: int, start_time: int | None) -> None:
    if is_alive(pid, start_time):  # the start time guards against a reused PID
        procs.kill_group(pid, signal.SIGKILL)


def delete_root_iface(ifname: str) -> None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if idx:
            try:
                ipr.link("del", index=idx[0])
            except NetlinkError as e:
                if e.code != 19:  # ENODEV: its peer's namespace went first and took it along
                    raise


def remove_netns(name: str, deadline: float) -> None:
    if not netns.exists(name):
        return
    # a namespace lives on while a process is in it: end them first (they are ours, we made the ns)
    procs.kill_netns_pids(name, deadline)
    try:
        pr_netns.remove(name)  # umount2(MNT_DETACH) + unlink, without starting a process
    except FileNotFoundError:
        pass
    if netns.exists(name):
        raise OSError(f"network namespace {name} still present")


def remove_record(rec: Record) -> list[str]:
    """Undo everything `rec` lists; returns what could not be removed (empty when all went)."""
    deadline = time.monotonic() + scaled(5)
    problems = []
    for pid, start in rec.procs:
        kill_recorded(pid, start)
    steps = [(f"interface {i}", delete_root_iface, (i,)) for i in rec.ifaces]
    steps += [(f"netns {n}", remove_netns, (n, deadline)) for n in rec.netns]
    for what, fn, args in steps:
        try:
            fn(*args)
        except Exception as e:  # keep going: remove as much as we can, report the rest
            problems.append(f"{what}: {e}")
    if rec.workdir:
        shutil.rmtree(rec.workdir, ignore_errors=True)
    if not problems:
        try:
            os.unlink(rec.path)
        except FileNotFoundError:
            pass
    return problems


# ---- crashed runs --------------------------------------------------------------------------------

def _root_ifnames() -> list[str]:
    with IPRoute() as ipr:
        return [link.get("ifname") for link in ipr.get_links()]


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir(netns.NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def leftovers(pid: int, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Everything still present that sandboxes of process `pid` made: namespaces, root interfaces,
    marker files. Empty after a clean run; the test suite's leak check."""
    found = []
    for ns in _netns_names():
        o = owner_of(ns, prefix)
        if o and o[1] == pid:
            found.append(f"netns {ns}")
    for ifname in _root_ifnames():
        o = owner_of(ifname, prefix)
        if o and o[1] == pid:
            found.append(f"interface {ifname}")
    for f in _markers(prefix):
        o = owner_of(f[:-5], prefix)
        if o and o[1] == pid:
            found.append(f"marker {os.path.join(MARKER_DIR, f)}")
    return found


def _markers(prefix: str) -> list[str]:
    try:
        return sorted(f for f in os.listdir(MARKER_DIR) if f.endswith(".json") and owner_of(f[:-5], prefix))
    except FileNotFoundError:
        return []


def sweep_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove what sandboxes of dead processes left behind. Returns what was removed (for a report).
    Live runs are never touched: ownership is checked by PID and, where recorded, its start time."""
    removed = []
    live_tags = set()
    for f in _markers(prefix):
        try:
            rec = Record.load(os.path.join(MARKER_DIR, f))
        except (OSError, ValueError, TypeError):
            continue  # being written right now, or not ours to judge
        if is_alive(rec.pid, rec.start_time):
            live_tags.add(rec.tag)
            continue
        if not remove_record(rec):
            removed += [f"netns {n}" for n in rec.netns] + [f"interface {i}" for i in rec.ifaces]
    # names whose owner is dead but whose marker is missing
    for ns in _netns_names():
        o = owner_of(ns, prefix)
        if o and o[0] not in live_tags and not is_alive(o[1]):
            remove_netns(ns, time.monotonic() + scaled(5))
            removed.append(f"netns {ns}")
    for ifname in _root_ifnames():
        o = owner_of(ifname, prefix)
        if o and o[0] not in live_tags and not is_alive(o[1]):
            delete_root_iface(ifname)
            removed.append(f"interface {ifname}")
    removed += remove_run_state(lambda tag, pid: tag not in live_tags and not is_alive(pid), prefix)
    return sorted(set(removed))


RUN_STATE = "/run/bpfgate"
PIN_ROOT = pins.PIN_ROOT


def _state_roots() -> list[str]:
    """Where bpfgate keeps things per namespace: attachment records and clsact markers, the control plane's
    directories, every family's state under /run/bpfgate and its pins under /sys/fs/bpf/bpfgate."""
    roots = [os.path.join(RUN_STATE, sub) for sub in ("attachments", "policyctl", *families.with_state())]
    roots.append(record.CLSACT_DIR)
    try:
        roots += [os.path.join(PIN_ROOT, d) for d in sorted(os.listdir(PIN_ROOT))]
    except FileNotFoundError:
        pass
    return roots


def remove_run_state(gone: Callable[[str, int], bool], prefix: str = DEFAULT_PREFIX) -> list[str]:
    """bpfgate state and pins named after the hosts of sandboxes whose namespaces are gone (`gone(tag, owner
    pid)`): a policy still attached when its namespace went, or a killed run's that never tore down."""
    removed = []
    for root in _state_roots():
        try:
            names = os.listdir(root)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            o = owner_of(name.split(".", 1)[0], prefix)
            if not o or not gone(*o):
                continue
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            if root.startswith(PIN_ROOT + os.sep):
                pins.prune_empty(root)   # no empty pin directories left (as a detach leaves them)
            removed.append(f"state {path}")
    return removed


# ---- teardown even on Ctrl-C / SIGTERM / normal exit -----------------------------------------------

_live: set = set()  # sandboxes not yet closed, for the atexit hook
_sigterm_installed = False


def register(sandbox) -> None:
    global _sigterm_installed
    _live.add(sandbox)
    # SIGTERM's default action kills us without unwinding: turn it into SystemExit so `with` blocks
    # and atexit run. Only if nobody else handles SIGTERM, and only the main thread may install it.
    if (not _sigterm_installed and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_installed = True


def unregister(sandbox) -> None:
    _live.discard(sandbox)


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def close_all() -> None:
    for sb in list(_live):
        try:
            sb.close()
        except Exception:
            pass


def owner_start_time() -> int | None:
    return proc_start_time(os.getpid())
