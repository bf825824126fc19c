"""What the control plane's functions share: the backend and its session, the lock, hooks and targets
named by the user. Light to import: `rules` runs without the models or the compiler."""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bpfgate import cgroups
from bpfgate.errors import NotFound, PolicyError
from bpfgate.policy.hooks import Hook

from . import pending as _confirm
from .backend import Backend, MemoryBackend

if TYPE_CHECKING:
    from bpfgate.policy.model import HookPolicy


def _gc_paused(fn):
    """Run fn with the cyclic garbage collector off: a 100k-rule policy is millions of objects, and every
    collection the allocations trigger walks all of them (~40% of reading and compiling one); what is built
    here is acyclic and freed by reference counting."""
    @functools.wraps(fn)
    def run(*args, **kw):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kw)
        finally:
            if was:
                gc.enable()
    return run


default_backend: Backend | None = None   # what functions called without `backend` use (None: the engine)


def _backend(backend: Backend | None) -> Backend:
    if backend is not None:
        return backend
    if default_backend is not None:
        return default_backend
    from .engine_backend import EngineBackend

    return EngineBackend()


def _ready(backend: Backend, netns: str | None, op: str) -> None:
    """The backend's own checks before anything is read or created (privileges, the namespace exists)."""
    ready = getattr(backend, "ready", None)
    if ready is not None:
        ready(netns, op)


@contextlib.contextmanager
def _serialised(netns: str | None, backend: Backend, state_root: str | None = None, op: str = "change the policy"):
    """The namespace's control-plane lock (not for MemoryBackend alone: nothing is shared between
    processes), and the backend's session: what it reads stays valid until the lock is released."""
    _ready(backend, netns, op)
    with contextlib.ExitStack() as stack:
        if not (isinstance(backend, MemoryBackend) and state_root is None):
            stack.enter_context(_confirm.locked(netns, state_root))
        session = getattr(backend, "session", None)
        if session is not None:
            stack.enter_context(session())
        yield


def parse_hook(hook: str | Hook) -> Hook:
    try:
        return Hook(hook)
    except ValueError:
        raise PolicyError(f"hook {hook}", f"unknown hook (known: {', '.join(h.value for h in Hook)})") from None


def target(dev: str, hook: Hook | None = None) -> str:
    """An interface name as it is; a cgroup (a path, or any name at a cgroup hook) as its normalised
    absolute path, as the engine keys it."""
    if "/" in dev or (hook is not None and hook.on_cgroup):
        try:
            return cgroups.normalise(dev)
        except ValueError as e:
            raise NotFound(f"cgroup {dev}", str(e)) from None
    return dev


def _reading(backend: Backend, netns: str | None, op: str):
    """The backend's session, if it has one: each engine opened once for a whole listing."""
    _ready(backend, netns, op)
    session = getattr(backend, "session", None)
    return session() if session else contextlib.nullcontext()


def _pick(running: Iterable[tuple[str, Hook]], dev: str | None, hook: Hook | None, op: str) -> list[tuple[str, Hook]]:
    """The running hooks of one interface / hook (default: all), by interface then hook; NotFound when
    `dev` runs no policy."""
    running = list(running)
    if dev is not None and not any(d == dev for d, _ in running):
        raise NotFound(f"{op} of {dev}", "no bpfgate policy is attached there")
    return sorted(((d, h) for d, h in running if (dev is None or d == dev) and (hook is None or h == hook)),
                  key=lambda k: (k[0], k[1].value))


def _selected(backend: Backend, dev: str | None, hook: Hook | None, netns: str | None,
              op: str) -> list[tuple[str, Hook, HookPolicy]]:
    """The policies of the running hooks `_pick` selects."""
    state = backend.running(netns)
    return [(d, h, state[(d, h)]) for d, h in _pick(state, dev, hook, op)]
