"""`apply` of the file applied last, to engines nobody changed since: "no change" from a digest, without
reading, validating or compiling the file or loading the engines' saved state (38 s at 100k rules).

After an apply, applied.json in the namespace's control-plane directory holds the digest of the file's
bytes (and of this bpfgate's version and state format), the engines of the file's interfaces and the
version of each one's saved state (StateStore.version(): any swap, live edit, detach or attach changes it).
The next apply of a file with the same digest is a no-change when every one of those still holds; otherwise
(and for a change waiting for confirmation, rules kept from automation, a cut-short edit) the full path
runs. Read and written under the namespace's control-plane lock.
"""

from __future__ import annotations

import hashlib
import json
import os

from bpfgate.policy.model import Hook

from . import pending as _confirm
from .plan import HookPlan, Plan

NAME = "applied.json"


def _path(netns: str | None, state_root: str | None) -> str:
    return os.path.join(_confirm.state_dir(netns, state_root), NAME)


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
    from bpfgate.engine.engine import MAPS, pin_dir
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


def unchanged(dig: str | None, netns: str | None, state_root: str | None) -> Plan | None:
    """The no-change plan when `dig` is the file applied last and its engines are as it left them."""
    if dig is None or os.path.exists(_confirm.pending_path(netns, state_root)):
        return None
    try:
        with open(_path(netns, state_root)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("digest") != dig:
        return None
    engines = rec.get("engines")
    if not engines or _engines(rec.get("devs", []), netns) != engines:
        return None
    hooks = []
    for key in sorted(engines):
        dev, hook = key.rsplit(" ", 1)
        hooks.append(HookPlan(dev, Hook(hook), "none", None, None))
    return Plan(netns, hooks)


def record(dig: str | None, plan: Plan, netns: str | None, state_root: str | None) -> None:
    """After an apply of a file: what the next apply of the same file compares with. Nothing is recorded
    when the plan keeps rules of automation (their listing needs the engines read)."""
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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"digest": dig, "devs": devs, "engines": engines}, f)
    os.replace(tmp, path)


def forget(netns: str | None, state_root: str | None) -> None:
    try:
        os.unlink(_path(netns, state_root))
    except FileNotFoundError:
        pass
