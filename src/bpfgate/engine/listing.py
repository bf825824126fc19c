"""`rules` at scale: the rows saved beside an engine's state and the rules' counters, read without loading the
state, the models or the compiler (at 100k rules those imports alone are a third of a second)."""

from __future__ import annotations

import array
import ctypes
import operator
import os

from bpfgate.errors import BpfgateError
from bpfgate.kernel.maps import Map
from bpfgate.policy.hooks import DEFAULT_NAME, Hook

from . import records as R
from .paths import pin_dir
from .state import StateStore


def saved_listing(dev: str, hook: Hook, netns_name: str | None = None) -> tuple[str, list[tuple], dict] | None:
    """(default, rows as Engine.listing() gives them, counters) without loading the saved state, when the
    listing saved beside it is the whole running state (StateStore.current_listing); else None."""
    saved = StateStore(dev, hook, netns_name).current_listing()
    if saved is None:
        return None
    try:
        m = Map.from_pin(os.path.join(pin_dir(dev, hook, netns_name), "bg_counters"), ctypes.c_uint32)
    except BpfgateError:
        return None
    try:
        rows, (default, default_rid) = saved["rows"], saved["default"]
        ids = {rows[rid][0]: rid for rid in saved["order"]}
        ids[DEFAULT_NAME] = default_rid
        return default, [rows[rid] for rid in saved["order"]], read_counters(m, ids)
    except (KeyError, IndexError, TypeError, ValueError):   # a listing of another layout: load the state
        return None
    finally:
        m.close()


def read_counters(m: Map, ids: dict[str, int]) -> dict[str, R.Counter]:
    """Packets and bytes of the rules `ids` (name -> slot) in bg_counters, summed over the CPUs."""
    need = (max(ids.values()) + 1) * m._vbuf_size
    raw = bytearray()
    for _keys, vals, _n in m.lookup_batch_raw(chunk=1 << 14):   # the array in slot order, few syscalls
        raw += vals
        if len(raw) >= need:
            break
    slot, ncpu = m.slot_size, m._vbuf_size // m.slot_size
    if slot == R.COUNTER.size == 16 and R.COUNTER.format.lstrip("=<@") in ("QQ", "qq"):
        # records back to back, u64 packets then bytes, per slot one per CPU: sums over CPUs are strided
        # slices added at C speed (100k rules: ~10x faster than unpacking each record)
        words = array.array("Q", bytes(raw[:need]))
        stride = 2 * ncpu
        packets, nbytes = words[0::stride].tolist(), words[1::stride].tolist()
        for c in range(1, ncpu):
            packets = list(map(operator.add, packets, words[2 * c::stride]))
            nbytes = list(map(operator.add, nbytes, words[2 * c + 1::stride]))
    else:
        per_cpu = [R.COUNTER.unpack_from(raw, off) for off in range(0, need, slot)]
        packets = [sum(p for p, _b in per_cpu[i:i + ncpu]) for i in range(0, len(per_cpu), ncpu)]
        nbytes = [sum(b for _p, b in per_cpu[i:i + ncpu]) for i in range(0, len(per_cpu), ncpu)]
    return {name: R.Counter(name, packets[rid], nbytes[rid]) for name, rid in ids.items()}
