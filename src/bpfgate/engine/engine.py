"""The policy engine driver: one loaded engine object (programs + maps) for one (netns, interface, hook).

See the package docstring for the API. Map writes follow docs/policy-engine.md section 6 (apply order).
"""

from __future__ import annotations

import array
import ctypes
import os
import struct
import functools
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from itertools import islice

from bpfgate import attach as attach_mod
from bpfgate import cgroups
from bpfgate.errors import BpfgateError, NotFound, PolicyError
from bpfgate import lazy
from bpfgate.kernel import pins
from bpfgate.kernel.maps import Map, possible_cpus
from bpfgate.kernel.objects import BpfObject, LoadFailedQuietly
from bpfgate.policy import layout as L
from bpfgate.policy.compile import DEFAULT_NAME, CompiledHook, Limits, compile_hook, rule_action
from bpfgate.policy.live import Diff, LiveHook
from bpfgate.policy.live import swap as live_swap
from bpfgate.policy.model import Hook, HookPolicy, Rule, parse_element
from bpfgate.policy.ruledata import rule_row
from bpfgate.policy.sets import SetState

from . import records as R
from . import recover, resize
from .listing import Listing, counter_columns, read_counters
from .paths import MAPS, pin_dir
from .state import SNAPSHOT_NEXT, StateStore

netlink = lazy.module("bpfgate.kernel.netlink")   # pyroute2: edits of a running engine need none

OBJECT = "engine"
OWNER = "engine"
CT_OWNER = "engine-ct"
CT_HANDLE, CT_PRIORITY = attach_mod.order.slot(CT_OWNER).handle, attach_mod.order.slot(CT_OWNER).priority
CT_KEY_SUFFIX = f".tc-egress-{CT_HANDLE:x}-{CT_PRIORITY}"   # ends the tracker's attachment key
CT_TIMEOUT_NEW_S, CT_TIMEOUT_EST_S = 30, 600   # flow expiry after the last packet: no reply seen / replied
RULE_ARRAYS = ("bg_rules", "bg_counters", "bg_rate_rule", "bg_log_rate")
MAX_RULE_SLOTS = R.C.BG_MAX_RULES
GRACE_S = 1.0                            # freed rule slots wait this long (in-flight packets, RCU)
CAPTURE_MAPS = ("bg_capture_cfg", "bg_capture_ring")   # capture with the verdict (inspect.capture.EngineCapture)
U32_KEYED = {"bg_ct_lookup_only", "bg_pfx_top", "bg_cls_direct", "bg_capture_cfg", "bg_conf", "bg_active", "bg_rules", "bg_counters",
             "bg_rate_rule", "bg_log_rate", "bg_stats", "bg_redirect_devs", "bg_redirect_stats"}
HOOK_CODE = {Hook.TC_INGRESS: R.C.BG_ENGINE_TC_INGRESS, Hook.TC_EGRESS: R.C.BG_ENGINE_TC_EGRESS,
             Hook.XDP: R.C.BG_ENGINE_XDP, Hook.CGROUP_INGRESS: R.C.BG_ENGINE_CGROUP_INGRESS,
             Hook.CGROUP_EGRESS: R.C.BG_ENGINE_CGROUP_EGRESS, Hook.CGROUP_CONNECT: R.C.BG_ENGINE_CGROUP_CONNECT,
             Hook.CGROUP_BIND: R.C.BG_ENGINE_CGROUP_BIND}
# the programs of a hook (a cgroup hook may attach several: one per socket call and address family)
PROGRAMS = {Hook.TC_INGRESS: ("bg_engine_tc",), Hook.TC_EGRESS: ("bg_engine_tc",), Hook.XDP: ("bg_engine_xdp",),
            Hook.CGROUP_INGRESS: ("bg_engine_cg_ingress",), Hook.CGROUP_EGRESS: ("bg_engine_cg_egress",),
            Hook.CGROUP_CONNECT: ("bg_sock_connect4", "bg_sock_connect6", "bg_sock_sendmsg4", "bg_sock_sendmsg6"),
            Hook.CGROUP_BIND: ("bg_sock_bind4", "bg_sock_bind6")}
LINK_PIN = "link-"   # + program name: a cgroup engine's links, pinned beside its maps
_U32 = struct.Struct("=I")
_BATCH = 1 << 14   # entries a large write of bg_rules or bg_cls makes per syscall


def rule_array_sizes(slots: int) -> dict[str, int]:
    """Per-rule arrays sized for the policy with room for edits and a swap (x4, at least 16k slots):
    ~2 MB per engine for small policies instead of ~30 MB at the 256k-slot maximum."""
    n = min(max(1 << 14, 1 << (4 * slots - 1).bit_length()), MAX_RULE_SLOTS)
    return {name: n for name in RULE_ARRAYS}


PREALLOC_MIN = 1 << 15   # entries from which bg_cls / bg_cls_short / bg_pfx are preallocated
HASH_MAX = R.C.BG_HASH_MAX  # their largest size when allocated per entry (a detached load's size)
HASH_MIN = 1 << 16          # their smallest size when attached
HASH_TABLES = (*L.CLS_MAPS, "bg_pfx")


def cls_entries(conf: L.Conf) -> dict[str, int]:
    """A generation's entries in each classifier map (bg_cls, bg_cls_short), from its shapes' counts."""
    short = sum(s.entries for s in conf.shapes if s.id & L.SHAPE_SHORT)
    return {"bg_cls": sum(s.entries for s in conf.shapes) - short, "bg_cls_short": short}


def prealloc_for(compiled: CompiledHook) -> dict[str, int]:
    """Hash table sizes for a policy: large tables are preallocated (inserts ~2x faster: 100k rules load in
    < 100 ms) with room for a swap to a policy of the same size plus half again; small ones allocate per
    entry (up to 2M). Past the room, an attached engine resizes its maps (resize.py); a detached one refuses."""
    return _prealloc_sizes(_table_entries(compiled))


def hash_sizes(compiled: CompiledHook, prealloc: dict[str, int]) -> dict[str, int]:
    """Sizes of the hash tables allocated per entry (those not in `prealloc`). The kernel allocates a
    table's buckets for its whole size when it creates it (16 B an entry: 32 MB at 2M entries, ~100 MB for an
    engine's three), so each is sized for the policy with room for a swap and edits (x4, a power of two, at
    least HASH_MIN: 1 MB); past it, an attached engine resizes its maps (resize.py)."""
    return _per_entry_sizes(_table_entries(compiled), prealloc)


def _table_entries(compiled: CompiledHook) -> dict[str, int]:
    return cls_entries(compiled.conf()) | {"bg_pfx": compiled.classes.pfx_count()}


def _prealloc_sizes(entries: dict[str, int]) -> dict[str, int]:
    return {name: min(3 * n, HASH_MAX) for name, n in entries.items() if n >= PREALLOC_MIN}


def _per_entry_sizes(entries: dict[str, int], prealloc: dict[str, int]) -> dict[str, int]:
    return {name: min(max(HASH_MIN, 1 << (4 * n - 1).bit_length()), HASH_MAX)
            for name, n in entries.items() if name not in prealloc}


def _set_map_flags(obj: BpfObject, name: str, flags: int) -> None:
    from bpfgate.kernel import libbpf as LB

    fn = LB._fn("bpf_map__set_map_flags", ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
    if fn(LB.bpf_object__find_map_by_name(obj._ptr, name.encode()), flags) != 0:
        raise BpfgateError(f"set flags of map {name}", "libbpf refused")


class NoRoom(PolicyError):
    """The maps have no room for an edit: an attached engine resizes them instead (resize.py)."""


def _u32s(ids: Iterable[int]) -> bytes:
    return array.array("I", ids).tobytes()     # native order, as the map keys


class Engine:
    """A policy engine instance. Create with attach() / open() / load() (detached: tests, benchmarks)."""

    def __init__(self, hook: Hook, maps: dict[str, Map], *, dev: str | None = None, netns_name: str | None = None,
                 obj: BpfObject | None = None, store: StateStore | None = None):
        self.hook, self.maps, self.dev, self.netns = Hook(hook), maps, dev, netns_name
        self.obj, self.store = obj, store
        self._live_hook: LiveHook | None = None
        self._pending_compiled: tuple[CompiledHook, Limits] | None = None   # LiveHook built on first use
        self._seen_version: tuple | None = None   # saved state this process is in step with
        self.pending_free: list[tuple[float, list[int]]] = []
        self._writing = False                     # an edit of this process is changing the kernel
        self.repaired: dict[str, int] | None = None   # stale entries removed after a cut-short edit
        self._pins_id: int | None = None          # which maps the pins named when this process opened them

    # ---- creation --------------------------------------------------------------------------------
    @classmethod
    def load(cls, hook: Hook | str, *, ct: bool = True, test_mark: bool = False, prealloc: dict[str, int] | None = None,
             max_entries: dict[str, int] | None = None, reuse: dict[str, int] | None = None,
             also: Iterable[str] = (), only: Iterable[str] | None = None, quiet: bool = False) -> Engine:
        """Load the engine object without attaching it (BPF_PROG_TEST_RUN, benchmarks, attach()).
        prealloc: {map: entries} preallocates bg_cls / bg_cls_short / bg_pfx with that many entries (inserts
        ~2x faster, memory ~100 B/entry up front, a swap or live add past it is refused); default: allocate per entry,
        up to 2M (prealloc_for() sizes them for a policy). Only the hook's programs are loaded, plus `also`
        (the flow tracker bg_ct_track, the benchmarks' baselines); `only`: just these programs, not the
        hook's (a tracker alone: `program`/`programs` are then not loaded). `quiet`: BpfObject.load's."""
        hook = Hook(hook)
        obj = BpfObject.open(OBJECT, rodata={"cfg_hook": HOOK_CODE[hook], "cfg_ct": int(ct),
                                             "cfg_test_mark": int(test_mark),
                                             "cfg_ct_timeout_new_ns": CT_TIMEOUT_NEW_S * 10**9,
                                             "cfg_ct_timeout_est_ns": CT_TIMEOUT_EST_S * 10**9})
        try:
            # verify only what the caller runs: each program's verification is most of a load's time (an
            # XDP engine verifying the TC program too doubled it; an emulated guest takes a minute for one)
            wanted = set(only) if only is not None else set(PROGRAMS[hook]) | set(also)
            for name in obj.program_names():
                obj.set_autoload(name, name in wanted)
            obj.set_max_entries("bg_capture_scratch", possible_cpus())
            for name, n in (max_entries or {}).items():
                obj.set_max_entries(name, n)
            for name, n in (prealloc or {}).items():
                _set_map_flags(obj, name, 0)
                obj.set_max_entries(name, n)
            for name, fd in (reuse or {}).items():
                obj.reuse_map(name, fd)
            obj.load(quiet)
        except BaseException:
            obj.close()
            raise
        return cls(hook, {m: obj.map(m) for m in MAPS + CAPTURE_MAPS}, obj=obj)

    @property
    def program(self):
        """The hook's (first) program of a loaded object."""
        return self.programs[0]

    @property
    def programs(self) -> list:
        """The hook's programs of a loaded object (a socket hook: one per call and address family)."""
        if self.obj is None:
            raise BpfgateError("engine program", "engine was opened from pins: no program object")
        return [self.obj.program(name) for name in PROGRAMS[self.hook]]

    @classmethod
    def preload(cls, dev: str, hook: Hook | str, rules: int, *, prefixes: int = 0, entries: int = 0,
                netns_name: str | None = None, ct: bool = True) -> Preload | None:
        """Start loading, in a thread, the engine that attach() of a policy of `rules` rules, about `prefixes`
        stage 0 prefixes (sets.stage0_estimate) and at least `entries` classifier entries
        (atoms.entries_estimate) will load on dev/hook (give it as `preloaded`): the
        kernel verifies its programs (~0.3-0.6 s, the GIL let go) while the caller checks and compiles the
        policy. None where that load cannot be told yet (preload_kw)."""
        kw = cls.preload_kw(dev, hook, rules, prefixes=prefixes, entries=entries, netns_name=netns_name, ct=ct)
        return None if kw is None else Preload.start(Hook(hook), kw)

    @classmethod
    def preload_kw(cls, dev: str, hook: Hook | str, rules: int, *, prefixes: int = 0, entries: int = 0,
                   netns_name: str | None = None, ct: bool = True) -> dict | None:
        """Engine.load's arguments for preload(); None for a cgroup, an engine of another hook of the device
        (its flow table is shared), a policy with enough rules or classifier entries (atoms.entries_estimate)
        to have its classifier tables preallocated (sized by the compiled policy; its load overlaps the saving
        of its state instead)."""
        hook = Hook(hook)
        if hook.on_cgroup or max(rules, entries) >= PREALLOC_MIN \
                or cls._sibling_ct_pin(dev, hook, netns_name) is not None:
            return None
        # a fresh attach gives the rules slots 0..rules (the default's included); the tables are sized as
        # for a compiled policy with these prefixes and (unknown yet) no classifier entries to speak of
        entries = dict.fromkeys(L.CLS_MAPS, 0) | {"bg_pfx": prefixes}
        prealloc = _prealloc_sizes(entries)
        sizes = rule_array_sizes(rules + 1) | _per_entry_sizes(entries, prealloc)
        return _load_kw(hook, ct, _ct_hooks(dev, netns_name), prealloc, sizes)

    @classmethod
    def attach(cls, dev: str, hook: Hook | str, policy: HookPolicy | CompiledHook | None = None, *,
               netns_name: str | None = None, mode: str | None = None, ct: bool = True,
               limits: Limits = Limits(), prealloc: dict[str, int] | None = None,
               preloaded: Preload | None = None) -> Engine:
        """Load, write `policy` (default: allow everything), pin the maps, attach. Nothing stays behind on
        failure. mode: tc|libbpf|tcx for TC hooks, auto|native|generic for XDP. `preloaded` (preload()): its
        engine when it was loaded as this attach loads one, else it is closed once loaded."""
        hook = Hook(hook)
        if hook.on_cgroup:   # checked before anything is loaded: a one-line error, nothing attached
            if netns_name:
                raise BpfgateError(f"attach engine on cgroup {dev}", "a cgroup is in no network namespace",
                                   hint="name cgroups without --netns")
            dev, ifindex = cgroups.resolve(dev), 0
        else:
            ifindex = netlink.ifindex(dev, netns_name)   # NotFound before anything is loaded
        store = StateStore(dev, hook, netns_name)
        if store.exists():
            raise BpfgateError(f"attach engine on {dev} {hook.value}", "an engine is already attached there",
                               hint="swap its policy, or detach it first")
        # compile first: a refused policy loads nothing; its size picks the rule arrays' size
        compiled = policy if isinstance(policy, CompiledHook) else compile_hook(
            policy or HookPolicy(default="allow"), hook, limits=limits,
            ifindex=lambda name: netlink.ifindex(name, netns_name))
        ct_hooks = _ct_hooks(dev, netns_name)
        prealloc = prealloc_for(compiled) if prealloc is None else prealloc
        kw = _load_kw(hook, ct, ct_hooks, prealloc,
                      rule_array_sizes(max(compiled.rules) + 1) | hash_sizes(compiled, prealloc))
        tracker = "bg_ct_track" in kw["also"]
        reuse = {}
        shared = cls._sibling_ct(dev, hook, netns_name)   # one flow table per interface, shared by its hooks
        if shared is not None:
            reuse["bg_ct"] = shared.fd
        load = functools.partial(cls.load, hook, reuse=reuse, **kw)
        live = LiveHook(compiled, limits, None)
        loading = preloaded.take(kw if not reuse else None) if preloaded is not None else None
        try:
            # the kernel verifies the programs (ctypes lets go of the GIL) while the state is pickled: at 100k
            # rules each takes most of a second; the snapshot becomes the saved state once all is attached
            with ThreadPoolExecutor(1) as pool:
                loading = loading or pool.submit(load, quiet=True)
                presaved = store.presave(live)
                listing = listing_of(compiled)   # saved with the state: a first `rules` reads no state
            try:
                eng = loading.result()
            except LoadFailedQuietly:
                eng = load()   # again, to say why (or a passing failure)
        except BaseException:
            if loading is not None:
                _close_once_loaded(loading)
            store.remove()
            raise
        finally:
            if shared is not None:
                shared.close()
        eng.dev, eng.netns, eng.store = dev, netns_name, store
        live.ifindex = eng._ifindex
        atts: list = []
        pdir = pin_dir(dev, hook, netns_name)
        pinned: list[str] = []
        try:
            eng.load_policy(compiled, live=live)
            if ct and hook is Hook.TC_INGRESS and Hook.XDP in ct_hooks:   # the XDP engine counts the flows
                eng._set_ct_lookup_only(True)
            for name in MAPS + CAPTURE_MAPS:
                path = os.path.join(pdir, name)
                pins.unpin(path)
                eng.maps[name].pin(path)
                pinned.append(path)
            eng._pins_id = resize.pins_id(pdir)
            if hook.on_cgroup:   # links: multi-attach, other programs of the cgroup keep running
                for i, prog in enumerate(eng.programs):   # the first one's record holds the maps and state
                    atts.append(attach_mod.attach(prog, attach_mod.Point.of_cgroup(dev), attach_mod.Options(
                        owner=OWNER, pin=os.path.join(pdir, LINK_PIN + PROGRAMS[hook][i]),
                        pins=[] if i else list(pinned), state=[] if i else [store.dir]), kind="cgroup"))
            elif hook is Hook.XDP:
                atts.append(attach_mod.attach_xdp(eng.program, dev, mode=mode or "auto", netns_name=netns_name,
                                                  owner=OWNER, extra_pins=pinned, state=[store.dir]))
            else:
                atts.append(attach_mod.attach_tc(eng.program, dev, hook.value.split("-")[1], netns_name=netns_name,
                                                 method=mode or "tc", owner=OWNER, extra_pins=pinned,
                                                 state=[store.dir]))
            if tracker:
                atts.append(_attach_tracker(eng.obj.program("bg_ct_track"), dev, netns_name))
            store.save_meta({"ifindex": ifindex, "prog_id": eng.program.id, "mode": mode, "ct": ct,
                             "attachments": [a.key for a in atts], "pins": pinned})
            if not (presaved and store.take_snapshot(SNAPSHOT_NEXT)):
                eng._snapshot()
            eng._seen_version = store.version()
            store.save_fresh_listing(listing)
        except BaseException:
            for a in atts:
                attach_mod.detach(a)
            for p in pinned:
                pins.unpin(p)
            pins.prune_empty(pdir)
            store.remove()
            eng.close()
            raise
        if ct and hook is Hook.TC_EGRESS:   # this engine tracks egress now; only after it is fully attached
            for att in attach_mod.find(dev, "tc-egress", netns_name, owner=CT_OWNER):
                attach_mod.detach(att)
        if ct and hook is Hook.XDP and Hook.TC_INGRESS in ct_hooks:   # XDP sees ingress first: it counts
            _ct_lookup_only(dev, Hook.TC_INGRESS, netns_name, True)
        return eng

    @classmethod
    def _sibling_ct(cls, dev: str, hook: Hook, netns_name: str | None) -> Map | None:
        path = cls._sibling_ct_pin(dev, hook, netns_name)
        return Map.from_pin(path) if path is not None else None

    @staticmethod
    def _sibling_ct_pin(dev: str, hook: Hook, netns_name: str | None) -> str | None:
        for other in Hook:
            path = os.path.join(pin_dir(dev, other, netns_name), "bg_ct")
            if other is not hook and os.path.exists(path):
                return path
        return None

    @classmethod
    def open(cls, dev: str, hook: Hook | str, netns_name: str | None = None) -> Engine:
        """Reopen an attached engine from its pins and saved state (another process, e.g. the CLI)."""
        hook = Hook(hook)
        store = StateStore(dev, hook, netns_name)
        if not store.exists():
            raise NotFound(f"open engine on {dev} {hook.value}", "no bpfgate engine is attached there")
        # which maps the pins name, before opening them: a resize moving the pins meanwhile shows under the lock
        pins_id = resize.pins_id(pin_dir(dev, hook, netns_name))
        eng = cls(hook, _open_pins(dev, hook, netns_name), dev=dev, netns_name=netns_name, store=store)
        eng._pins_id = pins_id
        try:
            with store.locked():
                if store.interrupted() is None:
                    resize.drop_leftovers(store, pin_dir(dev, hook, netns_name))
                eng._catch_up()
        except BaseException:   # unreadable state (another version, torn file): no descriptor may leak
            eng.close()
            raise
        return eng

    @staticmethod
    def attached(netns_name: str | None = None) -> list[tuple[str, Hook]]:
        """(dev, hook) of every engine attached in a namespace."""
        return StateStore.listing(netns_name)

    def detach(self) -> None:
        """Remove filters, the tracker, pins and saved state."""
        if self.store is None:
            raise BpfgateError("detach engine", "this engine was not attached")
        if not self.store.exists():
            raise NotFound(f"detach engine on {self.dev} {self.hook.value}", "it is detached already")
        meta = self.store.load_meta()
        keys = set(meta.get("attachments", []))
        others = [h for d, h in StateStore.listing(self.netns) if d == self.dev and h is not self.hook]
        if self.hook is Hook.XDP and _has_ct(meta) and Hook.TC_INGRESS in _ct_hooks(self.dev, self.netns):
            _ct_lookup_only(self.dev, Hook.TC_INGRESS, self.netns, False)   # it counts again before XDP goes
        if self.hook is Hook.TC_EGRESS and _has_ct(meta):
            ingress = _ct_hooks(self.dev, self.netns) - {self.hook}
            if ingress:   # they still need egress tracked: the tracker takes over before this engine goes
                self._restore_tracker(ingress)
        for att in attach_mod.find(None, None, self.netns, target=self.dev):
            if att.owner == CT_OWNER and any(h is not Hook.TC_EGRESS for h in others):
                continue   # the tracker is shared: another ingress engine of this device still needs it
            if att.key in keys:
                attach_mod.detach(att)
        for p in meta.get("pins", []):
            pins.unpin(p)
        pins.prune_empty(pin_dir(self.dev, self.hook, self.netns))
        self.store.remove()
        self.close()

    def _set_ct_lookup_only(self, on: bool) -> None:
        _write_flag(self.maps["bg_ct_lookup_only"], on)

    def _restore_tracker(self, ingress: set[Hook]) -> None:
        """Attach a tracker sharing this device's bg_ct and record it in the ingress engines' meta, so
        the last of them to detach removes it (as if it had attached it)."""
        loaded = Engine.load(Hook.TC_INGRESS, ct=True, reuse={"bg_ct": self.maps["bg_ct"].fd},
                             max_entries=rule_array_sizes(1) | _per_entry_sizes(dict.fromkeys(HASH_TABLES, 0), {}),
                             only=("bg_ct_track",))
        try:
            att = _attach_tracker(loaded.obj.program("bg_ct_track"), self.dev, self.netns)
        finally:
            loaded.close()   # the filter holds the program, which holds bg_ct
        for h in ingress:
            store = StateStore(self.dev, h, self.netns)
            meta = store.load_meta()
            if att.key not in meta.setdefault("attachments", []):
                meta["attachments"].append(att.key)
                store.save_meta(meta)

    def close(self) -> None:
        if self.obj is None:
            for m in self.maps.values():
                m.close()
        else:
            self.obj.close()
            self.obj = None
        self.maps = {}

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def prog_id(self) -> int:
        return self.store.load_meta()["prog_id"] if self.store else self.program.id

    def _ifindex(self, name: str) -> int:
        return netlink.ifindex(name, self.netns)

    # ---- whole policies ----------------------------------------------------------------------------
    def load_policy(self, compiled: CompiledHook, limits: Limits = Limits(), live: LiveHook | None = None) -> None:
        """First policy of a fresh engine (maps empty): bulk writes, then publish the conf. `live`: the edit
        index already built over `compiled` (else built when first needed)."""
        if self.live is not None:
            raise BpfgateError("load policy", "the engine has a policy: use swap()")
        self._write_generation(compiled, compiled.rules, fresh=False)
        self._publish(live.conf if live is not None else compiled.conf())
        if live is not None:
            self.live = live
        else:
            self._pending_compiled = (compiled, limits)

    @property
    def live(self) -> LiveHook | None:
        if self._live_hook is None and self._pending_compiled is not None:
            compiled, limits = self._pending_compiled
            self._live_hook, self._pending_compiled = LiveHook(compiled, limits, self._ifindex), None
        return self._live_hook

    @live.setter
    def live(self, value: LiveHook | None) -> None:
        self._live_hook, self._pending_compiled = value, None

    def swap(self, new: CompiledHook | HookPolicy,
             precompiled: tuple[CompiledHook, CompiledHook] | None = None) -> CompiledHook:
        """Atomic whole-policy swap into the other generation (unchanged rules keep slots and counters).
        precompiled: (`new` compiled for this swap, the generation it was compiled against): used when that
        is still the running one (no other process edited since), which spares a second compile."""
        with self._editing():
            return self._swap(new, precompiled)

    def _swap(self, new: CompiledHook | HookPolicy,
              precompiled: tuple[CompiledHook, CompiledHook] | None = None) -> CompiledHook:
        old = self._live().c
        hp = new if isinstance(new, HookPolicy) else None
        if isinstance(new, HookPolicy):
            if precompiled is not None and precompiled[1] is old:
                new = precompiled[0]
            else:
                new = live_swap(old, new, limits=self.live.limits, ifindex=self._ifindex)
        if new.gen == old.gen:
            raise BpfgateError("swap policy", "the new policy must be compiled into the other generation")
        if self.store is not None and resize.needed(self, old, new):   # maps of other sizes (resize.py)
            return resize.resize(self, new, hp)
        fresh = {rid: a for rid, a in new.rules.items() if old.rules.get(rid) != a}
        self._check_slots(fresh)
        both = (cls_entries(self._live().conf), cls_entries(new.conf()))
        self._check_room({name: both[0][name] + both[1][name] for name in L.CLS_MAPS},
                         old.classes.pfx_count() + new.classes.pfx_count())
        self._begin_write("swap")   # nothing live reads the new slots or generation until the flip
        self._write_generation(new, fresh, fresh=True)
        self._publish(new.conf())
        self._delete_cls(list(old.cls))
        self._clear_classes(old)
        freed = [rid for rid in old.rules if rid not in new.rules]
        limits = self.live.limits
        self.live = LiveHook(new, limits, self._ifindex)
        self.live.quarantine.update(freed)
        for _t, slots in self.pending_free:
            self.live.quarantine.update(slots)
        if freed:
            self.pending_free.append((time.time(), freed))
        self._snapshot()
        if self.store is not None:   # the first `rules` after a swap reads no state (100k rules: ~0.2 s here)
            self.store.save_fresh_listing(listing_of(new))
        return new

    # ---- live edits ----------------------------------------------------------------------------------
    def add_rule(self, rule: Rule, position: int | None = None) -> Diff:
        """Add one rule live. Past the room of the maps, the policy with the rule is swapped in with maps
        sized for it (resize.py: atomic, no moment without a policy); the Diff is then empty."""
        try:
            with self._editing():
                self._room_for_slot()
                diff = self._live().add(rule, position)   # a refusal (PolicyError) has written nothing
                self.apply_diff(diff)
                self._journal("add", rule=rule, position=position, slots=self._slots([rule.name]))
                return diff
        except NoRoom:
            if self.store is None:   # a detached engine (tests, benchmarks) has no pins to move
                raise
        with self._editing():
            rules = self._running_rules()
            rules.insert(len(rules) if position is None else max(0, min(position, len(rules))), rule)
            self._swap_running(rules)
            return Diff()

    def delete_rule(self, name: str) -> Diff:
        with self._editing():
            diff = self._live().delete(name)
            self.apply_diff(diff)
            self._journal("delete", name=name)
            return diff

    def edit_set(self, name: str, elements: Iterable[str], add: bool) -> list[Diff]:
        """Add (add=True) or delete elements of a named set live: no reload, each element one atomic step
        (its stage 0 entries; a port element: the entries of the rules naming the set). Refusals (no such
        set, an element of the wrong type, already there / not there) change nothing. Past the room of the
        maps, the policy with the edited set is swapped in with maps sized for it (resize.py: atomic, no
        moment without a policy); the list of Diffs is then empty."""
        elements = list(elements)
        try:
            with self._editing():
                diffs = self._live().set_edit(name, elements, add)   # a refusal has written nothing
                for diff in diffs:
                    self.apply_diff(diff)   # room is checked for the whole edit before its first write
                self._journal("set_add" if add else "set_del", name=name, elements=[str(e) for e in elements])
                return diffs
        except NoRoom:
            if self.store is None:   # a detached engine (tests, benchmarks) has no pins to move
                raise
        with self._editing():
            c = self._live().c
            sets = {n: st.definition() for n, st in c.sets.items()}
            edited = SetState(c.sets[name].type, dict(c.sets[name].keys), c.sets[name].comment)
            for text in elements:
                (edited.add if add else edited.remove)(parse_element(text))
            sets[name] = edited.definition()
            self._swap_running(self._running_rules(), sets)
            return []

    def apply_edits(self, edits: Sequence[tuple]) -> Diff:
        """Several rule edits (LiveHook.batch's) as one atomic step: packets see the policy before them or
        after them, never part of them (a small policy change without a whole swap). A refusal (a bad rule,
        no room) changes nothing: the saved state is read again (a detached engine drops its policy)."""
        try:
            with self._editing():
                live = self._live()
                shown = live.conf
                diff = live.batch(edits)
                self._write_batch(diff, shown)
                named = [e[2].name if e[0] == "replace" else e[1].name for e in edits if e[0] != "delete"]
                self._journal("batch", edits=[_edit_data(e) for e in edits], slots=self._slots(named))
                return diff
        except BaseException:
            if self.store is None:
                self.live = None   # ahead of the kernel by the edits made before the refusal
            raise

    def _write_batch(self, diff: Diff, shown: L.Conf) -> None:
        """Write a batch Diff so it flips in at once: overlay entries (the new value of every key it
        changes, PRIO_NONE for a key it removes) first, unread; bg_conf with the overlay on (they decide from
        here); the generation's own entries underneath; bg_conf with the overlay off; the overlay goes."""
        live = self._live()
        self._check_slots(diff.rules_update)
        changed = [*diff.cls_update, *diff.cls_delete]
        room = cls_entries(live.conf)   # this generation's entries, then the overlay and deleted keys'
        for k in [*diff.cls_delete, *changed]:   # (a SHAPE_DIRECT key's overlay is in bg_cls_short)
            room[L.cls_map_key(L.overlay_key(k))[0]] += 1
        self._check_room(room)
        self._begin_write("edit")
        self._write_rules(diff.rules_update, fresh=True)
        none = L.ClsValue(L.PRIO_NONE, 0)
        overlay = {L.overlay_key(k): diff.cls_update.get(k, none) for k in changed}
        self._write_cls(overlay)
        self._publish(diff.conf_before or shown, overlay=True)
        self._write_cls(diff.cls_update)
        self._delete_cls(diff.cls_delete)
        self._publish(live.conf)
        self._delete_cls(list(overlay))
        if diff.rules_free:
            self.pending_free.append((time.time(), list(diff.rules_free)))

    def _default(self) -> str:
        return default_of(self._live().c)

    def replace_rule(self, name: str, rule: Rule) -> Diff:
        """Replace rule `name` live. Past the room of the maps, the policy with the rule replaced is swapped
        in with maps sized for it, as add_rule; the Diff is then empty."""
        try:
            with self._editing():
                live = self._live()
                if rule_action(rule, self._ifindex) != live.c.rules[live.rule_id(name)]:
                    self._room_for_slot()   # a changed action takes a fresh slot
                diff = live.replace(name, rule)
                self.apply_diff(diff)
                self._journal("replace", name=name, rule=rule, slots=self._slots([rule.name]))
                return diff
        except NoRoom:
            if self.store is None:
                raise
        with self._editing():   # the failed edit re-read the saved state: the running policy
            self._swap_running([rule if r.name == name else r for r in self._running_rules()])
            return Diff()

    def _running_rules(self) -> list[Rule]:
        """The running policy's rules in order."""
        return [self.live.c.source[rid] for _p, rid in self.live.order]

    def _swap_running(self, rules: list[Rule], sets: dict | None = None) -> None:
        """Swap in the running policy with these rules (and sets: default, the running ones): a live edit
        past the room of the maps, which the swap resizes (resize.py)."""
        if sets is None:
            sets = {n: st.definition() for n, st in self.live.c.sets.items()}
        self._swap(HookPolicy(default=self._default(), rules=tuple(rules), sets=sets))

    def _sync(self) -> None:
        """Readers catch up with edits other processes made (not called inside an edit: flock is not
        re-entrant across file descriptions)."""
        if self.store is not None and (self.store.version() != self._seen_version or self.store.interrupted()):
            with self.store.locked():
                self._catch_up()

    def _catch_up(self) -> None:
        """Under the store lock: take over the saved state (edits, swaps and resizes of other processes), and
        finish a resize or repair an edit that was cut short."""
        mark = self.store.interrupted()
        if mark is not None and mark.get("op") == "resize":
            resize.finish(self.store, self.dev, self.hook, self.netns)   # committed: it completes
        if resize.pins_id(pin_dir(self.dev, self.hook, self.netns)) != self._pins_id:
            self._reopen_maps()   # another process resized the engine: its maps are other maps now
        self.live = self.store.load_live(self._ifindex)
        self.pending_free = self.store.pending_free()
        self._repair_if_cut_short()
        self._seen_version = self.store.version()

    def _reopen_maps(self) -> None:
        pins_id = resize.pins_id(pin_dir(self.dev, self.hook, self.netns))
        maps = _open_pins(self.dev, self.hook, self.netns)
        self.close()
        self.maps, self._pins_id = maps, pins_id

    def _repair_if_cut_short(self) -> None:
        """Under the store lock: an edit that died while writing the kernel (its mark is still there), or a
        published bg_conf that is not the saved one, means the kernel holds entries the saved state does
        not know (a half-written generation, a flip without its snapshot): put the saved state back whole
        before anything reads it or writes that generation again (engine/recover.py)."""
        if self.store.interrupted() is None and recover.in_step(self):
            return
        self.repaired = recover.repair(self)
        self.store.end_write()

    def _begin_write(self, op: str) -> None:
        """From here until the edit's state is saved, the kernel is ahead of the saved state."""
        if self.store is not None:
            self.store.begin_write(op)
        self._writing = True

    @contextmanager
    def _editing(self):
        """One editor at a time per engine (flock); catch up first if another process edited since."""
        if self.store is None:
            self._release_due()
            yield
            return
        with self.store.locked():
            if self.store.version() != self._seen_version or self.store.interrupted():
                self._catch_up()
            self._release_due()
            self._writing = False
            try:
                yield
                self.store.end_write()
            except BaseException:   # a failed write may leave LiveHook ahead of the saved state: re-read it
                self.live = self.store.load_live(self._ifindex)
                self.pending_free = self.store.pending_free()
                if self._writing:   # and the kernel ahead of it: put the saved state back now
                    try:
                        self.repaired = recover.repair(self)
                        self.store.end_write()
                    except Exception:   # noqa: BLE001 - the mark stays: the next opener repairs
                        pass
                raise
            finally:
                self._writing = False
                self._seen_version = self.store.version()

    def apply_diff(self, diff: Diff) -> None:
        """Write one LiveHook Diff in the documented order; each step leaves a consistent classifier."""
        self._check_slots(diff.rules_update)
        c = self._live().c   # the edited classifier: before any write
        self._check_room(cls_entries(self._live().conf), c.classes.pfx_count() if diff.stage else 0)
        self._begin_write("edit")
        if diff.stage is not None:
            self._write_stage(diff.stage)
        self._write_rules(diff.rules_update, fresh=True)
        if diff.conf_before is not None:
            self._publish(diff.conf_before)
        self._write_cls(diff.cls_update)
        self._delete_cls(diff.cls_delete)
        if diff.conf_after is not None:
            self._publish(diff.conf_after)
        if diff.rules_free:
            self.pending_free.append((time.time(), list(diff.rules_free)))

    def _release_due(self) -> None:
        now, keep = time.time(), []
        for t, slots in self.pending_free:
            if now - t >= GRACE_S:
                self._live().release(slots)
                self._journal("release", slots=slots)
            else:
                keep.append((t, slots))
        self.pending_free = keep

    # ---- reading ----------------------------------------------------------------------------------
    def policy(self) -> HookPolicy:
        """The running policy, rules in order (after live edits): what `policy export` writes."""
        self._sync()
        live = self._live()
        c = live.c
        default = default_of(c)
        return HookPolicy(default=default, rules=tuple(c.source[rid] for _p, rid in live.order),
                          sets={name: st.definition() for name, st in c.sets.items()})

    def share_rules(self, hp: HookPolicy) -> int:
        """Hold `hp`'s Rule objects for the running rules equal to them, in place of this engine's own copies
        (read back from its saved state): a caller that keeps `hp` (the agent, its parsed files) then holds
        each rule once, not twice (~1 KB a rule). `hp` is a policy just found equal to the running one, or
        just applied; rules that differ are left alone. Returns how many were replaced."""
        live = self._live()
        source = live.c.source
        if source.changed_since_saved() is not None or len(live.order) != len(hp.rules):
            return 0   # rules not read back from the saved state (no copies), or not this policy
        n = 0
        for (_p, rid), rule in zip(live.order, hp.rules):
            mine = source[rid]
            if mine is not rule and mine == rule:
                source[rid] = rule
                n += 1
        return n

    def sets(self) -> dict:
        """The running policy's named sets (name -> policy.sets.SetState: type, elements), as edited live; no
        rule is read. Read only: edits go through edit_set()."""
        self._sync()
        return dict(self._live().c.sets)

    def outline(self) -> tuple[str, Sequence[str]]:
        """The running default and rule names in order (a view: valid until the next edit), without the rules
        themselves (cheap at 100k rules)."""
        self._sync()
        live = self._live()
        c = live.c
        return default_of(c), live.names()

    def listing(self) -> Listing:
        """Every rule as `bpfgate rules` lists it (ruledata.rule_row), in order. The rows of rules unchanged
        since the saved snapshot come from the rows the first listing of that snapshot saved: at 100k rules,
        reading the Rule models back and describing them is ~1 s."""
        self._sync()
        live = self._live()
        edited = live.c.source.changed_since_saved() if self.store is not None else None
        saved = self.store.load_listing() if edited is not None else {}
        skip = edited or ()
        listing = listing_of(live.c, saved, skip)
        made = any(rid in skip or rid not in saved for rid in listing.rids)   # rows described afresh
        if edited is None:
            return listing
        version = self.store.version()
        whole = version == self._seen_version   # the state in memory is the saved one, journal and all
        if whole and (made or self.store.current_listing() is None):   # the next listing reads these rows
            self.store.save_listing(listing, version[1])
        elif made and not saved:
            self.store.save_listing(listing)
        return listing

    def rule_ids(self) -> dict[str, int]:
        self._sync()
        c = self._live().c
        return {c.names[rid]: rid for rid in [c.default_rule] + [r for _p, r in self.live.order]}

    def counter_columns(self, nslots: int) -> tuple[list[int], list[int]]:
        """Packets and bytes of slots 0..nslots-1 (per-CPU, summed)."""
        return counter_columns(self.maps["bg_counters"], nslots)

    def counters(self) -> dict[str, R.Counter]:
        """Packets and bytes per rule name (per-CPU, summed), "(default)" included."""
        return read_counters(self.maps["bg_counters"], self.rule_ids())

    def reset_counters(self, names: Iterable[str] | None = None) -> dict[str, R.Counter]:
        """Zero the counters of the named rules ("(default)" included; None: every rule), as `nft reset
        counters`: returns what they held just before. Per rule the read and the zeroing are two syscalls
        apart: packets counted between them (microseconds) are lost, not counted twice."""
        ids = self.rule_ids()
        want = list(ids) if names is None else list(dict.fromkeys(names))
        missing = [n for n in want if n not in ids]
        if missing:
            raise NotFound(f"reset counters of rule {missing[0]}", "no such rule in the running policy")
        before = self.counters()
        slots = sorted(ids[n] for n in want)
        if slots:
            m = self.maps["bg_counters"]
            m.update_batch_raw(_u32s(slots), bytes(m._vbuf_size * len(slots)), len(slots))
        return {n: before[n] for n in want}

    def conntrack(self, include_expired: bool = False) -> list[R.Flow]:
        """The interface's flows (the data plane ignores expired ones; the LRU reclaims them under pressure)."""
        now = time.monotonic_ns()    # CLOCK_MONOTONIC, as bpf_ktime_get_ns()
        flows = [R.Flow.decode(bytes(k), bytes(v)) for k, v in self.maps["bg_ct"].lookup_batch()]
        return flows if include_expired else [f for f in flows if not _expired(f, now)]

    def expire_flows(self) -> int:
        """Delete expired flows now; returns how many."""
        now, m, n = time.monotonic_ns(), self.maps["bg_ct"], 0
        for k, v in list(m.lookup_batch()):
            if _expired(R.Flow.decode(bytes(k), bytes(v)), now):
                n += m.delete(k)
        return n

    def events(self, timeout: float = 0.0) -> list[R.RuleLogEvent]:
        """Log events (rules with `log`) waiting in the ring buffer."""
        from bpfgate.kernel.ringbuf import RingBuffer

        self._sync()
        names = self._live().c.names
        got: list = []
        with RingBuffer(self.maps["events"], handler=lambda batch: got.extend(bytes(r) for r in batch)) as rb:
            rb.poll(int(timeout * 1000))
        return [R.RuleLogEvent.decode(raw, names) for raw in got]

    # ---- map writes --------------------------------------------------------------------------------
    def _live(self) -> LiveHook:
        if self.live is None:
            raise BpfgateError("engine", "no policy loaded")
        return self.live

    def _room_for_slot(self) -> None:
        """Refuse an edit needing a slot past the arrays before LiveHook changes (it has no undo)."""
        self._check_slots({self._live()._new_slot(): None})

    def _check_room(self, entries: dict[str, int], pfx: int = 0) -> None:
        """Preallocated tables cannot grow: refuse before writing anything (counts are bounds, both
        generations counted during a swap). entries: per classifier map (cls_entries())."""
        for name, n in (*entries.items(), ("bg_pfx", pfx)):
            cap = self.maps[name].max_entries
            if n > cap:
                raise NoRoom("rules", f"the engine's {name} table has room for {cap} entries and this "
                             f"needs up to {n}: detach and attach the policy to resize")

    def _check_slots(self, rules: dict) -> None:
        cap = self.maps["bg_rules"].max_entries
        if rules and max(rules) >= cap:
            raise NoRoom("rules", f"the engine has room for {cap} rule slots and this needs slot "
                         f"{max(rules)}: detach and attach the policy to resize")

    def _write_rules(self, rules: dict[int, L.RuleAction], fresh: bool) -> None:
        if not rules:
            return
        ids = sorted(rules)
        if fresh:   # a new slot starts with zero counters and full buckets (docs section 5)
            keys = _u32s(ids)
            for name in ("bg_counters", "bg_rate_rule", "bg_log_rate"):
                m = self.maps[name]
                m.update_batch_raw(keys, bytes(m._vbuf_size * len(ids)), len(ids))
        packed: dict[int, bytes] = {}   # by object: the compiler shares one record among equal actions

        def pack(a: L.RuleAction) -> bytes:
            b = packed.get(id(a))
            if b is None:
                b = packed[id(a)] = a.pack()
            return b

        self._write_redirect_targets(rules.values())   # before a rule can send packets there
        m = self.maps["bg_rules"]
        for i in range(0, len(ids), _BATCH):   # a batch's records at a time (all of 100k: ~5 MB)
            part = ids[i:i + _BATCH]
            m.update_batch_raw(_u32s(part), b"".join([pack(rules[rid]) for rid in part]), len(part))

    def _write_redirect_targets(self, rules: Iterable[L.RuleAction]) -> None:
        """Put the redirect rules' target interfaces in the devmap the programs redirect through. One that
        does not exist (any more) stays out: its packets are counted and passed or dropped as the rule says."""
        targets = {a.redirect_ifindex for a in rules if a.action == L.ACT_REDIRECT and a.redirect_ifindex}
        m = self.maps.get("bg_redirect_devs")
        if not targets or m is None:
            return
        from bpfgate.kernel import netns

        with netns.entered(self.netns):   # the kernel resolves a devmap's ifindex in the caller's namespace
            for ifindex in targets:
                try:
                    m.update(ifindex, ifindex)
                except BpfgateError:
                    pass   # no such device: the datapath counts the packets of its rules (redirect_stats)

    def redirect_stats(self) -> dict[str, int]:
        """Packets whose redirect target was gone, by what their rule did instead (passed / dropped)."""
        m = self.maps.get("bg_redirect_stats")
        if m is None:
            return {"gone_passed": 0, "gone_dropped": 0}
        return {"gone_passed": sum(m.lookup(R.C.BG_REDIR_STAT_GONE_PASSED)),
                "gone_dropped": sum(m.lookup(R.C.BG_REDIR_STAT_GONE_DROPPED))}

    def _write_cls(self, entries: dict[bytes, L.ClsValue]) -> None:
        """Entries (keys in the 56-byte form) into bg_cls, or bg_cls_short for a SHAPE_SHORT shape's, or
        bg_cls_direct for the keys of the SHAPE_DIRECT shape that fit it (L.cls_map_key)."""
        if not entries:
            return
        if not any(k[L.KEY_SHAPE_OFF] & L.SHAPE_DIRECT for k in entries):   # the usual case: two maps
            wide = {k: v for k, v in entries.items() if not k[L.KEY_SHAPE_OFF] & L.SHAPE_SHORT}
            short = entries if not wide else {k: v for k, v in entries.items() if k not in wide}
            split = (("bg_cls", wide, iter(wide)), ("bg_cls_short", short, map(L.short_key, short)))
        else:
            by: dict[str, dict] = {}
            for k, v in entries.items():
                name, raw = L.cls_map_key(k)
                by.setdefault(name, {})[raw] = v
            split = tuple((name, part, iter(part)) for name, part in by.items())
        for name, part, keys in split:
            values = iter(part.values())
            # a batch at a time: only its keys in their map's form are held (all of 100k: ~10 MB)
            while batch := list(islice(keys, _BATCH)):
                vals = array.array("I")
                for v in islice(values, len(batch)):
                    vals.append(v.prio)
                    vals.append(v.rule_id)
                self.maps[name].update_batch_raw(b"".join(batch), vals.tobytes(), len(batch))

    def _write_generation(self, compiled: CompiledHook, rules: dict[int, L.RuleAction], fresh: bool) -> None:
        """Rule slots, stage 0 tables and bg_cls entries of a generation nothing reads yet. Three independent
        maps: their kernel inserts run side by side (ctypes lets go of the GIL): 100k rules load in < 100 ms."""
        with ThreadPoolExecutor(3) as pool:
            done = [pool.submit(self._write_rules, rules, fresh), pool.submit(self._write_classes, compiled),
                    pool.submit(self._write_cls, compiled.cls)]
        for f in done:
            f.result()   # the first error, if any

    def _write_stage(self, st) -> None:
        """A set edit's stage 0 writes: new and changed bg_pfx entries, then the level-0 entries that send
        packets to them, then the entries no bucket sends packets to any more."""
        if st.pfx_update:
            vals = array.array("I", st.pfx_update.values())
            self.maps["bg_pfx"].update_batch_raw(b"".join(st.pfx_update), vals.tobytes(), len(st.pfx_update))
        if st.top:
            keys = array.array("I", st.top)
            self.maps["bg_pfx_top"].update_batch_raw(keys.tobytes(), b"".join(st.top.values()), len(st.top))
        if st.pfx_delete:
            self.maps["bg_pfx"].delete_batch(list(st.pfx_delete))

    def _write_classes(self, compiled: CompiledHook) -> None:
        """Stage 0 tables of compiled.gen's slot (unused by the live generation until the conf flips)."""
        p = compiled.classes.packed
        if p.ntop:
            self.maps["bg_pfx_top"].update_batch_raw(p.top_keys, p.top_vals, p.ntop)
        if p.npfx:
            self.maps["bg_pfx"].update_batch_raw(p.pfx_keys, p.pfx_vals, p.npfx)

    def _clear_classes(self, compiled: CompiledHook) -> None:
        """Empty compiled.gen's stage 0 slot once no packet reads it (the next swap writes it afresh)."""
        p = compiled.classes.packed
        if p.ntop:
            m = self.maps["bg_pfx_top"]
            m.update_batch_raw(p.top_keys, bytes(m._vbuf_size * p.ntop), p.ntop)
        if p.npfx:
            size = len(p.pfx_keys) // p.npfx
            self.maps["bg_pfx"].delete_batch([p.pfx_keys[i:i + size] for i in range(0, len(p.pfx_keys), size)])

    def _delete_cls(self, keys: list[bytes]) -> None:
        wide, short, direct = L.split_keys(keys)
        for name, part in zip(L.CLS_MAPS, (wide, short)):
            if part:
                self.maps[name].delete_batch(part)
        if direct:   # an array: its entry becomes "none"
            self.maps["bg_cls_direct"].update_batch_raw(b"".join(direct), L.direct_empty(len(direct)), len(direct))

    def _publish(self, conf: L.Conf, overlay: bool = False) -> None:
        """Write the inactive bg_conf slot, then flip bg_active: one 4-byte write publishes it."""
        active = self.maps["bg_active"].lookup(0) or 0
        nxt = (int(active) & 1) ^ 1
        self.maps["bg_conf"].update_batch_raw(_U32.pack(nxt), conf.pack(overlay), 1)
        self.maps["bg_active"].update_batch_raw(_U32.pack(0), _U32.pack(nxt), 1)

    # ---- persistence --------------------------------------------------------------------------------
    def _snapshot(self) -> None:
        if self.store is not None:
            self.store.snapshot(self.live, self.pending_free)

    def _journal(self, op: str, **kw) -> None:
        if self.store is not None:
            self.store.journal(op, **kw)

    def _slots(self, names: Iterable[str]) -> dict[str, int]:
        """The slots of the named rules that are live, as a journal line records them: a listing replays
        the line onto its saved rows (engine/listing.py) and needs them for the rules' counters."""
        by_name = self._live().by_name
        return {n: by_name[n] for n in names if n in by_name}


def _open_pins(dev: str, hook: Hook, netns_name: str | None) -> dict[str, Map]:
    """The engine's maps, from their pins."""
    pdir = pin_dir(dev, hook, netns_name)
    maps = {}
    u32 = ctypes.c_uint32
    try:
        for name in MAPS:
            kt = u32 if name in U32_KEYED else None
            maps[name] = Map.from_pin(os.path.join(pdir, name), kt, u32 if name == "bg_active" else None)
    except BpfgateError:
        for m in maps.values():
            m.close()
        if os.path.exists(os.path.join(pdir, "bg_cls")):   # pinned by a bpfgate before stage 0 (issue 4)
            raise BpfgateError(f"open engine on {dev} {hook.value}", "it was attached by an older bpfgate "
                               "(different map layout)", hint="detach it and apply the policy again") from None
        raise NotFound(f"open engine on {dev} {hook.value}", f"its pins under {pdir} are gone") from None
    for name in CAPTURE_MAPS:   # optional: engines attached by an older bpfgate have no capture maps
        path = os.path.join(pdir, name)
        if os.path.exists(path):
            maps[name] = Map.from_pin(path, u32 if name in U32_KEYED else None)
    return maps


def _ct_lookup_only(dev: str, hook: Hook, netns_name: str | None, on: bool) -> None:
    """Switch an attached engine's conntrack between tracking and reading the state an engine earlier on
    the packet's path keeps (so each packet is counted once per flow)."""
    path = os.path.join(pin_dir(dev, hook, netns_name), "bg_ct_lookup_only")
    if not os.path.exists(path):
        return   # attached by a bpfgate without the switch: it keeps tracking
    with closing(Map.from_pin(path, ctypes.c_uint32)) as m:
        _write_flag(m, on)


def _write_flag(m: Map, on: bool) -> None:
    m.update_batch_raw(_U32.pack(0), _U32.pack(int(on)), 1)


def _attach_tracker(prog, dev: str, netns_name: str | None) -> attach_mod.Attachment:
    return attach_mod.attach_tc(prog, dev, "egress", netns_name=netns_name, handle=CT_HANDLE,
                                priority=CT_PRIORITY, owner=CT_OWNER)


def _has_ct(meta: dict) -> bool:
    """Whether a saved engine tracks flows. Meta saved before the "ct" flag: an ingress engine did iff it
    attached the tracker; an egress engine counts as not tracking (the tracker then stays, as it did)."""
    if "ct" in meta:
        return bool(meta["ct"])
    return any(k.endswith(CT_KEY_SUFFIX) for k in meta.get("attachments", []))


def _load_kw(hook: Hook, ct: bool, ct_hooks: set[Hook], prealloc: dict[str, int], max_entries: dict[str, int]) -> dict:
    """Engine.load's arguments for an attach on `hook` of a device whose engines that track flows are on
    `ct_hooks`. Replies are known only if outgoing flows are tracked: by the tracker (also loaded), unless an
    egress engine with ct runs (exactly one program tracks egress, or the per-flow counters count it twice)."""
    tracker = ct and hook in (Hook.TC_INGRESS, Hook.XDP) and Hook.TC_EGRESS not in ct_hooks
    return {"ct": ct, "also": ("bg_ct_track",) if tracker else (), "prealloc": prealloc, "max_entries": max_entries}


def _serves(loaded: dict, wanted: dict) -> bool:
    """Whether an engine loaded with `loaded` (Engine.load's arguments) serves an attach asking `wanted`: the
    same programs and arrays, and the same tables preallocated, each with the room asked for and at most twice
    that (an estimate's surplus; resize.needed shrinks only past SHRINK_OVER times)."""
    have, need = loaded["prealloc"], wanted["prealloc"]
    return ({k: v for k, v in loaded.items() if k != "prealloc"} == {k: v for k, v in wanted.items() if k != "prealloc"}
            and have.keys() == need.keys() and all(need[m] <= have[m] <= 2 * need[m] for m in need))


class Preload:
    """An engine loading in a daemon thread (Engine.preload): a process that exits meanwhile does not wait
    for it, and the kernel frees what it made."""

    def __init__(self, kw: dict, load) -> None:
        self.kw = kw
        self.served = False   # an attach took it
        self.future: Future = Future()
        threading.Thread(target=self._run, args=(load,), name="bpfgate-preload", daemon=True).start()

    @classmethod
    def start(cls, hook: Hook, kw: dict) -> "Preload":
        """Load an engine for `hook` with Engine.load's arguments `kw` (Engine.preload_kw)."""
        return cls(kw, functools.partial(Engine.load, hook, quiet=True, **kw))

    def _run(self, load) -> None:
        try:
            self.future.set_result(load())
        except BaseException as e:   # noqa: BLE001 - the attach that takes it raises it (or loads again)
            self.future.set_exception(e)

    def take(self, kw: dict | None) -> Future | None:
        """The load's future when what it loads serves Engine.load's arguments `kw` (_serves); else None, and
        the engine it makes is closed once made."""
        if kw is not None and _serves(self.kw, kw):
            self.served = True
            return self.future
        self.discard()
        return None

    def discard(self) -> None:
        _close_once_loaded(self.future)


def _close_once_loaded(future: Future) -> None:
    """Close the engine a load makes, when it is made (the caller does not wait for it)."""
    def close(f: Future) -> None:
        if f.exception() is None:
            f.result().close()
    future.add_done_callback(close)


def _ct_hooks(dev: str, netns_name: str | None) -> set[Hook]:
    """Hooks of the device's attached engines that track flows."""
    out = set()
    for d, h in StateStore.listing(netns_name):
        try:
            if d == dev and _has_ct(StateStore(d, h, netns_name).load_meta()):
                out.add(h)
        except (OSError, ValueError):
            continue   # detached meanwhile, or a torn file
    return out


def conntrack_table(dev: str, netns_name: str | None) -> tuple[Map | None, set[str]]:
    """The conntrack table (bg_ct) the device's engines keep, and the directions ("ingress", "egress") they
    track in it: another family tracking on the device loads on this table and counts only the other
    directions (docs/conntrack.md). (None, set()) when no engine tracks there."""
    hooks = _ct_hooks(dev, netns_name)
    for h in hooks:
        path = os.path.join(pin_dir(dev, h, netns_name), "bg_ct")
        if os.path.exists(path):
            tracked = {"egress"}   # an egress engine, or the tracker every ingress engine with ct attaches
            if hooks & {Hook.XDP, Hook.TC_INGRESS}:
                tracked.add("ingress")
            return Map.from_pin(path), tracked
    return None, set()


def _expired(f: R.Flow, now_ns: int) -> bool:
    return now_ns - f.last_ns > (CT_TIMEOUT_EST_S if f.replied else CT_TIMEOUT_NEW_S) * 10**9


def _edit_data(edit: tuple) -> dict:
    """A LiveHook edit as a journal record (rules as the policy file has them)."""
    from bpfgate.policy.ruledata import rule_data

    if edit[0] == "delete":
        return {"op": "delete", "name": edit[1]}
    if edit[0] == "replace":
        return {"op": "replace", "name": edit[1], "rule": rule_data(edit[2])}
    return {"op": "add", "rule": rule_data(edit[1]), "position": edit[2]}


def listing_of(c: CompiledHook, saved: dict[int, tuple] | None = None, edited: Iterable[int] = ()) -> Listing:
    """The rules of `c` as `rules` lists them, in order; rows of `saved` (by rule id) reused, except for the
    rules `edited`."""
    saved = saved or {}
    rids = [rid for _p, rid in c.order]
    rows = [saved.get(rid) if rid not in edited else None for rid in rids]
    rows = [row if row is not None else rule_row(c.source[rid]) for rid, row in zip(rids, rows)]
    return Listing.of_rows(default_of(c), c.default_rule, rids, rows)


def default_of(c: CompiledHook) -> str:
    """The compiled policy's default, as a policy file says it."""
    return "allow" if c.rules[c.default_rule].action == L.ACT_PASS else "deny"


def rule_names(compiled: CompiledHook) -> dict[int, str]:
    return dict(compiled.names) | {compiled.default_rule: DEFAULT_NAME}
