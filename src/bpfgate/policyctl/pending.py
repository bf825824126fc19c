"""`apply --confirm SECONDS`: the previous policy comes back unless the change is confirmed in time.

Before the change, the previous state of every hook it touches is written to a pending-rollback file
(/run/bpfgate/policyctl/<netns>/pending.json). A detached watcher process (`python -m
bpfgate.policyctl.watcher FILE`, its own session, so it outlives the CLI and a closed SSH session) polls
the file; at the deadline it claims the file by renaming it and restores the previous policy. A
confirmation claims the same file by removing it: whichever of the two renames/removes it first wins, so
a late confirmation never races a rollback. The watcher exits as soon as the file is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bpfgate.errors import BpfgateError, NotFound
from bpfgate.policy.hooks import Hook

if TYPE_CHECKING:   # the paths and the lock are read by apply's no-change check, without the models
    from bpfgate.policy.model import HookPolicy

STATE_DIR = "/run/bpfgate/policyctl"


def state_dir(netns: str | None, root: str | None = None) -> str:
    return os.path.join(root or STATE_DIR, netns or "-")


def pending_path(netns: str | None, root: str | None = None) -> str:
    return os.path.join(state_dir(netns, root), "pending.json")


def result_path(netns: str | None, root: str | None = None) -> str:
    return os.path.join(state_dir(netns, root), "last-rollback.json")


@contextmanager
def locked_dir(directory: str):
    """One control-plane change at a time per namespace (apply, rule edits, remove, a rollback)."""
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def locked(netns: str | None, root: str | None = None):
    return locked_dir(state_dir(netns, root))


def forget(netns: str | None, root: str | None = None) -> None:
    """Remove the namespace's state directory once nothing is pending (after its last policy went)."""
    d = state_dir(netns, root)
    if not os.path.exists(os.path.join(d, "pending.json")):
        import shutil

        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Pending:
    netns: str | None
    deadline: float
    previous: dict[tuple[str, Hook], HookPolicy | None]
    mode: str | None = None
    watcher_pid: int = 0
    path: str = ""

    @property
    def remaining(self) -> float:
        return max(0.0, self.deadline - time.time())

    def to_json(self) -> dict[str, Any]:
        from .export import hook_data

        return {"netns": self.netns, "deadline": self.deadline, "mode": self.mode,
                "watcher_pid": self.watcher_pid,
                "previous": [{"dev": d, "hook": h.value, "policy": hook_data(hp) if hp is not None else None}
                             for (d, h), hp in self.previous.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = "") -> Pending:
        from bpfgate.policy.model import HookPolicy

        prev = {(e["dev"], Hook(e["hook"])): (HookPolicy.model_validate(e["policy"]) if e["policy"] else None)
                for e in data["previous"]}
        return cls(data["netns"], float(data["deadline"]), prev, data.get("mode"), int(data.get("watcher_pid", 0)),
                   path)


def _write(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read(netns: str | None, root: str | None = None) -> Pending | None:
    path = pending_path(netns, root)
    try:
        with open(path) as f:
            return Pending.from_json(json.load(f), path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BpfgateError(f"read {path}", f"unreadable pending rollback: {e}") from None


def arm(pending: Pending, root: str | None = None, start_watcher: bool = True) -> Pending:
    """Write the pending-rollback file (before the change is made) and start the watcher."""
    pending.path = pending_path(pending.netns, root)
    if os.path.exists(pending.path):
        raise BpfgateError("apply with --confirm", "a change is already waiting for confirmation",
                           hint="`bpfgate confirm` it, or wait for its rollback")
    _write(pending.path, pending.to_json())
    if start_watcher:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        import subprocess

        proc = subprocess.Popen([sys.executable, "-m", "bpfgate.policyctl.watcher", pending.path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True, env=env)
        pending.watcher_pid = proc.pid
        data = pending.to_json()
        _write(pending.path, data)
    return pending


def restart_clock(pending: Pending, seconds: float) -> None:
    """Deadline = now + seconds (called once the change is in place, so slow changes do not eat the time)."""
    pending.deadline = time.time() + seconds
    _write(pending.path, pending.to_json())


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def disarm(pending: Pending) -> None:
    """Forget a pending rollback whose change failed (and was rolled back already)."""
    try:
        os.unlink(pending.path)
    except FileNotFoundError:
        pass


def confirm(netns: str | None, root: str | None = None) -> Pending:
    """Keep the change: claim the pending file (the watcher then exits). NotFound when none is pending."""
    path = pending_path(netns, root)
    try:
        with open(path) as f:
            pending = Pending.from_json(json.load(f), path)
        os.unlink(path)   # the claim: if the watcher renamed it first, this fails and the rollback stands
    except FileNotFoundError:
        raise NotFound("confirm policy", "no change is waiting for confirmation",
                       hint=_last_outcome(netns, root)) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BpfgateError(f"confirm policy ({path})", str(e)) from None
    _write(confirmed_path(netns, root), {"time": time.time()})
    return pending


def confirmed_path(netns: str | None, root: str | None = None) -> str:
    return os.path.join(state_dir(netns, root), "last-confirm.json")


def _last_outcome(netns: str | None, root: str | None) -> str | None:
    """What became of the last change waiting for confirmation: the newer of its confirmation and its
    rollback (a rollback from before a later confirmed change is not the answer)."""
    try:
        with open(confirmed_path(netns, root)) as f:
            confirmed = float(json.load(f)["time"])
    except (OSError, ValueError, KeyError, TypeError):
        confirmed = None
    last = last_rollback(netns, root)
    rolled_back = float(last["time"]) if last and "time" in last else None
    at = lambda t: time.strftime("%H:%M:%S", time.localtime(t))   # noqa: E731
    if confirmed is not None and (rolled_back is None or confirmed >= rolled_back):
        return f"the last change was confirmed at {at(confirmed)}"
    if rolled_back is not None:
        return f"the change was rolled back at {at(rolled_back)}"
    return None


def claim_for_rollback(path: str) -> Pending | None:
    """The watcher's side of the claim. None when the change was confirmed meanwhile."""
    claimed = path + ".rollback"
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return None
    with open(claimed) as f:
        p = Pending.from_json(json.load(f), claimed)
    return p


def last_rollback(netns: str | None, root: str | None = None) -> dict | None:
    try:
        with open(result_path(netns, root)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def record_rollback(p: Pending, ok: bool, detail: str) -> None:
    """Next to the pending file: what the watcher did (read by confirm's message and by tests)."""
    _write(os.path.join(os.path.dirname(p.path), "last-rollback.json"),
           {"time": time.time(), "ok": ok, "detail": detail})


def rollback(p: Pending, backend) -> int:
    """Restore the previous state of the hooks a pending change touched. Returns hooks changed."""
    from .apply import execute, restore_plan

    plan = restore_plan(p.previous, backend.running(p.netns), p.netns)
    return execute(plan, backend, mode=p.mode, op="roll back unconfirmed policy")


def watch(path: str, backend=None, poll: float = 0.1) -> int:
    """The watcher's loop: exit 0 when confirmed, else roll back at the deadline (exit 1 if that failed).
    The deadline is re-read on every poll: apply() restarts the clock once the change is in place."""
    while True:
        try:
            with open(path) as f:
                deadline = float(json.load(f)["deadline"])
        except FileNotFoundError:
            return 0                      # confirmed (or claimed by someone else)
        except (OSError, ValueError, KeyError):
            time.sleep(poll)              # caught between write and rename: read again
            continue
        left = deadline - time.time()
        if left <= 0:
            break
        time.sleep(min(poll, left))
    p = claim_for_rollback(path)
    if p is None:
        return 0
    if backend is None:
        from .engine_backend import EngineBackend

        backend = EngineBackend()
    try:
        with locked_dir(os.path.dirname(p.path)):
            n = rollback(p, backend)
        record_rollback(p, True, f"restored {n} hook(s)")
        return 0
    except Exception as e:  # noqa: BLE001 - the watcher has nobody to raise to: record it
        record_rollback(p, False, str(e))
        return 1
    finally:
        try:
            os.unlink(p.path)
        except FileNotFoundError:
            pass
