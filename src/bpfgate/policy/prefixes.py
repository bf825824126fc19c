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
# Trees of a field that names a set store every prefix longer than /16 at a fixed ladder of lengths (a prefix
# between two rungs is expanded to the next one): a live set edit then never changes a bucket's lengths, and
# the lengths never pass PFX_LENS. A set element may expand to at most ELEMENT_EXPANSION entries; a rule's
# class prefix that would need more stays raw.
LADDER = {32: (20, 24, 28, 32), 128: (32, 40, 48, 56, 64, 96, 128)}
ELEMENT_EXPANSION = 4096
RUNG = {w: [next((r for r in ladder if r >= n), 0) for n in range(w + 1)] for w, ladder in LADDER.items()}
# (width, length) -> whether an element of that length fits the ladder
ELEMENT_OK = {(w, n): n <= 16 or 1 << (RUNG[w][n] - n) <= ELEMENT_EXPANSION for w in LADDER for n in range(w + 1)}
SET_BITS = 8            # at most this many sets per field (the top bits of the class id)
# every address gets this bit in a tree of a field naming sets (its level 0 is filled), so no address there
# has class 0, which the data plane reads as "no class" and skips the shapes keyed on it ("!@set" needs them)
PRESENT = 1 << (31 - SET_BITS)
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
    nested: dict[tuple[int, int], range] | None = field(default_factory=dict)       # K prefix -> its classes
    # ladder trees only (a field naming sets): set elements -> their set bits, and every prefix longer than
    # /16 (class prefixes and elements) by level-0 bucket, so an edit recomputes only its buckets
    ladder: tuple[int, ...] = ()
    elems: dict[tuple[int, int], int] = field(default_factory=dict)
    members: dict[int, set] = field(default_factory=dict)
    kid: dict[tuple[int, int], int] = field(default_factory=dict)   # class prefix -> its class id
    short: set = field(default_factory=set)   # prefixes of /16 and shorter (class prefixes and elements)

    def __post_init__(self):
        if self.nested is not None:   # None: the caller makes it (build_tree(), which has the sizes)
            self._nest()
        if self.ladder:
            self.kid = {p: i for i, p in enumerate(self.prefixes, 1)}

    def _nest(self, sizes: list[int] | None = None) -> dict[tuple[int, int], range]:
        # K sorted: a prefix's nested ones follow it
        sizes = sizes if sizes is not None else _subtree_sizes(self.prefixes, self.width)
        self.nested = {p: range(i + 1, i + 1 + n) for i, (p, n) in enumerate(zip(self.prefixes, sizes))}
        return self.nested

    def __getstate__(self) -> dict:
        # `nested` follows from `prefixes`: made again when first used (pickling 100k ranges took ~0.15 s of
        # saving a large policy's state, 3 MB of it)
        return {**self.__dict__, "nested": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # ---- ladder trees (a field naming sets) --------------------------------------------------------------
    @property
    def default_top(self):
        """The level-0 entry of a bucket without one (ladder trees: every bucket has its PRESENT bit)."""
        return (PRESENT, 0, ()) if self.ladder else (0, 0, ())

    def rung(self, n: int) -> int:
        return RUNG[self.width][n]

    def _bucket_of(self, v: int) -> int:
        return v >> (self.width - TOP)

    def _add_member(self, p: tuple[int, int]) -> None:
        if p[1] > TOP:
            self.members.setdefault(self._bucket_of(p[0]), set()).add(p)
        else:
            self.short.add(p)

    def _drop_member(self, p: tuple[int, int]) -> None:
        if p[1] > TOP:
            b = self._bucket_of(p[0])
            self.members[b].discard(p)
            if not self.members[b]:
                del self.members[b]
        else:
            self.short.discard(p)

    def buckets_of(self, v: int, n: int) -> range:
        lo = self._bucket_of(v)
        return range(lo, lo + (1 << max(TOP - n, 0)))

    def _chain(self, v: int, n: int) -> int:
        """class | set bits of the prefixes (v, n) and those holding it."""
        w, cid, bits = self.width, 0, 0
        for m in range(n + 1):
            p = (v >> (w - m) << (w - m) if m else 0, m)
            cid = self.kid.get(p, cid)
            bits |= self.elems.get(p, 0)
        return cid | bits

    def _bases(self, lo: int, hi: int) -> list[int]:
        """class | set bits that level 0 holds for the buckets lo..hi-1: the prefixes of /16 and shorter
        painted shortest first (a longer one's value includes the shorter ones holding it)."""
        out = [0] * (hi - lo)
        spans = []
        for v, n in self.short:
            a = self._bucket_of(v)
            b = a + (1 << (TOP - n))
            if a < hi and b > lo:
                spans.append((n, v, max(a, lo), min(b, hi)))
        for n, v, a, b in sorted(spans):
            out[a - lo:b - lo] = [self._chain(v, n)] * (b - a)
        return out

    def bucket(self, b: int, base: int = 0) -> tuple[tuple[int, int, tuple[int, ...]] | None, dict]:
        """Level-0 entry and bg_pfx entries of one bucket (`base`: its level-0 class | set bits, _bases()):
        a prefix's value is the class of the longest class prefix holding it (or itself) | the bits of the
        sets with an element holding it (or itself). The data plane returns the value of the longest one
        holding the address: that address's class and sets. Every value carries PRESENT."""
        w = self.width
        cid, bits = base & (PRESENT - 1), base & ~(PRESENT - 1) | PRESENT
        mem = self.members.get(b)
        if not mem:
            return ((cid | bits, 0, ()) if cid | bits != PRESENT else None), {}
        if len(mem) == 1:   # most buckets of a large set: one element, nothing to nest
            (v, n), = mem
            vals = [(n, v, self.kid.get((v, n), cid) | bits | self.elems.get((v, n), 0))]
        else:
            vals = self._nested_values(mem, cid, bits)
        out: dict[tuple[int, int], int] = {}
        sub = 0
        rung = RUNG[w]
        for n, v, val in sorted(vals):   # shorter first: a longer prefix's entries overwrite at the same rung
            _at_rung(out, v, n, rung[n], w, val)
            sub |= _sub_bits(v, n, w)
        return (cid | bits, sub, self.ladder_desc), out

    @functools.cached_property
    def ladder_desc(self) -> tuple[int, ...]:
        return tuple(reversed(self.ladder))

    def _nested_values(self, mem, cid: int, bits: int) -> list[tuple[int, int, int]]:
        w = self.width
        vals: list[tuple[int, int, int]] = []
        stack: list[tuple[int, int, int, int]] = []   # the chain holding the current prefix: (v, n, cid, bits)
        for v, n in sorted(mem):
            while stack and v >> (w - stack[-1][1]) != stack[-1][0] >> (w - stack[-1][1]):
                stack.pop()
            pc, pb = (stack[-1][2], stack[-1][3]) if stack else (cid, bits)
            c, bb = self.kid.get((v, n), pc), pb | self.elems.get((v, n), 0)
            stack.append((v, n, c, bb))
            vals.append((n, v, c | bb))
        return vals

    def _region(self, lo: int, hi: int) -> tuple[dict[int, tuple], dict]:
        """The level-0 entries (those not the default) and bg_pfx entries of buckets lo..hi-1."""
        tops, pfx = {}, {}
        bases = self._bases(lo, hi) if self.short else None
        buckets = range(lo, hi) if bases is not None else [b for b in range(lo, hi) if b in self.members]
        for b in buckets:
            top, entries = self.bucket(b, bases[b - lo] if bases is not None else 0)
            if top is not None:
                tops[b] = top
            pfx.update(entries)
        return tops, pfx

    def fill(self) -> None:
        """Compute the tables (a fresh tree)."""
        if self.short:
            self.top, self.pfx = self._region(0, 1 << TOP)
            return
        w, rung, kid, elems, desc = self.width, RUNG[self.width], self.kid, self.elems, self.ladder_desc
        top, pfx = self.top, self.pfx
        for b, mem in self.members.items():
            if len(mem) != 1:
                top[b], entries = self.bucket(b)
                pfx.update(entries)
                continue
            # bucket() of a bucket holding one prefix (most of a large set's), inline: ~2x faster at 100k
            (v, n), = mem
            _at_rung(pfx, v, n, rung[n], w, kid.get((v, n), 0) | PRESENT | elems.get((v, n), 0))
            top[b] = (PRESENT, _sub_bits(v, n, w), desc)

    def edit_element(self, p: tuple[int, int], bit: int, add: bool) -> tuple[dict, dict, set]:
        """Add or remove one element's set bit; the tables' changes: (level-0 entries by bucket (None: the
        default), bg_pfx entries to write, bg_pfx entries to delete)."""
        span = self.buckets_of(*p)
        lo, hi = span.start, span.stop
        otops, opfx = self._region(lo, hi)
        had = self.elems.get(p, 0)
        now = had | bit if add else had & ~bit
        if now:
            self.elems[p] = now
        else:
            self.elems.pop(p, None)
        in_before, in_after = bool(had) or p in self.kid, bool(now) or p in self.kid
        if in_after and not in_before:
            self._add_member(p)
        elif in_before and not in_after:
            self._drop_member(p)
        ntops, npfx = self._region(lo, hi)
        tops, writes, deletes = {}, {}, set()
        for b in otops.keys() | ntops.keys():
            if otops.get(b) != ntops.get(b):
                tops[b] = ntops.get(b)
                if b in ntops:
                    self.top[b] = ntops[b]
                else:
                    self.top.pop(b, None)
        for k, v in npfx.items():
            if opfx.get(k) != v:
                writes[k] = self.pfx[k] = v
        for k in opfx.keys() - npfx.keys():
            deletes.add(k)
            del self.pfx[k]
        return tops, writes, deletes

    def classes_in(self, value: int, plen: int) -> range | None:
        """Class ids of the K prefixes nested in (value, plen); None when that prefix is not in K (then it
        must stay a raw address prefix: the classes cannot express it)."""
        return (self.nested if self.nested is not None else self._nest()).get((value, plen))

    def lookup(self, addr: int) -> int:
        """The data plane's walk (prefix_class() in bpf/engine.bpf.c), step for step."""
        w = self.width
        cls, sub, lens = self.top.get(addr >> (w - TOP), self.default_top)
        if not (sub >> ((addr >> (w - SUB_END)) & SUB_MASK)) & 1:
            return cls
        for t in lens:
            hit = self.pfx.get((addr >> (w - t) << (w - t), t))
            if hit:
                return hit
        return cls


def sorted_prefixes(prefixes) -> list[tuple[int, int]]:
    """(value, length) pairs in (value, length) order: sorted on one integer each, ~1.5x faster than on the
    pairs (100k prefixes of a large policy)."""
    return sorted(prefixes, key=_prefix_order)


def _prefix_order(p: tuple[int, int]) -> int:
    return p[0] << 8 | p[1]   # lengths are below 256


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
    ps = sorted_prefixes(candidates)
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
    t = Tree(tree, width, keep, nested=None)
    t._nest(size if len(keep) == len(ps) else None)   # nothing left out: the sizes are those of ps
    cls_at = [0] * (1 << TOP)
    merged = any(n != tl for tg in targets.values() for n, tl in tg.items())
    # shortest first, longer overwrite: level 0 always, bg_pfx only when a bucket's lengths were merged (else
    # every class prefix is its own entry)
    for cid, (v, n) in sorted(((cid, p) for cid, p in enumerate(keep, 1) if merged or p[1] <= TOP),
                              key=lambda e: e[1][1]):
        if n <= TOP:
            lo = v >> (width - TOP)
            cls_at[lo:lo + (1 << (TOP - n))] = [cid] * (1 << (TOP - n))
        else:
            b = v >> (width - TOP)
            tl = targets[b][n]
            step = 1 << (width - tl)
            for e in range(1 << (tl - n)):
                t.pfx[(v + e * step, tl)] = cid
    if not merged:
        t.pfx = {p: cid for cid, p in enumerate(keep, 1) if p[1] > TOP}
    subs: dict[int, int] = defaultdict(int)
    for v, n in keep:
        if n > TOP:
            first = (v >> (width - SUB_END)) & SUB_MASK
            span = 1 << max(SUB_END - n, 0)
            subs[v >> (width - TOP)] |= ((1 << span) - 1) << first
    lens_of: dict[tuple, tuple[int, ...]] = {}   # a bucket's target lengths -> longest first (a few kinds)
    for b in set(subs) | {i for i, c in enumerate(cls_at) if c}:
        if b in subs:
            tls = tuple(targets[b].values())
            lens = lens_of.get(tls)
            if lens is None:
                lens = lens_of[tls] = tuple(sorted(set(tls), reverse=True))
        else:
            lens = ()
        t.top[b] = (cls_at[b], subs.get(b, 0), lens)
    return t


def _at_rung(out: dict, v: int, n: int, r: int, w: int, val: int) -> None:
    """Prefix (v, n)'s bg_pfx entries: itself at its rung r, or the /r prefixes it holds."""
    if r == n:
        out[(v, r)] = val
    else:
        step = 1 << (w - r)
        for e in range(1 << (r - n)):
            out[(v + e * step, r)] = val


def _sub_bits(v: int, n: int, w: int) -> int:
    """The level-0 entry's bits of the sub-ranges of its bucket that prefix (v, n) covers."""
    return ((1 << (1 << max(SUB_END - n, 0))) - 1) << ((v >> (w - SUB_END)) & SUB_MASK)


def build_ladder_tree(tree: int, width: int, candidates: set[tuple[int, int]], elems: dict) -> Tree:
    """A tree of a field naming sets: class prefixes as build_tree() picks them (less those the ladder would
    expand past ELEMENT_EXPANSION entries), the sets' elements beside them, every long prefix at its rung."""
    ladder = LADDER[width]
    ps = sorted_prefixes(candidates)
    size = _subtree_sizes(ps, width)
    keep = [p for p, s in zip(ps, size) if s <= CLASS_CAP and p[1] >= MIN_CLASS_LEN
            and (p[1] <= TOP or 1 << (next(r for r in ladder if r >= p[1]) - p[1]) <= ELEMENT_EXPANSION)]
    if len(keep) >= PRESENT:
        raise ValueError(f"{len(keep)} class prefixes leave no room for the sets' bits")
    t = Tree(tree, width, keep, ladder=ladder, elems=dict(elems))
    members: dict[int, set] = defaultdict(set)
    shift = width - TOP
    for p in {*keep, *elems}:
        if p[1] > TOP:
            members[p[0] >> shift].add(p)
        else:
            t.short.add(p)
    t.members = dict(members)
    t.fill()
    return t


def element_problem(net) -> str | None:
    """Why an address can not be a set element (its expansion to the ladder), or None."""
    n, w = net.prefixlen, net.max_prefixlen
    if ELEMENT_OK[(w, n)]:
        return None
    ladder, r = LADDER[w], RUNG[w][n]
    if 1 << (r - n) > ELEMENT_EXPANSION:
        return (f"a /{n} set element is stored as {1 << (r - n):,} /{r} entries (more than {ELEMENT_EXPANSION:,}); "
                f"set elements are kept at /{', /'.join(map(str, ladder))}: split it or use one of those lengths")
    return None


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
class StageEdit:
    """Stage 0 writes of a live set edit, in this order: bg_pfx entries written (new ones before the level-0
    entries that send packets to them), level-0 entries, then bg_pfx entries deleted."""

    pfx_update: dict[bytes, int] = field(default_factory=dict)
    top: dict[int, bytes] = field(default_factory=dict)
    pfx_delete: list[bytes] = field(default_factory=list)

    def writes(self) -> int:
        return len(self.pfx_update) + len(self.top) + len(self.pfx_delete)


@dataclass
class Classes:
    """The class trees of one compiled hook, for generation `gen` (its slot gen & 1 in bg_pfx_top)."""

    trees: dict[int, Tree] = field(default_factory=dict)
    gen: int = 0
    set_bits: dict[str, dict[str, int]] = field(default_factory=dict)   # field -> set name -> its class bit

    @classmethod
    def of(cls, rules, gen: int = 0, sets=None) -> "Classes":
        """sets: name -> elements of the address sets the rules may name, as (version, value, length) keys
        (SetState.keys)."""
        cands: dict[int, set] = defaultdict(set)
        named: dict[str, set] = defaultdict(set)
        src4, src6, dst4, dst6 = (cands[t] for t in (L.TREE_SRC4, L.TREE_SRC6, L.TREE_DST4, L.TREE_DST6))
        for rule in rules:
            src, dst = rule.matching_negatable()[:2]
            for fname, v, v4, v6 in (("src", src, src4, src6), ("dst", dst, dst4, dst6)):
                if isinstance(v, tuple):
                    for net in v:
                        (v4 if net.version == 4 else v6).add((int(net.network_address), net.prefixlen))
                elif v is not None:   # a SetRef
                    named[fname].add(v.name)
        set_bits = {f: {name: 1 << (31 - i) for i, name in enumerate(sorted(names))} for f, names in named.items()}
        for f, bits in set_bits.items():
            if len(bits) > SET_BITS:
                raise ValueError(f"{f}: the rules name {len(bits)} sets there (at most {SET_BITS} per field)")
        trees = {}
        for t, c in cands.items():
            if c and ("src" if t in (L.TREE_SRC4, L.TREE_SRC6) else "dst") not in set_bits:
                trees[t] = build_tree(t, 128 if t & 1 else 32, c)
        for f, bits in set_bits.items():
            elems: dict[int, dict] = {tree_of(f, 4): {}, tree_of(f, 6): {}}
            for name, bit in bits.items():
                for version, value, plen in (sets or {}).get(name, ()):
                    e = elems[tree_of(f, version)]
                    p = (value, plen)
                    e[p] = e.get(p, 0) | bit
            for t, e in elems.items():
                trees[t] = build_ladder_tree(t, 128 if t & 1 else 32, cands.get(t, set()), e)
        return cls(trees, gen, set_bits)

    @property
    def bits(self) -> int:
        """bg_conf.trees: the trees the data plane must walk (a tree of a field naming sets even while empty:
        a live edit may fill it)."""
        return sum(1 << t for t, tr in self.trees.items() if tr.prefixes or tr.ladder)

    def kmask(self, field_name: str) -> int:
        """The class id bits that hold the class (the others: set bits and PRESENT)."""
        bits = self.set_bits.get(field_name)
        return 0xFFFFFFFF & ~sum(bits.values()) & ~PRESENT if bits else 0xFFFFFFFF

    def set_bit(self, field_name: str, name: str) -> int | None:
        return self.set_bits.get(field_name, {}).get(name)

    def edit_element(self, name: str, net, add: bool) -> "StageEdit":
        """Add/remove an address element of set `name` in every field naming the set: the stage 0 writes."""
        out = StageEdit()
        for f in ("src", "dst"):
            bit = self.set_bit(f, name)
            if bit is None:
                continue
            t = tree_of(f, net.version)
            tr = self.trees[t]
            tops, writes, deletes = tr.edit_element((int(net.network_address), net.prefixlen), bit, add)
            base = ((self.gen & 1) * 4 + t) << TOP
            shift = 128 - tr.width
            for b, top in tops.items():
                top = top or tr.default_top
                out.top[base | b] = L.PFX_TOP.pack(top[0], top[1], len(top[2]), bytes(top[2]))
            for (v, n), val in writes.items():
                out.pfx_update[L.PFX_KEY.pack((v << shift).to_bytes(16, "big"), self.gen, t, n)] = val
            for v, n in deletes:
                out.pfx_delete.append(L.PFX_KEY.pack((v << shift).to_bytes(16, "big"), self.gen, t, n))
        self.__dict__.pop("packed", None)   # the generation's entries changed
        return out

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
            if tr.ladder:   # the buckets without an entry of their own: PRESENT
                rest = [b for b in range(1 << TOP) if b not in tr.top]
                top_keys.extend(base | b for b in rest)
                top_vals.append(L.PFX_TOP.pack(PRESENT, 0, 0, b"") * len(rest))
            shift = 128 - tr.width
            pfx_keys += [L.PFX_KEY.pack((v << shift).to_bytes(16, "big"), self.gen, t, n) for v, n in tr.pfx]
            pfx_vals.extend(tr.pfx.values())
        return Packed(top_keys.tobytes(), b"".join(top_vals), b"".join(pfx_keys), pfx_vals.tobytes())

    def pfx_count(self) -> int:
        return sum(len(t.pfx) for t in self.trees.values())
