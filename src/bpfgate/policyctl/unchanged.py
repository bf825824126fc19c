"""`apply` of the file applied last, to engines nobody changed since: "no change" from a digest, without
reading, validating or compiling the file or loading the engines' saved state (38 s at 100k rules).

After an apply, applied.json in the namespace's control-plane directory holds the digest of the file's
bytes (and of this bpfgate's version and state format), the engines of the file's interfaces and the
version of each one's saved state (StateStore.version(): any swap, live edit, detach or attach changes it).
The next apply of a file with the same digest is a no-change when every one of those still holds; otherwise
(and for a change waiting for confirmation, rules kept from automation, a cut-short edit) the full path
runs. Read and written under the namespace's control-plane lock.

Light to import (no models, compiler, libbpf or netlink): `bpfgate apply` asks apply_unchanged() before it
imports the rest of the control plane, and policyctl.apply asks answer() as its first step.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from bpfgate.policy.hooks import Hook

from . import pending as _confirm
from .plan import HookPlan, Plan
from .result import ApplyResult

NAME = "applied.json"
TEXT_NAME = "applied.policy"   # the file's text (read only by incremental.py)


def _path(netns: str | None, state_root: str | None) -> str:
    return os.path.join(_confirm.state_dir(netns, state_root), NAME)


def _text_path(netns: str | None, state_root: str | None) -> str:
    return os.path.join(_confirm.state_dir(netns, state_root), TEXT_NAME)


def digest(text: str) -> str:
    """Digest of a policy file's text, with this bpfgate's version and state format."""
    from bpfgate import __version__
    from bpfgate.engine.state import SNAPSHOT_VERSION

    h = hashlib.sha256(f"bpfgate {__version__} state {SNAPSHOT_VERSION}\n".encode())
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _engines(devs: list[str], netns: str | None) -> dict[str, list] | None:
    """Saved-state version of every engine on `devs`; None when one was cut short mid-edit or lost its
    pins (the full path repairs or re-attaches it)."""
    from bpfgate.engine.paths import MAPS, pin_dir
    from bpfgate.engine.state import StateStore

    out = {}
    for dev, hook in StateStore.listing(netns):
        if dev in devs:
            store = StateStore(dev, hook, netns)
            pins = pin_dir(dev, hook, netns)
            if store.interrupted() is not None or not all(os.path.exists(os.path.join(pins, m)) for m in MAPS):
                return None
            out[f"{dev} {hook.value}"] = [list(v) if v else None for v in store.version()]
    return out


def recorded(netns: str | None, state_root: str | None) -> bool:
    """Whether an apply left a record to compare with (read without the lock: a record being written is
    compared under it)."""
    return os.path.exists(_path(netns, state_root))


def apply_unchanged(path: str, netns: str | None, dry_run: bool = False) -> ApplyResult | None:
    """policyctl.apply(path, netns=netns, dry_run=dry_run) of the machine's engines when that is a no-change,
    with the same checks in the same order (privileges and namespace, the file read, an agent running, the
    lock); None: not one (or stdin, which only the full path reads), run policyctl.apply."""
    from bpfgate.engine.paths import ready
    from bpfgate.policy.source import read_source

    if str(path) == "-":
        return None
    ready(netns, "apply policy")
    text, _name = read_source(path)
    return answer(digest(text), netns, dry_run)


def answer(dig: str, netns: str | None, dry_run: bool, *, ours: bool = True,
           serialised: Callable[[], AbstractContextManager] | None = None,
           state_root: str | None = None) -> ApplyResult | None:
    """apply's no-change result when the file (its digest) is the one applied last to engines unchanged
    since, else None. `ours`: the machine's engines (an agent running refuses the apply, as any apply of
    engine documents); `serialised`: the caller's control-plane lock with its backend's session (default:
    the engine's checks and the namespace's lock; nothing is opened under it)."""
    if not recorded(netns, state_root):
        # nothing to compare with (a namespace's first apply, files of nat: documents only): no lock taken,
        # which would leave the namespace a control-plane directory nothing removes
        return None
    if ours and not dry_run:
        from bpfgate.agent import client as _agent

        _agent.refuse_writes(netns, "apply")
    with serialised() if serialised is not None else _locked(netns, state_root):
        same = unchanged(dig, netns, state_root)
    return None if same is None else ApplyResult(same, False, dry_run=dry_run)


def _locked(netns: str | None, state_root: str | None):
    from bpfgate.engine.paths import ready

    ready(netns, "change the policy")
    return _confirm.locked(netns, state_root)


def as_recorded(netns: str | None, state_root: str | None) -> dict | None:
    """The record of the file applied last when its engines are as that apply left them (and no change
    waits for confirmation), else None."""
    if os.path.exists(_confirm.pending_path(netns, state_root)):
        return None
    try:
        with open(_path(netns, state_root)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or not rec.get("engines") or _engines(rec.get("devs", []), netns) != rec["engines"]:
        return None
    return rec


def applied_text(rec: dict, netns: str | None, state_root: str | None) -> str | None:
    """The text of the file the record is of (kept beside it), None when not kept or not that file's."""
    try:
        with open(_text_path(netns, state_root), encoding="utf-8", errors="surrogatepass") as f:
            text = f.read()
    except (OSError, ValueError):
        return None
    return text if digest(text) == rec.get("digest") else None


def unchanged(dig: str | None, netns: str | None, state_root: str | None) -> Plan | None:
    """The no-change plan when `dig` is the file applied last and its engines are as it left them."""
    rec = None if dig is None else as_recorded(netns, state_root)
    if rec is None or rec.get("digest") != dig:
        return None
    engines = rec["engines"]
    hooks = []
    for key in sorted(engines):
        dev, hook = key.rsplit(" ", 1)
        hooks.append(HookPlan(dev, Hook(hook), "none", None, None))
    return Plan(netns, hooks)


def record(dig: str | None, plan: Plan, netns: str | None, state_root: str | None, text: str | None = None,
           staged: str | None = None) -> None:
    """After an apply of a file: what the next apply of the same file compares with, and its `text` (what
    the next apply of a slightly changed file compares with: incremental.py), or the file staged_text()
    wrote it to. Nothing is recorded when the plan keeps rules of automation (their listing needs the
    engines read)."""
    path = _path(netns, state_root)
    if dig is None or any(h.kept for h in plan.hooks):
        forget(netns, state_root)
        return
    devs = sorted({h.dev for h in plan.hooks})
    engines = _engines(devs, netns)
    if engines is None or {k for k in engines} != {f"{h.dev} {h.hook.value}" for h in plan.hooks
                                                   if h.action != "detach"}:
        forget(netns, state_root)
        return
    if text is not None:   # before the record: a record is only ever read with its own text (digest)
        staged = _text_path(netns, state_root) + ".tmp"
        _write_text(staged, text)
    if staged is not None:
        os.replace(staged, _text_path(netns, state_root))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"digest": dig, "devs": devs, "engines": engines}, f)
    os.replace(tmp, path)
    if staged is None:
        _unlink(_text_path(netns, state_root))


@contextmanager
def staged_text(text: str | None, netns: str | None, state_root: str | None) -> Iterator[str | None]:
    """The path `text` (a policy file's, or None: nothing) is written to for record(staged=), so an apply
    holds no copy of the file while it compiles and attaches (~7 MB at 100k rules). Removed at the end
    unless recorded. None without a control-plane directory (no lock taken: nothing is recorded there).
    One name, written under the namespace's lock: a file left by an apply killed meanwhile is overwritten."""
    path = _text_path(netns, state_root) + ".tmp"
    if text is None or not os.path.isdir(os.path.dirname(path)):
        yield None
        return
    _write_text(path, text)
    del text   # this frame lives as long as the body
    try:
        yield path
    finally:
        _unlink(path)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)


def forget(netns: str | None, state_root: str | None) -> None:
    _unlink(_path(netns, state_root))
    _unlink(_text_path(netns, state_root))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
