"""Shape planning: group atoms by mask, then widen prefix lengths until the number of shapes fits.

A shape is one mask over the classifier key = one hash lookup per packet. Atoms whose exact-match fields
are the same (Fixed.sig) but whose prefix lengths differ can share a shape whose lengths are the maximum
of theirs; each atom is then expanded into 2^(extra bits) entries. Greedy: merge the pair of shapes that
adds the fewest entries until at most max_shapes remain (tuple-space search with quantised prefixes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

Lengths = tuple[int, int, int, int]   # src, dst, sport, dport prefix lengths
Widths = tuple[int, int]              # src, dst address widths (32 or 128)


def expansion(lens: Lengths, widths: Widths, q: Lengths) -> int:
    """Entries one atom with prefix lengths `lens` becomes in a shape with lengths `q` (>= lens)."""
    (ls, ld, lsp, ldp), (ws, wd) = lens, widths
    bits = max(min(q[0], ws) - ls, 0) + max(min(q[1], wd) - ld, 0) + (q[2] - lsp) + (q[3] - ldp)
    return 1 << bits


@dataclass
class Plan:
    sig: tuple
    lengths: Lengths
    hist: Counter = field(default_factory=Counter)   # (lens, widths) -> atoms

    def cost(self, q: Lengths | None = None) -> int:
        q = q or self.lengths
        return sum(n * expansion(lens, w, q) for (lens, w), n in self.hist.items())


def _merged(a: Plan, b: Plan) -> Plan:
    q = tuple(max(x, y) for x, y in zip(a.lengths, b.lengths))
    return Plan(a.sig, q, a.hist + b.hist)


class TooManyShapes(Exception):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def plan_shapes(hist: Counter, max_shapes: int, max_entries: int, cheap_merge: int = 4096) -> dict[tuple, Plan]:
    """hist: (sig, lens, widths) -> atom count. Returns (sig, lens) -> the Plan that holds those atoms.

    Merges until at most max_shapes remain, and beyond that while a merge is cheap (adds at most
    max(cheap_merge, total/8) entries): one lookup less per packet is worth a few thousand entries."""
    plans: dict[tuple, Plan] = {}
    for (sig, lens, widths), n in hist.items():
        plans.setdefault((sig, lens), Plan(sig, lens)).hist[(lens, widths)] += n
    members = {k: [k] for k in plans}                  # plan key -> the (sig, lens) it absorbed
    n_sigs = len({sig for sig, _ in plans})
    if n_sigs > max_shapes:
        raise TooManyShapes(
            f"the rules use {n_sigs} different combinations of match fields; at most {max_shapes} shapes "
            f"(hash lookups per packet) are allowed: use fewer field combinations or raise max_shapes")
    pair_cost: dict[tuple, int] = {}
    total = sum(p.cost() for p in plans.values())
    while len(plans) > 1:
        best = None
        keys = list(plans)
        for i, ka in enumerate(keys):
            for kb in keys[i + 1:]:
                if ka[0] != kb[0]:
                    continue
                pk = (ka, kb)
                if pk not in pair_cost:
                    a, b = plans[ka], plans[kb]
                    pair_cost[pk] = _merged(a, b).cost() - a.cost() - b.cost()
                if best is None or pair_cost[pk] < best[0]:
                    best = (pair_cost[pk], ka, kb)
        if best is None:
            break
        cost, ka, kb = best
        if len(plans) <= max_shapes and cost > max(cheap_merge, total // 8):
            break
        total += cost
        m = _merged(plans.pop(ka), plans.pop(kb))
        mk = (m.sig, m.lengths)
        absorbed = members.pop(ka) + members.pop(kb)
        if mk in plans:  # the widened shape already exists: fold into it
            m = Plan(m.sig, m.lengths, m.hist + plans.pop(mk).hist)
            absorbed += members.pop(mk)
        plans[mk], members[mk] = m, absorbed
        pair_cost = {k: v for k, v in pair_cost.items() if not ({k[0], k[1]} & {ka, kb, mk})}
    if total > max_entries:
        raise TooManyShapes(
            f"fitting the rules into {len(plans)} shapes needs {total} map entries (limit {max_entries}): "
            f"prefix lengths / port ranges are too varied; use fewer distinct prefix lengths, align port "
            f"ranges, or raise max_shapes / max_entries")
    return {orig: plans[k] for k, origs in members.items() for orig in origs}
