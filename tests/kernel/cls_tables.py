"""The engine's classifier entries as the kernel holds them: both maps (bg_cls, and bg_cls_short for the
shapes with BG_SHAPE_SHORT in their id), for tests that compare or inspect them."""

from __future__ import annotations

from bpfgate.policy import layout as L


def cls_entries(eng) -> dict[tuple[str, bytes], bytes]:
    """(map name, key as that map holds it) -> value, over both classifier maps of an engine."""
    return {(name, bytes(k)): bytes(v) for name in L.CLS_MAPS for k, v in eng.maps[name].lookup_batch()}
