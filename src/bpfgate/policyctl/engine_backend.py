"""The real Backend: bpfgate.engine (programs and maps pinned per namespace/interface/hook, state saved
next to them), reopened from its pins on every call, so any process sees and edits the same policy."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from bpfgate.policy.hooks import Hook

if TYPE_CHECKING:
    from bpfgate.engine.listing import Listing
    from bpfgate.policy.compile import CompiledHook
    from bpfgate.policy.layout import Conf
    from bpfgate.policy.model import HookPolicy, Rule

from .backend import RuleCounters, State

XDP_MODES = {"xdp-native": "native", "xdp-generic": "generic", "auto": "auto"}
TC_MODES = {"tc": "tc", "tcx": "tcx", "auto": None}


def engine_mode(hook: Hook, mode: str | None) -> str | None:
    """The CLI's --mode (tc, tcx, xdp-native, xdp-generic, auto) as the engine's per-hook mode."""
    if mode is None:
        return None
    return XDP_MODES.get(mode) if hook is Hook.XDP else TC_MODES.get(mode)


class EngineBackend:
    """hold=True (the agent): engines stay open between calls, each with the saved-state version it left,
    and are reopened only when another process changed that state (StateStore.version()): a one-rule edit
    then skips loading the saved state, which is most of its cost at 100k rules."""

    def __init__(self, hold: bool = False) -> None:
        self._cache: dict | None = None   # opened engines, kept while a session() holds the namespace lock
        self._held: dict | None = {} if hold else None   # key -> (engine, state version it left)
        self._applied: dict = {}   # held: key -> (the HookPolicy applied, state version it left)
        self._unopenable: dict = {}   # held: key -> state version keep_open() failed to open
        self.repaired: list[str] = []     # engines found cut short by a killed edit and repaired on opening
        self._preloads: dict = {}   # key -> Preload: engines loading for the attaches of this session
        self._spares: dict = {}     # held: (hook, load arguments) -> Preload of the engine the next attach
        #                             like the last one takes (a new interface of a pattern: no verifier wait)

    def close(self) -> None:
        """Close the held engines (the agent's shutdown); their programs keep running from the pins."""
        held, self._held = self._held, ({} if self._held is not None else None)
        self._applied.clear()
        spares, self._spares = self._spares, {}
        for p in spares.values():
            p.discard()
        for eng, _version in (held or {}).values():
            eng.close()

    def ready(self, netns: str | None, op: str) -> None:
        from bpfgate.engine.paths import ready

        ready(netns, op)

    @contextmanager
    def session(self):
        """Within the control plane's lock nobody else changes the engines: open each one once (opening
        loads its saved state, the expensive part of a one-rule edit)."""
        fresh = self._cache is None and self._held is None
        if fresh:
            self._cache = {}
        try:
            yield
        finally:
            self._discard_preloads()
            if fresh:
                cache, self._cache = self._cache, None
                for eng in cache.values():
                    eng.close()

    def preload(self, dev: str, hook: Hook, netns: str | None, hp: HookPolicy) -> None:
        """Start loading the engine that attach() will load for `hp` there (Engine.preload): its programs are
        verified while the policy is checked and compiled. Those not attached in this session are closed."""
        from bpfgate.engine import Engine
        from bpfgate.engine.engine import PREALLOC_MIN, Preload
        from bpfgate.policy.atoms import entries_estimate
        from bpfgate.policy.sets import stage0_estimate

        kw = Engine.preload_kw(dev, hook, len(hp.rules), prefixes=stage0_estimate(hp),
                               entries=entries_estimate(hp.rules, PREALLOC_MIN), netns_name=netns)
        if kw is not None:
            spare = self._spares.pop((hook, repr(kw)), None)
            self._preloads[(dev, hook, netns)] = spare or Preload.start(hook, kw)

    def _discard_preloads(self) -> None:
        preloads, self._preloads = self._preloads, {}
        for p in preloads.values():
            p.discard()

    @contextmanager
    def _open(self, dev: str, hook: Hook, netns: str | None):
        key = (dev, hook, netns)
        if self._held is not None:
            with self._held_engine(key) as eng:
                yield eng
            return
        if self._cache is not None and key in self._cache:
            yield self._cache[key]
            return
        eng = self._reopen(dev, hook, netns)
        if self._cache is not None:
            self._cache[key] = eng
            yield eng
            return
        try:
            yield eng
        finally:
            eng.close()

    def _reopen(self, dev: str, hook: Hook, netns: str | None):
        from bpfgate.engine import Engine

        eng = Engine.open(dev, hook, netns)
        if eng.repaired is not None:
            n = sum(eng.repaired.values())
            self.repaired.append(f"{dev} {hook.value}: an edit cut short (killed) had left the kernel ahead of "
                                 f"the saved policy; repaired ({n} stale entries removed)")
        return eng

    @contextmanager
    def _held_engine(self, key):
        from bpfgate.engine.state import StateStore

        store = StateStore(*key)
        eng, version = self._held.pop(key, (None, None))
        if eng is not None and version != store.version():   # another process swapped, edited, detached
            eng.close()
            eng = None
        if eng is None:
            eng = self._reopen(*key)
        try:
            yield eng
        except BaseException:   # an edit that failed half-way: the next call reads the saved state again
            eng.close()
            raise
        if store.exists():
            self._held[key] = (eng, store.version())
        else:
            eng.close()

    def keep_open(self, keys: set[tuple[str, Hook]], netns: str | None) -> tuple[int, dict[tuple[str, Hook], str]]:
        """Held backends (the agent, after each round): the engines of `keys` held open and current, so the
        next edit finds them so. One whose saved state changed since it was opened (a round applied its
        file, another writer) is closed before it is opened again: one copy at a time (a 100k-rule engine
        holds a few hundred MB). Held engines not in `keys` are closed. Returns how many were opened or
        closed, and {(dev, hook): why} of those that could not be opened (not tried again until their
        saved state changes)."""
        from bpfgate.engine.state import StateStore
        from bpfgate.errors import BpfgateError

        gone = [k for k in self._held if k[2] != netns or k[:2] not in keys]
        for key in gone:
            self._forget(*key)
        changed, failed = len(gone), {}
        for dev, hook in sorted(keys, key=lambda k: (k[0], k[1].value)):
            key = (dev, hook, netns)
            store = StateStore(*key)
            version = store.version()
            held = self._held.get(key)
            if not store.exists() or (held is not None and held[1] == version) or \
                    self._unopenable.get(key) == version:
                continue
            applied = self._applied.get(key)
            self._forget(*key)
            if applied is not None and applied[1] == version:   # a round applied it: still what runs
                self._applied[key] = applied
            changed += 1
            try:
                with self._held_engine(key):
                    pass
            except BpfgateError as e:
                self._unopenable[key] = version
                failed[(dev, hook)] = str(e)
            else:
                self._unopenable.pop(key, None)
        return changed, failed

    def release(self, dev: str, hook: Hook, netns: str | None) -> None:
        """Close the engine held for (dev, hook): another writer is about to change it."""
        self._forget(dev, hook, netns)

    def _forget(self, dev: str, hook: Hook, netns: str | None) -> None:
        self._applied.pop((dev, hook, netns), None)
        if self._held is not None:
            eng, _version = self._held.pop((dev, hook, netns), (None, None))
            if eng is not None:
                eng.close()
        if self._cache is not None:
            eng = self._cache.pop((dev, hook, netns), None)
            if eng is not None:
                eng.close()

    def remember(self, dev: str, hook: Hook, netns: str | None, hp: HookPolicy) -> None:
        """`hp` now runs there (an apply made it, or found it running): while nobody changes that engine,
        running() answers with this object instead of rebuilding it from the engine (~1 s at 100k rules),
        and comparing it with a next policy sharing its unchanged rules is quick. The held engine keeps
        `hp`'s rules instead of its own equal copies (Engine.share_rules: at 100k rules ~100 MB less).
        Held backends (the agent) only."""
        from bpfgate.engine.state import StateStore

        if self._held is not None:
            key = (dev, hook, netns)
            held = self._held.get(key)
            if held is not None:
                held[0].share_rules(hp)
            self._applied[key] = (hp, StateStore(dev, hook, netns).version())

    def running(self, netns: str | None) -> State:
        from bpfgate.engine import Engine
        from bpfgate.engine.state import StateStore
        from bpfgate.errors import NotFound

        out: State = {}
        for dev, hook in Engine.attached(netns):
            known = self._applied.get((dev, hook, netns))
            if known is not None and known[1] == StateStore(dev, hook, netns).version():
                out[(dev, hook)] = known[0]
                continue
            try:
                with self._open(dev, hook, netns) as eng:
                    out[(dev, hook)] = eng.policy()
            except NotFound:   # detached meanwhile, or its interface (namespace) went away
                continue
        return out

    def policy(self, dev: str, hook: Hook, netns: str | None) -> HookPolicy | None:
        from bpfgate.errors import NotFound

        try:
            with self._open(dev, hook, netns) as eng:
                return eng.policy()
        except NotFound:
            return None

    def hooks(self, netns: str | None) -> list[tuple[str, Hook]]:
        """(dev, hook) of every running engine, without reading their policies."""
        from bpfgate.engine.state import StateStore

        return StateStore.listing(netns)

    def listing(self, dev: str, hook: Hook, netns: str | None) -> tuple[Listing, list[int], list[int]] | None:
        """(the rules as `rules` lists them: engine.listing.Listing, packets and bytes by slot) of one hook;
        None when it runs none. From the listing saved beside the state when it is current (the state not
        loaded)."""
        from bpfgate.engine.listing import saved_listing
        from bpfgate.errors import NotFound

        if self._held is None and not (self._cache and (dev, hook, netns) in self._cache):
            found = saved_listing(dev, hook, netns)
            if found is not None:
                return found
        try:
            with self._open(dev, hook, netns) as eng:
                listing = eng.listing()
                return (listing, *eng.counter_columns(listing.slots()))
        except NotFound:
            return None

    def outline(self, dev: str, hook: Hook, netns: str | None) -> tuple[str, list[str]] | None:
        """(default, rule names in order) of one hook, None when no policy runs there."""
        from bpfgate.errors import NotFound

        try:
            with self._open(dev, hook, netns) as eng:
                return eng.outline()
        except NotFound:
            return None

    def attach(self, dev: str, hook: Hook, netns: str | None, hp: HookPolicy, mode: str | None,
               compiled: CompiledHook | None = None) -> None:
        from bpfgate.engine import Engine

        from bpfgate.engine.engine import Preload

        self._forget(dev, hook, netns)
        policy = compiled if compiled is not None else hp
        pre = self._preloads.pop((dev, hook, netns), None)
        Engine.attach(dev, hook, policy, netns_name=netns, mode=engine_mode(hook, mode), preloaded=pre).close()
        if self._held is not None and pre is not None and pre.served:   # the agent: verified ahead of need
            self._spares.setdefault((hook, repr(pre.kw)), Preload.start(hook, pre.kw))

    def swap(self, dev: str, hook: Hook, netns: str | None, hp: HookPolicy,
             compiled: tuple[CompiledHook, CompiledHook] | None = None) -> None:
        """compiled: (hp compiled for the swap, the running generation it was compiled against), from live()."""
        with self._open(dev, hook, netns) as eng:
            eng.swap(hp, precompiled=compiled)

    def apply_edits(self, dev: str, hook: Hook, netns: str | None, edits: list[tuple]) -> None:
        """Rule edits (plan.live_edits) as one atomic step."""
        with self._open(dev, hook, netns) as eng:
            eng.apply_edits(edits)

    def live(self, dev: str, hook: Hook, netns: str | None):
        """(running compiled hook, limits) of an engine this session holds open, else None."""
        if self._cache is None or (dev, hook, netns) not in self._cache:
            return None
        live = self._cache[(dev, hook, netns)].live
        return None if live is None else (live.c, live.limits)

    def attached(self, netns: str | None) -> list[tuple[str, Hook]]:
        """(dev, hook) of every engine in the namespace, without opening them."""
        from bpfgate.engine import Engine

        return Engine.attached(netns)

    def detach(self, dev: str, hook: Hook, netns: str | None) -> None:
        """Detach the engine; when its saved state cannot be loaded any more, still remove what it
        recorded (filters/links, pins, state), so a broken state never leaves programs behind."""
        from bpfgate.engine import Engine
        from bpfgate.errors import NotFound

        from bpfgate.engine.state import StateStore

        self._forget(dev, hook, netns)
        try:
            eng = Engine.open(dev, hook, netns)
        except NotFound:
            if not StateStore(dev, hook, netns).exists():
                raise
            purge(dev, hook, netns)   # its state without its pins (they went by hand, or an old detach)
            return
        except Exception:   # noqa: BLE001 - unreadable state: fall back to its records
            purge(dev, hook, netns)
            return
        eng.detach()

    def add_rule(self, dev: str, hook: Hook, netns: str | None, rule: Rule, position: int | None) -> None:
        with self._open(dev, hook, netns) as eng:
            eng.add_rule(rule, position)

    def sets(self, dev: str, hook: Hook, netns: str | None) -> dict:
        with self._open(dev, hook, netns) as eng:
            return eng.sets()

    def edit_set(self, dev: str, hook: Hook, netns: str | None, name: str, elements: list, add: bool) -> None:
        with self._open(dev, hook, netns) as eng:
            eng.edit_set(name, elements, add)

    def delete_rule(self, dev: str, hook: Hook, netns: str | None, name: str) -> None:
        with self._open(dev, hook, netns) as eng:
            eng.delete_rule(name)

    def counters(self, dev: str, hook: Hook, netns: str | None) -> dict[str, RuleCounters]:
        with self._open(dev, hook, netns) as eng:
            return {n: RuleCounters(n, c.packets, c.bytes) for n, c in eng.counters().items()}

    def reset_counters(self, dev: str, hook: Hook, netns: str | None,
                       names: list[str] | None) -> dict[str, RuleCounters]:
        with self._open(dev, hook, netns) as eng:
            return {n: RuleCounters(n, c.packets, c.bytes) for n, c in eng.reset_counters(names).items()}

    def classifier(self, dev: str, hook: Hook, netns: str | None) -> tuple[CompiledHook, Conf]:
        """The live generation's bg_cls entries and stage 0 classes, and the bg_conf it published (what the
        data plane walks now, live edits included)."""
        from bpfgate.errors import BpfgateError

        with self._open(dev, hook, netns) as eng:
            live = eng.live
            if live is None:
                raise BpfgateError(f"read the classifier of {dev} {hook.value}", "the engine has no policy loaded")
            return live.c, live.conf


def purge(dev: str, hook: Hook, netns: str | None) -> None:
    """Remove an engine from its records alone (meta.json: attachment keys and pins)."""
    from bpfgate import attach
    from bpfgate.engine import pin_dir
    from bpfgate.engine.state import StateStore
    from bpfgate.kernel import pins

    store = StateStore(dev, hook, netns)
    try:
        meta = store.load_meta()
    except (OSError, ValueError):
        meta = {}
    keys = set(meta.get("attachments", []))
    for att in attach.find(dev, None, netns):
        if att.key in keys:
            attach.detach(att)
    for p in meta.get("pins", []):
        pins.unpin(p)
    pins.prune_empty(pin_dir(dev, hook, netns))
    store.remove()
