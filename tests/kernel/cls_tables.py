"""The engine's classifier entries as the kernel holds them: every map (bg_cls, bg_cls_short for the shapes
with BG_SHAPE_SHORT in their id, the array bg_cls_direct for the BG_SHAPE_DIRECT shape's keys that fit it),
for tests that compare or inspect them."""

from __future__ import annotations

from bpfgate.policy import layout as L


def cls_entries(eng) -> dict[tuple[str, bytes], bytes]:
    """(map name, key as that map holds it) -> value, over the classifier maps of an engine (bg_cls_direct:
    its slots holding an entry, the index as 4 bytes)."""
    out = {(name, bytes(k)): bytes(v) for name in L.CLS_MAPS for k, v in eng.maps[name].lookup_batch()}
    m = eng.maps["bg_cls_direct"]
    for kraw, vraw, n in m.lookup_batch_raw(1 << 16):
        for i in range(n):
            v = vraw[i * L.VAL.size:(i + 1) * L.VAL.size]
            if any(v):
                out["bg_cls_direct", kraw[i * 4:(i + 1) * 4]] = v
    return out
