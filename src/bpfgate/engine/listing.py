"""`rules` at scale: the rows saved beside an engine's state and the rules' counters, read without loading the
state, the models or the compiler (at 100k rules those imports alone are a third of a second).

The rows are kept as columns (slot, name, action, match text; options, owner and comment only for the
rules that have any): 100k rows load in ~20 ms instead of ~120 ms as tuples. Live edits journaled since the
rows were saved are replayed onto them from the journal (each line names the slots its rules took), so the
first listing after an edit does not load the state either."""

from __future__ import annotations

import array
import ctypes
import operator
import os

from bpfgate.errors import BpfgateError
from bpfgate.kernel.maps import Map
from bpfgate.policy.hooks import Hook

from . import records as R
from .paths import pin_dir
from .state import StateStore

_PLAIN = ({}, None, None)   # the options, owner and comment of a rule that has none (never handed out)


def _lines(column: list[str]) -> str | list[str]:
    """A column of text as one string of lines when no item holds a line break: a pickle of it is one object,
    not one memo entry each (at 100k rows: a ~8 MB memo table while the rows are saved)."""
    text = "\n".join(column)
    return text if column and text.count("\n") == len(column) - 1 else column


def _unlines(column: str | list, few: bool = False) -> list:
    """A column saved by _lines(); `few`: its items take a few values (actions), each kept as one str."""
    if not isinstance(column, str):
        return column
    items = column.split("\n")
    if few:   # 100k rows of "drop": one object, not 100k (~5 MB)
        seen: dict[str, str] = {}
        items = [seen.setdefault(x, x) for x in items]
    return items


def _has_more(row: tuple) -> bool:
    """Whether a row has options, an owner or a comment (kept in Listing.more)."""
    return bool(row[3]) or row[4] is not None or row[5] is not None


class Listing:
    """One hook's rules as `bpfgate rules` lists them (policy.listed.data_row), in order, as columns."""

    __slots__ = ("default", "default_rid", "rids", "names", "actions", "matches", "more")

    def __init__(self, default: str, default_rid: int, rids: list[int], names: list[str], actions: list[str],
                 matches: list[str], more: dict[int, tuple]):
        self.default, self.default_rid = default, default_rid
        self.rids, self.names, self.actions, self.matches = rids, names, actions, matches
        self.more = more   # slot -> (options, owner, comment), only where any is set

    @classmethod
    def of_rows(cls, default: str, default_rid: int, rids: list[int], rows: list[tuple]) -> "Listing":
        more = {rid: tuple(r[3:]) for rid, r in zip(rids, rows) if _has_more(r)}
        return cls(default, default_rid, list(rids), [r[0] for r in rows], [r[1] for r in rows],
                   [r[2] for r in rows], more)

    def __len__(self) -> int:
        return len(self.rids)

    def slots(self) -> int:
        """How many counter slots the rules use (their highest slot, the default's included, plus one)."""
        return max(self.rids + [self.default_rid]) + 1

    def row(self, i: int) -> tuple:
        extra, owner, comment = self.more.get(self.rids[i], _PLAIN)
        return self.names[i], self.actions[i], self.matches[i], dict(extra), owner, comment

    def rows(self) -> list[tuple]:
        return [self.row(i) for i in range(len(self.rids))]

    def by_rid(self) -> dict[int, tuple]:
        return {rid: self.row(i) for i, rid in enumerate(self.rids)}

    def to_state(self) -> dict:
        return {"default": (self.default, self.default_rid), "rids": self.rids, "names": _lines(self.names),
                "actions": _lines(self.actions), "matches": _lines(self.matches), "more": self.more}

    @classmethod
    def from_state(cls, d: dict) -> "Listing":
        default, default_rid = d["default"]
        cols = [_unlines(d[k], few=k == "actions") for k in ("rids", "names", "actions", "matches")]
        if not all(isinstance(c, list) and len(c) == len(cols[0]) for c in cols) or not isinstance(d["more"], dict):
            raise ValueError("not a listing")
        return cls(default, default_rid, *cols, d["more"])

    # ---- journal replay ---------------------------------------------------------------------------
    def replay(self, records: list[dict]) -> bool:
        """Make the rows those of the state after the journal's edits `records` (as StateStore.journal wrote
        them). False when a record does not say the slots its rules took (a line of an older bpfgate): the
        rows are then left part-way and must not be used."""
        from bpfgate.policy.listed import data_row

        for rec in records:
            op = rec.get("op")
            edits = rec.get("edits", ()) if op == "batch" else (rec,) if op in ("add", "delete", "replace") else ()
            slots = rec.get("slots")
            if edits and op != "delete" and not isinstance(slots, dict):
                return False
            for e in edits:
                eop = e.get("op")
                if eop == "delete":
                    self._remove(self.names.index(e["name"]))
                elif eop in ("add", "replace"):
                    row = data_row(e["rule"])
                    if eop == "replace":
                        i = self.names.index(e["name"])
                        self._remove(i)
                    else:
                        n, pos = len(self.rids), e.get("position")
                        i = n if pos is None else max(0, min(pos, n))
                    rid = slots.get(row[0])
                    if not isinstance(rid, int):
                        return False
                    self._insert(i, rid, row)
                else:
                    return False
        return True

    def _remove(self, i: int) -> None:
        self.more.pop(self.rids[i], None)
        for col in (self.rids, self.names, self.actions, self.matches):
            del col[i]

    def _insert(self, i: int, rid: int, row: tuple) -> None:
        for col, v in ((self.rids, rid), (self.names, row[0]), (self.actions, row[1]), (self.matches, row[2])):
            col.insert(i, v)
        if _has_more(row):
            self.more[rid] = tuple(row[3:])


def saved_listing(dev: str, hook: Hook, netns_name: str | None = None) -> tuple[Listing, list[int], list[int]] | None:
    """(the running rules, packets and bytes by slot) without loading the saved state, when the listing saved
    beside it and the journal since make the whole running state (StateStore.current_listing); else None."""
    listing = StateStore(dev, hook, netns_name).current_listing()
    if listing is None:
        return None
    try:
        m = Map.from_pin(os.path.join(pin_dir(dev, hook, netns_name), "bg_counters"), ctypes.c_uint32)
    except BpfgateError:
        return None
    try:
        packets, nbytes = counter_columns(m, listing.slots())
    except IndexError:   # slots past the map: not this engine's listing
        return None
    finally:
        m.close()
    return listing, packets, nbytes


def counter_columns(m: Map, nslots: int) -> tuple[list[int], list[int]]:
    """Packets and bytes of slots 0..nslots-1 of bg_counters, summed over the CPUs."""
    need = nslots * m._vbuf_size
    raw = bytearray()
    for _keys, vals, _n in m.lookup_batch_raw(chunk=1 << 14):   # the array in slot order, few syscalls
        raw += vals
        if len(raw) >= need:
            break
    if len(raw) < need:
        raise IndexError("bg_counters holds fewer slots than the rules use")
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
        return packets, nbytes
    per_cpu = [R.COUNTER.unpack_from(raw, off) for off in range(0, need, slot)]
    return ([sum(p for p, _b in per_cpu[i:i + ncpu]) for i in range(0, len(per_cpu), ncpu)],
            [sum(b for _p, b in per_cpu[i:i + ncpu]) for i in range(0, len(per_cpu), ncpu)])


def read_counters(m: Map, ids: dict[str, int]) -> dict[str, R.Counter]:
    """Packets and bytes of the rules `ids` (name -> slot) in bg_counters, summed over the CPUs."""
    packets, nbytes = counter_columns(m, max(ids.values()) + 1)
    return {name: R.Counter(name, packets[rid], nbytes[rid]) for name, rid in ids.items()}
