"""Engine state that must outlive the process: the LiveHook (rule names <-> slots, priorities, key owners)
as a snapshot plus a journal of the live edits made since, under /run/bpfgate/engine/<netns>/<dev>/<hook>/.

A snapshot is written on attach and swap (pickle: the LiveHook holds pydantic rules and byte keys; the
directory is root-only). A live edit appends one JSON line; opening replays the lines through LiveHook,
which is deterministic, so another process ends up with the same state without rewriting the snapshot
(an edit stays ~1 ms at 100k rules). Writers hold an flock on the directory's lock file.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pickle
import shutil
from contextlib import contextmanager

from bpfgate.policy.live import LiveHook
from bpfgate.policy.model import Hook, Rule

STATE_ROOT = "/run/bpfgate/engine"


def _rule(text: str) -> Rule:
    rule = pickle.loads(base64.b64decode(text))
    if not isinstance(rule, Rule):
        raise ValueError("journal entry is not a rule")
    return rule


class StateStore:
    def __init__(self, dev: str, hook: Hook, netns_name: str | None):
        self.dir = os.path.join(STATE_ROOT, netns_name or "-", dev, Hook(hook).value)

    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exists(self) -> bool:
        return os.path.exists(self._p("meta.json"))

    @staticmethod
    def listing(netns_name: str | None) -> list[tuple[str, Hook]]:
        base = os.path.join(STATE_ROOT, netns_name or "-")
        out = []
        for dev in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            for h in Hook:
                if os.path.exists(os.path.join(base, dev, h.value, "meta.json")):
                    out.append((dev, h))
        return out

    @contextmanager
    def locked(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        with open(self._p("lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _write(self, name: str, data: bytes) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        tmp = self._p(name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self._p(name))

    def version(self) -> tuple:
        """Changes whenever another process snapshots or journals: (snapshot mtime, journal size)."""
        out = []
        for name in ("snapshot.pickle", "journal.jsonl"):
            try:
                st = os.stat(self._p(name))
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def save_meta(self, meta: dict) -> None:
        self._write("meta.json", json.dumps(meta).encode())

    def load_meta(self) -> dict:
        with open(self._p("meta.json")) as f:
            return json.load(f)

    def snapshot(self, live: LiveHook, pending_free) -> None:
        fn, live.ifindex = live.ifindex, None    # a function does not pickle; reattached on load
        try:
            blob = pickle.dumps({"live": live, "pending": pending_free}, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            live.ifindex = fn
        self._write("snapshot.pickle", blob)
        self._write("journal.jsonl", b"")

    def journal(self, op: str, **kw) -> None:
        rec = {"op": op}
        for k, v in kw.items():
            # a Rule holds normalised values (port ranges as tuples ...) that do not re-validate from JSON
            rec[k] = base64.b64encode(pickle.dumps(v)).decode() if isinstance(v, Rule) else v
        with open(self._p("journal.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")

    def load_live(self, ifindex) -> LiveHook:
        with open(self._p("snapshot.pickle"), "rb") as f:
            state = pickle.load(f)
        live: LiveHook = state["live"]
        live.ifindex = ifindex
        self._pending = list(state["pending"])
        try:
            with open(self._p("journal.jsonl")) as f:
                lines = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            lines = []
        for rec in lines:   # the same edits, in order, reach the same state (LiveHook is deterministic)
            op = rec["op"]
            if op == "add":
                diff = live.add(_rule(rec["rule"]), rec.get("position"))
            elif op == "delete":
                diff = live.delete(rec["name"])
            elif op == "replace":
                diff = live.replace(rec["name"], _rule(rec["rule"]))
            elif op == "release":
                live.release(rec["slots"])
                self._pending = [(t, s) for t, s in self._pending if s != rec["slots"]]
                continue
            else:
                continue
            if diff.rules_free:
                self._pending.append((0.0, list(diff.rules_free)))
        return live

    def pending_free(self):
        return getattr(self, "_pending", [])

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        for d in (os.path.dirname(self.dir), os.path.dirname(os.path.dirname(self.dir))):
            try:
                os.rmdir(d)
            except OSError:
                break
