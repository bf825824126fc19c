"""Shape planning: one shape = one mask over the key = one hash lookup per packet.

An atom (mask m, value v) can live in any shape whose mask M covers m: it becomes the 2^k entries that
fill in the k bits of M it leaves free (bits known to be zero excepted). Quantising prefix lengths is the
special case where M is a longer prefix. Greedy: start with one shape per distinct atom mask, then merge
the pair of shapes that adds the fewest entries, until at most max_shapes remain, and further while a
merge is cheap (one lookup less per packet is worth a few thousand entries).
"""

from __future__ import annotations

import heapq
from collections import Counter


def free_bits(shape_mask: int, atom_mask: int, zero: int) -> int:
    return shape_mask & ~atom_mask & ~zero


# src_cls and dst_cls in layout.key_int(): the data plane skips a shape keyed on a class for a packet whose
# class there is 0 (no prefix class), so an atom that does not key on that class never goes into such a shape
_CLS_FIELDS = (0xFFFFFFFF << 32, 0xFFFFFFFF)
NEVER = 1 << 80


def expansion(shape_mask: int, atom_mask: int, zero: int) -> int:
    for f in _CLS_FIELDS:
        if shape_mask & f and not atom_mask & f:
            return NEVER
    return 1 << free_bits(shape_mask, atom_mask, zero).bit_count()


def expand(value: int, free: int):
    """value with every combination of the free bits (subset enumeration)."""
    sub = 0
    while True:
        yield value | sub
        if sub == free:
            return
        sub = (sub - free) & free


def _cost(mask: int, hist: Counter) -> int:
    return sum(n * expansion(mask, am, z) for (am, z), n in hist.items())


class TooManyShapes(Exception):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def plan_shapes(hist: Counter, max_shapes: int, max_entries: int, cheap_merge: int = 4096) -> dict[int, int]:
    """hist: (atom mask, zero bits) -> atom count. Returns atom mask -> the mask of the shape it goes to."""
    plans: dict[int, Counter] = {}
    for (am, z), n in hist.items():
        plans.setdefault(am, Counter())[(am, z)] += n
    cost = {m: _cost(m, h) for m, h in plans.items()}
    members = {m: [m] for m in plans}
    total = sum(cost.values())
    heap = []

    def extra_of(a: int, b: int) -> int:
        merged = a | b
        third = merged in plans and merged not in (a, b)
        hist = plans[a] + plans[b] + (plans[merged] if third else Counter())
        return _cost(merged, hist) - cost[a] - cost[b] - (cost[merged] if third else 0)

    def push(a: int, b: int) -> None:
        heapq.heappush(heap, (extra_of(a, b), a, b))

    keys = list(plans)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            push(a, b)
    while heap and len(plans) > 1:
        extra, a, b = heapq.heappop(heap)
        if a not in plans or b not in plans:
            continue  # stale: one side was merged away
        if extra != (now := extra_of(a, b)):
            heapq.heappush(heap, (now, a, b))  # a shape it depends on changed since: re-rank
            continue
        if len(plans) <= max_shapes and extra > max(cheap_merge, total // 8):
            break
        merged = a | b
        hist = plans.pop(a) + plans.pop(b)
        absorbed = members.pop(a) + members.pop(b)
        if merged in plans:  # the union is an existing shape: fold into it (its pairs go stale with it)
            hist += plans.pop(merged)
            absorbed += members.pop(merged)
            cost.pop(merged)
        plans[merged], members[merged], cost[merged] = hist, absorbed, _cost(merged, hist)
        total += extra
        for other in plans:
            if other != merged:
                push(min(other, merged), max(other, merged))
    if len(plans) > max_shapes:
        raise TooManyShapes(f"the rules need more than {max_shapes} shapes (hash lookups per packet)")
    total = sum(cost[m] for m in plans)
    if total > max_entries:
        raise TooManyShapes(
            f"fitting the rules into {len(plans)} shapes needs {total} map entries (limit {max_entries}): the "
            f"rules combine too many different match fields / prefix lengths / port ranges; use fewer "
            f"combinations, align port ranges, or raise max_shapes (each shape costs one lookup per packet)")
    return {orig: m for m, origs in members.items() for orig in origs}
