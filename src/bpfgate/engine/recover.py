"""Bring an engine's maps back to its saved state after an edit or swap was cut short (kill -9, a failed
batch write): the kernel must hold exactly what the state store says, or a later swap into the same
generation would run on top of stale entries (rules slots the policy does not own, wrong prefix classes).

How a cut-short edit is noticed: every edit writes a marker next to the saved state before its first
kernel write and removes it once the new state is saved (StateStore.begin_write / end_write); an engine
opened with the marker present, or whose published bg_conf is not the saved one, is repaired here before
anything reads or changes it. Repair is a full comparison (bg_cls and bg_pfx scanned, the whole bg_pfx_top
array read): it runs only after a crash, and costs about what loading the snapshot costs (measured with 65k
bg_cls + 65k bg_pfx stale entries on a loaded 2-core VM: repair 6-11 s, the snapshot load itself 11-19 s).

Order (every step leaves a classifier packets can use): the saved generation is written whole (its rule
slots, stage 0 tables, bg_cls entries), its bg_conf is published, then every entry the saved state does not
hold is deleted (the other generation, and anything stale in the saved one).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from bpfgate import contract
from bpfgate.policy import layout as L

if TYPE_CHECKING:
    from .engine import Engine

_CHUNK = 1 << 14


def published_conf(eng: Engine) -> bytes | None:
    """The bg_conf the data plane reads now (raw), None when bg_active points nowhere readable."""
    slot = eng.maps["bg_active"].lookup(0)
    return _lookup_raw(eng.maps["bg_conf"], int(slot or 0))


def in_step(eng: Engine) -> bool:
    """Whether the published bg_conf is the saved state's (cheap: two lookups). Shapes' entry counts are
    informational: a live edit does not republish bg_conf for them."""
    live, raw = eng.live, published_conf(eng)
    return live is not None and raw is not None and _meaning(raw) == _meaning(live.conf.pack())


_CONF_C, _SHAPE_C = contract.struct("engine", "bg_conf"), contract.struct("engine", "bg_shape")
_HDR, _SHAPE = _CONF_C.shapes.offset, ctypes.sizeof(_SHAPE_C)
# informational (entries) or a hint each writer computes from the entries it wrote (the filter: a superset
# of their bits, so any one of them is right for the same entries)
_IGNORED = [(getattr(_SHAPE_C, f).offset, getattr(_SHAPE_C, f).size) for f in ("entries", "filtered", "fmask", "filter")]
_PROTOS = (_CONF_C.tree_protos.offset, _CONF_C.tree_protos.size)   # a hint as the filter is


def _meaning(conf: bytes) -> bytes:
    b = bytearray(conf)
    b[_PROTOS[0]:_PROTOS[0] + _PROTOS[1]] = bytes(_PROTOS[1])
    for i in range(L.MAX_SHAPES):
        for off, size in _IGNORED:
            at = _HDR + i * _SHAPE + off
            b[at:at + size] = bytes(size)
    return bytes(b)


def repair(eng: Engine) -> dict[str, int]:
    """Make the kernel hold exactly the saved state (eng.live). Returns how many stale entries went per map."""
    live = eng._live()
    c = live.c
    eng._write_rules(c.rules, fresh=False)          # records of the owned slots; counters kept
    eng._write_classes(c)
    eng._write_cls(c.cls)
    eng._publish(live.conf)
    wide, short, direct = L.split_keys(c.cls)
    gone = {"bg_cls": _delete_others(eng.maps["bg_cls"], set(wide)),
            "bg_cls_short": _delete_others(eng.maps["bg_cls_short"], set(short)),
            "bg_cls_direct": _zero_others(eng.maps["bg_cls_direct"], set(memoryview(b"".join(direct)).cast("I")))}
    p = c.classes.packed
    size = len(p.pfx_keys) // p.npfx if p.npfx else 0
    gone["bg_pfx"] = _delete_others(eng.maps["bg_pfx"], {p.pfx_keys[i:i + size]
                                                         for i in range(0, len(p.pfx_keys), size or 1)})
    gone["bg_pfx_top"] = _zero_others(eng.maps["bg_pfx_top"], set(memoryview(p.top_keys).cast("I")))
    return gone


def _lookup_raw(m, index: int) -> bytes | None:
    val = m.lookup(index)
    return None if val is None else bytes(val)


def _delete_others(m, keep: set[bytes]) -> int:
    stale = []
    ksz = ctypes.sizeof(m.key_type)
    for kraw, _v, n in m.lookup_batch_raw(_CHUNK):
        stale += [k for k in (kraw[i * ksz:(i + 1) * ksz] for i in range(n)) if k not in keep]
    for i in range(0, len(stale), _CHUNK):
        m.delete_batch(stale[i:i + _CHUNK])
    return len(stale)


def _zero_others(m, keep: set[int]) -> int:
    """Zero every slot of an array (bg_pfx_top, bg_cls_direct) holding something the saved state does not
    (arrays cannot delete)."""
    zero = bytes(m._vbuf_size)
    stale = []
    for kraw, vraw, n in m.lookup_batch_raw(1 << 16):
        idx = memoryview(kraw).cast("I")
        vs = m._vbuf_size
        stale += [idx[i] for i in range(n) if idx[i] not in keep and vraw[i * vs:(i + 1) * vs] != zero]
    if stale:
        keys = memoryview(bytearray(len(stale) * 4)).cast("I")
        for i, k in enumerate(stale):
            keys[i] = k
        m.update_batch_raw(keys.tobytes(), zero * len(stale), len(stale))
    return len(stale)

