"""Stage 0 of the classifier: addresses -> prefix classes, so CIDR length mixes stop creating shapes.

Per tree (field x family) the compiler picks a set K of the policy's prefixes (the "class prefixes"). The
data plane maps an address to the class of the longest K prefix holding it (0: none) and puts it in the
key (src_cls/dst_cls). A rule prefix P in K then matches exactly the classes of the K prefixes nested in P:
one exact-match field, whatever P's length. Class ids follow K sorted by (address, length), so the
classes nested in P are one contiguous id range.

K leaves out prefixes holding more than CLASS_CAP policy prefixes (their rules would be replicated that
many times), prefixes shorter than MIN_CLASS_LEN, and lengths that do not fit the lookup structure below:
those stay raw address prefixes in the tuple space, always correct. Any K is correct: the longest K prefix
holding an address is nested in every K prefix holding it.

Lookup structure (what bpf/engine.bpf.c walks, bg_pfx_top + bg_pfx): level 0 is an array indexed by the
address's top 16 bits holding the class of the longest K prefix <= /16 there, a 32-bit map of the bucket's
sub-ranges (address bits 16..20) that hold a longer K prefix, and up to PFX_LENS longer lengths to probe
in a hash, longest first. A bucket with more lengths expands the prefixes of one length to the next
(cheapest first, at most MAX_EXPANSION entries a merge) or, failing that, leaves a length out of K.
"""

from __future__ import annotations

import array
import functools
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from . import layout as L

CLASS_CAP = 1024        # a class prefix holds at most this many policy prefixes (its rules' replication)
MIN_CLASS_LEN = 8       # shorter prefixes stay raw: as classes they would fill up to 65536 level-0 entries
PAIR_CAP = 4096         # a rule atom with both addresses as classes yields at most this many keys
MAX_EXPANSION = 4096    # entries one merge of a bucket's lengths may add to fit its PFX_LENS lengths
TOP = L.PFX_TOP_BITS
SUB_END = TOP + L.PFX_SUB_BITS
SUB_MASK = (1 << L.PFX_SUB_BITS) - 1
_HAVE, _FAMILY, _SRC, _DST = L.KEY_OFF["have"], L.KEY_OFF["family"], L.KEY_OFF["src"], L.KEY_OFF["dst"]
_CLS = struct.Struct("=II")   # src_cls, dst_cls: adjacent, at the end of the key
assert L.KEY_OFF["dst_cls"] == L.KEY_OFF["src_cls"] + 4 == L.KEY_SIZE - 4


def tree_of(field_name: str, version: int) -> int:
    return (L.TREE_SRC4 if field_name == "src" else L.TREE_DST4) + (version == 6)


@dataclass
class Tree:
    """One field x family: the class prefixes (value over `width` bits, length) and their lookup tables."""

    tree: int
    width: int
    prefixes: list[tuple[int, int]]                                     # K sorted; class id = index + 1
    top: dict[int, tuple[int, int, tuple[int, ...]]] = field(default_factory=dict)  # top16 -> (cls, sub, lens)
    pfx: dict[tuple[int, int], int] = field(default_factory=dict)                   # (value, len) -> cls
    nested: dict[tuple[int, int], range] = field(default_factory=dict)              # K prefix -> its classes

    def __post_init__(self):
        sizes = _subtree_sizes(self.prefixes, self.width)   # K sorted: a prefix's nested ones follow it
        self.nested = {p: range(i + 1, i + 1 + n) for i, (p, n) in enumerate(zip(self.prefixes, sizes))}

    def classes_in(self, value: int, plen: int) -> range | None:
        """Class ids of the K prefixes nested in (value, plen); None when that prefix is not in K (then it
        must stay a raw address prefix: the classes cannot express it)."""
        return self.nested.get((value, plen))

    def lookup(self, addr: int) -> int:
        """The data plane's walk (prefix_class() in bpf/engine.bpf.c), step for step."""
        w = self.width
        cls, sub, lens = self.top.get(addr >> (w - TOP), (0, 0, ()))
        if not (sub >> ((addr >> (w - SUB_END)) & SUB_MASK)) & 1:
            return cls
        for t in lens:
            hit = self.pfx.get((addr >> (w - t) << (w - t), t))
            if hit:
                return hit
        return cls


def _subtree_sizes(ps: list[tuple[int, int]], width: int) -> list[int]:
    """ps sorted by (value, len): how many of ps each one holds (itself included); a prefix's descendants
    follow it contiguously in this order."""
    size = [1] * len(ps)
    stack: list[int] = []
    for i, (v, n) in enumerate(ps):
        while stack:
            j = stack[-1]
            sv, sn = ps[j]
            if v >> (width - sn) == sv >> (width - sn):
                break
            size[j] = i - j
            stack.pop()
        stack.append(i)
    for j in stack:
        size[j] = len(ps) - j
    return size


def _fit_bucket(lengths: dict[int, int]) -> tuple[dict[int, int], set[int]]:
    """A bucket's long lengths (length -> prefix count) -> (length -> target length, lengths left out of
    K) with at most PFX_LENS targets: merge the length whose expansion to the next one costs least
    (<= MAX_EXPANSION entries), else leave out the length with the fewest prefixes."""
    target = {n: n for n in lengths}
    counts = dict(lengths)
    dropped: set[int] = set()
    while len(counts) > L.PFX_LENS:
        ls = sorted(counts)
        merges = [(counts[a] * ((1 << (b - a)) - 1), a, b) for a, b in zip(ls, ls[1:])
                  if b - a <= 16 and counts[a] << (b - a) <= MAX_EXPANSION]
        if merges:
            _cost, a, b = min(merges)
            counts[b] += counts.pop(a)
            for n, t in target.items():
                if t == a:
                    target[n] = b
        else:
            a = min(ls, key=lambda n: (counts[n], n))
            counts.pop(a)
            for n in [n for n, t in target.items() if t == a]:
                target.pop(n)
                dropped.add(n)
    return target, dropped


def build_tree(tree: int, width: int, candidates: set[tuple[int, int]]) -> Tree:
    ps = sorted(candidates)
    size = _subtree_sizes(ps, width)
    keep = [p for p, s in zip(ps, size) if s <= CLASS_CAP and p[1] >= MIN_CLASS_LEN]
    buckets: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for v, n in keep:
        if n > TOP:
            buckets[v >> (width - TOP)][n] += 1
    targets: dict[int, dict[int, int]] = {}
    dropped: set[tuple[int, int]] = set()   # (bucket, length) left out of K
    for b, lengths in buckets.items():
        targets[b], out = _fit_bucket(lengths)
        dropped.update((b, n) for n in out)
    if dropped:
        keep = [(v, n) for v, n in keep if (v >> (width - TOP), n) not in dropped]
    t = Tree(tree, width, keep)
    cls_at = [0] * (1 << TOP)
    for cid, (v, n) in sorted(enumerate(keep, 1), key=lambda e: e[1][1]):   # shortest first: longer overwrite
        if n <= TOP:
            lo = v >> (width - TOP)
            cls_at[lo:lo + (1 << (TOP - n))] = [cid] * (1 << (TOP - n))
        else:
            b = v >> (width - TOP)
            tl = targets[b][n]
            step = 1 << (width - tl)
            for e in range(1 << (tl - n)):
                t.pfx[(v + e * step, tl)] = cid
    subs: dict[int, int] = defaultdict(int)
    for v, n in keep:
        if n > TOP:
            first = (v >> (width - SUB_END)) & SUB_MASK
            span = 1 << max(SUB_END - n, 0)
            subs[v >> (width - TOP)] |= ((1 << span) - 1) << first
    for b in set(subs) | {i for i, c in enumerate(cls_at) if c}:
        lens = tuple(sorted(set(targets[b].values()), reverse=True)) if b in subs else ()
        t.top[b] = (cls_at[b], subs.get(b, 0), lens)
    return t


class Packed(NamedTuple):
    """The stage 0 map entries of one generation, packed for batch updates."""

    top_keys: bytes     # u32 indexes into bg_pfx_top
    top_vals: bytes     # struct bg_pfx_top each
    pfx_keys: bytes     # struct bg_pfx_key each
    pfx_vals: bytes     # u32 class ids

    @property
    def ntop(self) -> int:
        return len(self.top_keys) // 4

    @property
    def npfx(self) -> int:
        return len(self.pfx_vals) // 4


@dataclass
class Classes:
    """The class trees of one compiled hook, for generation `gen` (its slot gen & 1 in bg_pfx_top)."""

    trees: dict[int, Tree] = field(default_factory=dict)
    gen: int = 0

    @classmethod
    def of(cls, rules, gen: int = 0) -> "Classes":
        cands: dict[int, set] = defaultdict(set)
        for rule in rules:
            for fname in ("src", "dst"):
                for net in rule.matching(fname) or ():
                    cands[tree_of(fname, net.version)].add((int(net.network_address), net.prefixlen))
        return cls({t: build_tree(t, 128 if t & 1 else 32, c) for t, c in cands.items() if c}, gen)

    @property
    def bits(self) -> int:
        """bg_conf.trees: the trees the data plane must walk."""
        return sum(1 << t for t, tr in self.trees.items() if tr.prefixes)

    def classes_in(self, field_name: str, net) -> range | None:
        tr = self.trees.get(tree_of(field_name, net.version))
        return tr.classes_in(int(net.network_address), net.prefixlen) if tr else None

    def stamp(self, key: bytes) -> bytes:
        """A packet key with src_cls/dst_cls set as the data plane sets them."""
        if not self.bits or not key[_HAVE] & L.HAVE_L3:
            return key
        v6 = key[_FAMILY] == 6
        width = 128 if v6 else 32
        out = []
        for base, off in ((L.TREE_SRC4, _SRC), (L.TREE_DST4, _DST)):
            tr = self.trees.get(base + v6)
            out.append(tr.lookup(int.from_bytes(key[off:off + width // 8], "big")) if tr else 0)
        return key[:L.KEY_SIZE - _CLS.size] + _CLS.pack(*out)

    # ---- map contents ------------------------------------------------------------------------------
    @functools.cached_property
    def packed(self) -> Packed:
        """bg_pfx_top and bg_pfx entries of this generation (the compiler computes them once)."""
        top_keys, top_vals, pfx_keys, pfx_vals = array.array("I"), [], [], array.array("I")
        for t, tr in self.trees.items():
            base = ((self.gen & 1) * 4 + t) << TOP
            top_keys.extend(base | b for b in tr.top)
            top_vals += [L.PFX_TOP.pack(c, sub, len(lens), bytes(lens)) for c, sub, lens in tr.top.values()]
            shift = 128 - tr.width
            pfx_keys += [L.PFX_KEY.pack((v << shift).to_bytes(16, "big"), self.gen, t, n) for v, n in tr.pfx]
            pfx_vals.extend(tr.pfx.values())
        return Packed(top_keys.tobytes(), b"".join(top_vals), b"".join(pfx_keys), pfx_vals.tobytes())

    def pfx_count(self) -> int:
        return sum(len(t.pfx) for t in self.trees.values())
