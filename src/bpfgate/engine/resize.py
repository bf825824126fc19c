"""A whole-policy swap that does not fit the running engine's maps (or fits tables many times smaller) grows
or shrinks them, atomically, with no moment without a policy.

Maps cannot change size once created, and the engine sizes its rule arrays and classifier and prefix tables
for the policy it was attached with. Such a swap loads a second engine object whose sized maps fit the new
policy and which shares every other map with the running one (the flow table, ring buffers, per-source rate
buckets, stats, switches: SHARED), writes the new policy into it whole, carries the counters and rate buckets
of the unchanged rules over, and then replaces the running program at its attach point
(attach.replace_program: a tc filter replaced at its handle and priority, XDP replaced on the device, a link
updated). The kernel swaps the program pointer under RCU: every packet meets the old program with the old
policy or the new one with the new policy. The new maps then take the old ones' pin paths; the old maps go
with the old program. Packets the old program counts between the carrying of the counters and the switch
(about a millisecond) are not carried.

Crash safety, with the mark of engine/state.py as the commit point: the new maps and programs are pinned
beside the old ones (NEXT + name) and the new state saved as snapshot.next before the mark `resize` is
written. An engine opened with that mark finishes the resize (finish(): replacing the programs again is
idempotent, then the pins move and the snapshot is taken); leftovers of a resize that died before writing
its mark are dropped (drop_leftovers()), and the old policy runs on as if nothing happened.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bpfgate import attach as attach_mod
from bpfgate.kernel import pins
from bpfgate.kernel.objects import Program
from bpfgate.policy.compile import CompiledHook, compile_hook
from bpfgate.policy.live import LiveHook
from bpfgate.policy.model import HookPolicy

from .state import SNAPSHOT_NEXT

if TYPE_CHECKING:
    from .engine import Engine
    from .state import StateStore

NEXT = "next-"                    # pins of a resize in progress: NEXT + map name, NEXT + "prog-" + program
# maps whose contents belong to one generation of sizes: created anew by a resize (the rest are SHARED)
SIZED = ("bg_cls", "bg_cls_short", "bg_cls_direct", "bg_conf", "bg_active", "bg_rules", "bg_counters", "bg_rate_rule",
         "bg_log_rate", "bg_pfx_top", "bg_pfx")
SHARED = ("bg_ct", "events", "bg_stats", "bg_rate_src", "bg_ct_lookup_only", "bg_capture_cfg", "bg_capture_ring")
CARRIED = ("bg_counters", "bg_rate_rule", "bg_log_rate")   # per rule slot: an unchanged rule keeps them
SHRINK_OVER = 8   # a table this many times larger than the new policy needs shrinks with the swap
_READ_CHUNK = 1 << 14


def needed(eng: Engine, old: CompiledHook, new: CompiledHook) -> bool:
    """Whether swapping `new` in needs other maps: it does not fit the running ones beside `old` (an in-place
    swap holds both generations until the flip), or they are SHRINK_OVER times larger than it needs."""
    from .engine import HASH_MAX, cls_entries, hash_sizes, prealloc_for, rule_array_sizes

    slots = eng.maps["bg_rules"].max_entries
    if max(new.rules) >= slots:
        return True
    prealloc = prealloc_for(new)
    want = prealloc | hash_sizes(new, prealloc)
    both = (cls_entries(eng._live().conf), cls_entries(new.conf()))   # eng's live generation is `old`
    for name, n in (*((m, both[0][m] + both[1][m]) for m in both[0]),
                    ("bg_pfx", old.classes.pfx_count() + new.classes.pfx_count())):
        cap = eng.maps[name].max_entries
        if n > cap or (cap < HASH_MAX and cap > SHRINK_OVER * want[name]):
            return True   # too small, or preallocated (memory held) far past what the new policy needs
    return slots > SHRINK_OVER * rule_array_sizes(len(new.rules) + 1)["bg_rules"]


def resize(eng: Engine, new: CompiledHook, hp: HookPolicy | None) -> CompiledHook:
    """Swap `new` (compiled against the running generation) in with maps sized for it. Called inside the
    engine's edit lock. Returns the compiled policy that runs."""
    from .engine import MAX_RULE_SLOTS, PROGRAMS, Engine, NoRoom, hash_sizes, pin_dir, prealloc_for, rule_array_sizes

    old, limits = eng._live().c, eng._live().limits
    same_slots = True
    if hp is not None and (max(new.rules) > 2 * len(new.rules) + 64 or max(new.rules) >= MAX_RULE_SLOTS):
        # the slots the old policy held pushed the new rules' slots up: in maps of their own they start at 0
        new, same_slots = compile_hook(hp, eng.hook, limits=limits, ifindex=eng._ifindex), False
    if max(new.rules) >= MAX_RULE_SLOTS:
        raise NoRoom("rules", f"the engine holds at most {MAX_RULE_SLOTS} rule slots and this policy needs "
                     f"{max(new.rules) + 1}")
    pairs = _carried(old, new, same_slots)
    prealloc = prealloc_for(new)
    meta = eng.store.load_meta()
    nxt = Engine.load(eng.hook, ct=bool(meta.get("ct", True)),
                      reuse={name: eng.maps[name].fd for name in SHARED if name in eng.maps},
                      prealloc=prealloc, max_entries=rule_array_sizes(max(new.rules) + 1) | hash_sizes(new, prealloc))
    pdir = pin_dir(eng.dev, eng.hook, eng.netns)
    committed = False
    try:
        nxt._write_generation(new, new.rules, fresh=True)
        nxt._publish(new.conf())
        _carry(eng, nxt, pairs)
        live = LiveHook(new, limits, eng._ifindex)
        for name in SIZED:
            _pin(nxt.maps[name], os.path.join(pdir, NEXT + name))
        for name in PROGRAMS[eng.hook]:
            _pin(nxt.obj.program(name), os.path.join(pdir, NEXT + "prog-" + name))
        eng.store.snapshot(live, [], name=SNAPSHOT_NEXT)
        eng.store.begin_write("resize")   # the commit point: from here on an opener finishes it
        committed = True
        finish(eng.store, eng.dev, eng.hook, eng.netns)
    except BaseException:
        if not committed:
            drop_leftovers(eng.store, pdir)
        nxt.close()
        raise
    old_obj, old_maps = eng.obj, eng.maps
    eng.obj, eng.maps = nxt.obj, nxt.maps   # this process goes on with the maps that now run
    if old_obj is not None:
        old_obj.close()
    else:
        for m in old_maps.values():
            m.close()
    eng.live, eng.pending_free = live, []
    eng._pins_id = pins_id(pdir)
    return new


def finish(store: StateStore, dev: str, hook, netns: str | None) -> None:
    """Complete a committed resize (idempotent, so a crash anywhere in it is finished by the next opener):
    the pinned new programs replace the running ones, the new maps take the pin paths, the new snapshot
    becomes the saved state; then the mark goes."""
    from .engine import OWNER, PROGRAMS, pin_dir

    pdir = pin_dir(dev, hook, netns)
    progs = {name: os.path.join(pdir, NEXT + "prog-" + name) for name in PROGRAMS[hook]}
    if all(os.path.exists(p) for p in progs.values()):
        meta = store.load_meta()
        keys = set(meta.get("attachments", []))
        first = None
        for att in attach_mod.find(None, None, netns, target=dev):
            if att.owner != OWNER or att.key not in keys:
                continue
            name = _program_of(att, hook)
            prog = Program.from_pin(progs[name])
            try:
                attach_mod.replace_program(att, prog)
                if name == PROGRAMS[hook][0]:
                    first = prog.id
            finally:
                prog.close()
        if first is not None:
            meta["prog_id"] = first
            store.save_meta(meta)
    for name in SIZED:
        nxt = os.path.join(pdir, NEXT + name)
        if os.path.exists(nxt):
            os.replace(nxt, os.path.join(pdir, name))
    store.take_snapshot(SNAPSHOT_NEXT)
    for p in progs.values():
        pins.unpin(p)
    store.end_write()


def drop_leftovers(store: StateStore, pdir: str) -> None:
    """Remove what a resize that never reached its commit point left (its pins, its snapshot)."""
    try:
        names = os.listdir(pdir)
    except FileNotFoundError:
        names = []
    for name in names:
        if name.startswith(NEXT):
            pins.unpin(os.path.join(pdir, name))
    store.drop(SNAPSHOT_NEXT)


def pins_id(pdir: str) -> int | None:
    """Which maps the pins name: the inode of the pin a resize moves last (a process that saw it before
    opening the pins opened every new one)."""
    try:
        return os.stat(os.path.join(pdir, SIZED[-1])).st_ino
    except FileNotFoundError:
        return None


def _program_of(att, hook) -> str:
    """The engine program an attachment runs: a cgroup hook's links are pinned by program name (the
    kernel's program names are cut at 15 characters: bg_sock_connect4 and 6 would be alike)."""
    from .engine import LINK_PIN, PROGRAMS

    if att.link_pin and os.path.basename(att.link_pin).startswith(LINK_PIN):
        return os.path.basename(att.link_pin)[len(LINK_PIN):]
    return PROGRAMS[hook][0]


def _pin(obj, path: str) -> None:
    pins.unpin(path)
    obj.pin(path)


def _carried(old: CompiledHook, new: CompiledHook, same_slots: bool) -> list[tuple[int, int]]:
    """(old slot, new slot) of every rule the swap leaves unchanged (and the default, if it is)."""
    if same_slots:   # compiled against the old generation: an unchanged rule kept its slot
        return [(rid, rid) for rid, a in new.rules.items() if old.rules.get(rid) == a]
    out = [(old.default_rule, new.default_rule)] if old.rules[old.default_rule] == new.rules[new.default_rule] else []
    for name, nrid in new.by_name.items():
        orid = old.by_name.get(name)
        if orid is not None and old.rules[orid] == new.rules[nrid] and old.source[orid] == new.source[nrid]:
            out.append((orid, nrid))
    return out


def _carry(eng: Engine, nxt: Engine, pairs: list[tuple[int, int]]) -> None:
    """Counters and rate buckets of the unchanged rules, from the running maps into the new ones."""
    if not pairs:
        return
    from .engine import _u32s

    top = max(o for o, _n in pairs) + 1
    keys = _u32s(n for _o, n in pairs)
    for name in CARRIED:
        src, vs = eng.maps[name], eng.maps[name]._vbuf_size
        if nxt.maps[name]._vbuf_size != vs:
            continue   # another layout (an engine attached by an older bpfgate): the new slots start afresh
        raw = bytearray()
        for _k, vals, _n in src.lookup_batch_raw(chunk=_READ_CHUNK):   # the array in slot order
            raw += vals
            if len(raw) >= top * vs:
                break
        vals = b"".join([bytes(raw[o * vs:(o + 1) * vs]) for o, _n in pairs])
        nxt.maps[name].update_batch_raw(keys, vals, len(pairs))
