"""The agent: one long-running owner of the policy engines of a network namespace, reconciling them with a
policy directory.

Each round (every --interval seconds; at once on SIGHUP, and when a file of the directory is written or an
interface of the namespace appears or goes: watch.py) reads every policy file, and for each file whose
text or expanded interfaces changed, or whose engines are missing from the kernel (a filter someone
removed, an interface that went and came back), applies it through the control plane (policyctl: its
lock, its checks, its all-or-nothing swap). A file that fails to read or to apply is reported and nothing
of it changes; the others keep running. Hooks a file no longer names, and the hooks of a file that is
gone, are detached. What the agent applied is recorded in its state directory (owned.json), so a new
agent takes over a running one's engines without re-attaching them: enforcement never depends on the
agent process (the engines run from their pins).
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bpfgate.agent import client, desired
from bpfgate.agent.desired import Key, PolicyFile
from bpfgate.errors import BpfgateError, NotFound
from bpfgate.policy.model import Hook

STATE_DIR = client.DEFAULT_DIR
FULL_EVERY = 16   # rounds that edited a few rules between two collections of the whole heap (_freeze_heap)
KERNEL_HOOKS = {"tc-ingress": Hook.TC_INGRESS, "tcx-ingress": Hook.TC_INGRESS, "tc-egress": Hook.TC_EGRESS,
                "tcx-egress": Hook.TC_EGRESS, "xdp": Hook.XDP}


def log(level: str, msg: str, **fields: Any) -> None:
    """One JSON object per line on stderr (what journald and log shippers take as is)."""
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1000):03d}Z",
           "level": level, "msg": msg, **fields}
    print(json.dumps(rec, default=str), file=sys.stderr, flush=True)


def engines_in_kernel(netns: str | None) -> set[Key]:
    """(interface, hook) of every policy engine the kernel runs in `netns` (its filter, TCX link or XDP
    program is attached, not only recorded)."""
    from bpfgate import attach, status
    from bpfgate.engine.engine import OWNER

    recorded = {(a.netns, a.target, a.hook, a.prog_id): a for a in attach.records()}
    found = set()
    for e in status.interface_entries(netns):
        rec = recorded.get((e.netns, e.target, e.hook, e.prog_id))
        if rec is not None and rec.owner == OWNER and e.hook in KERNEL_HOOKS:
            found.add((e.target, KERNEL_HOOKS[e.hook]))
    return found


@dataclass
class Round:
    """What one reconcile round did."""
    applied: list[str] = field(default_factory=list)      # files applied (changed, new, or repaired)
    repaired: list[Key] = field(default_factory=list)     # hooks found missing in the kernel
    removed: list[Key] = field(default_factory=list)      # hooks no file names any more
    errors: dict[str, str] = field(default_factory=dict)  # file -> why nothing of it changed


class Agent:
    def __init__(self, policy_dir: str, *, netns: str | None = None, state_dir: str | None = None):
        self.policy_dir, self.netns = os.path.abspath(policy_dir), netns
        self.dir = client.ns_dir(netns, state_dir)
        self.busy = threading.Lock()           # held by a round; requests through the socket wait for it
        self._lock_fd: int | None = None
        self.owned: dict[str, dict] = {}       # file -> {"digest": ..., "keys": [[dev, hook], ...]}
        self.rounds = 0
        self.failed_rounds = 0
        self.repairs = 0
        self.last_round: Round | None = None
        self.last_round_time = 0.0             # time.time() of the last completed round
        self.files: list[PolicyFile] = []
        self._parsed: dict = {}                # desired.read's documents of the files whose bytes it saw
        self.ready = threading.Event()         # the first round is done
        self._wake = threading.Event()
        self._engines = None                   # engines held open for edits through the socket
        self.serving = False                   # its socket takes edits (api.py): rounds keep engines open
        self._since_whole = 0                  # rounds since the whole heap was last collected (_freeze_heap)

    @property
    def engines(self):
        """The engines the rounds and the edits through the socket use, held open between them (reopened
        when another writer changed one): a one-rule edit does not load the saved state every time, and a
        round compares a file's policy with the one it applied last (the same objects, mostly). Each round
        ends with them open and current (_hold_open)."""
        if self._engines is None:
            from bpfgate.policyctl.engine_backend import EngineBackend

            self._engines = EngineBackend(hold=True)
        return self._engines

    # ---- one agent per namespace -------------------------------------------------------------------

    def lock(self) -> None:
        """Take the namespace's agent lock, or refuse naming the agent that holds it."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.dir, "agent.pid")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode().strip() or "?"
            os.close(fd)
            raise BpfgateError(f"start agent for {self.where}", f"another agent runs there (pid {other})",
                               hint=f"stop it first: kill {other}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self.owned = self._load_owned()

    def unlock(self) -> None:
        if self._engines is not None:
            self._engines.close()
        if self._lock_fd is not None:
            try:
                os.unlink(os.path.join(self.dir, "agent.pid"))
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def where(self) -> str:
        return f"netns {self.netns}" if self.netns else "the host namespace"

    def _load_owned(self) -> dict[str, dict]:
        try:
            with open(os.path.join(self.dir, "owned.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def _save_owned(self) -> None:
        tmp = os.path.join(self.dir, "owned.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.owned, f)
        os.replace(tmp, os.path.join(self.dir, "owned.json"))

    # ---- reconcile ---------------------------------------------------------------------------------

    def reconcile(self) -> Round:
        with self.busy:
            return self._reconcile()

    def _reconcile(self) -> Round:
        from bpfgate import policyctl
        from bpfgate.kernel import netlink

        rnd = Round()
        try:
            names = [i.name for i in netlink.interfaces(self.netns)]
            self.files = desired.read(self.policy_dir, names, self._parsed)
            running = engines_in_kernel(self.netns)
        except BpfgateError as e:
            rnd.errors[self.policy_dir] = str(e)
            return self._done(rnd)
        for pf in self.files:
            if pf.error:
                rnd.errors[pf.path] = pf.error
                continue
            prev = self.owned.get(pf.path)
            missing = [k for k in pf.keys if k not in running]
            if prev is not None and prev["digest"] == pf.digest and not missing:
                continue
            if prev is not None and prev["digest"] == pf.digest:
                rnd.repaired += missing
                for dev, hook in missing:   # its state says attached, the kernel has none: start clean
                    self._remove(dev, hook)
            try:
                if pf.policies:   # with the held engines: the plan compares with the policy applied last
                    policyctl.apply(pf.policies, netns=self.netns, start_watcher=False, backend=self.engines)
            except BpfgateError as e:
                rnd.errors[pf.path] = str(e)
                continue
            for dev, hook in {tuple(k) for k in (prev or {}).get("keys", [])} - set(pf.keys):
                self._remove(dev, Hook(hook))
                rnd.removed.append((dev, Hook(hook)))
            self.owned[pf.path] = {"digest": pf.digest, "keys": [[d, h.value] for d, h in pf.keys]}
            rnd.applied.append(pf.path)
        for path in sorted(set(self.owned) - {pf.path for pf in self.files}):
            for dev, hook in self.owned.pop(path)["keys"]:
                self._remove(dev, Hook(hook))
                rnd.removed.append((dev, Hook(hook)))
        self._save_owned()
        opened = self._hold_open()
        if opened or rnd.applied or rnd.removed or rnd.repaired:
            # only edits made in the held engines (files read where they changed): the objects frozen
            # before are let go by reference counts alone
            small = not (opened or rnd.removed or rnd.repaired) and all(
                getattr(self._parsed.get(path), "split", None) is not None for path in rnd.applied)
            self._freeze_heap(whole=not small)
        return self._done(rnd)

    def _hold_open(self) -> int:
        """The engines the agent owns held open for edits through the socket, opened here, in the round
        (after the first round, after one that changed an engine), not at the next edit (at 100k rules
        opening one loads its saved state: most of a second). How many it opened or closed."""
        if not self.serving:   # --once, tests: no edit will come
            return 0
        keys = {(dev, Hook(hook)) for rec in self.owned.values() for dev, hook in rec["keys"]}
        try:
            changed, failed = self.engines.keep_open(keys, self.netns)
        except Exception as e:   # noqa: BLE001 - the round's work is done; the next edit opens what it needs
            log("warning", "engines not held open", error=f"{type(e).__name__}: {e}")
            return 1
        for (dev, hook), why in failed.items():
            log("warning", "engine not held open: the next edit opens it", interface=dev, hook=hook.value,
                error=why)
        return changed

    def _freeze_heap(self, whole: bool = True) -> None:
        """What the agent holds (the engines' state, the parsed files: millions of objects at 100k rules)
        kept out of the cyclic collector's reach: a full collection walks every object it tracks (~0.5 s at
        100k rules), which an edit through the socket would pay whenever one falls due. Done after a round
        that changed what is held. `whole`: what the last one froze is collected too (nothing is kept that
        only a collection would free: an engine replaced is a cycle with its state). Otherwise (a round that
        edited a few rules) only what was made since is collected, and every FULL_EVERY such rounds the
        whole heap is, so a cycle of frozen objects let go meanwhile is not kept for long."""
        if not self.serving:
            return
        self._since_whole = 0 if whole else self._since_whole + 1
        if self._since_whole >= FULL_EVERY:
            whole, self._since_whole = True, 0
        if whole:
            gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _remove(self, dev: str, hook: Hook) -> None:
        from bpfgate import policyctl

        try:
            policyctl.remove(dev, hook, netns=self.netns, backend=self.engines)
        except NotFound:
            pass   # gone already (its interface too, perhaps)

    def _done(self, rnd: Round) -> Round:
        self.rounds += 1
        self.failed_rounds += bool(rnd.errors)
        self.repairs += len(rnd.repaired)
        old_errors = self.last_round.errors if self.last_round else {}
        for path in rnd.applied:
            log("info", "applied", file=path)
        for dev, hook in rnd.repaired:
            log("warning", "drift repaired: the engine was missing in the kernel", interface=dev, hook=hook.value)
        for dev, hook in rnd.removed:
            log("info", "detached: no policy file names it", interface=dev, hook=hook.value)
        for path, err in rnd.errors.items():
            if old_errors.get(path) != err:   # once per new error, not every round
                log("error", "policy file not applied", file=path, error=err)
        for path in set(old_errors) - set(rnd.errors):
            log("info", "policy file ok again", file=path)
        self.last_round, self.last_round_time = rnd, time.time()
        self.ready.set()
        return rnd

    # ---- the loop ----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Reconcile now (SIGHUP)."""
        self._wake.set()

    def run(self, interval: float, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.reconcile()
            except Exception as e:   # a round must never kill the agent: say it, try again next round
                log("error", "reconcile failed", error=f"{type(e).__name__}: {e}")
                self.failed_rounds += 1
            self._wake.wait(interval)
            self._wake.clear()

    def healthy(self, interval: float) -> bool:
        """A round completed recently (the loop is not stuck)."""
        return self.ready.is_set() and time.time() - self.last_round_time < max(3 * interval, 30)
