"""Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights: the lookup table of a load-balanced
service, and how much of it a change moves. Pure: no kernel.

    table = build([("b1", 1), ("b2", 3)], size=65537)   # slot -> backend name (every slot filled)
    moved = disruption(old, new)                        # share of slots whose backend changed

Each backend walks its own permutation of the slots (offset and skip from a hash of its name, so a backend
keeps its preferences whatever else changes) and takes the next free slot on its turn. Weights: in each
round a backend takes a turn only when its share of the rounds so far is behind weight / max weight, so
slot counts follow the weights (any positive integers; they need not sum to anything).
"""

from __future__ import annotations

import hashlib

DEFAULT_SIZE = 65537
MAX_SIZE = 1_048_573   # the largest prime below the kernel table's default capacity (2^20 slots)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def _hashes(name: str) -> tuple[int, int]:
    d = hashlib.blake2b(name.encode(), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def build(backends: list[tuple[str, int]], size: int = DEFAULT_SIZE) -> list[str | None]:
    """The table: `size` slots (a prime), each the name of a backend; all None without backends (or with only
    weight-0, i.e. drained, ones)."""
    live = [(n, w) for n, w in backends if w > 0]
    table: list[str | None] = [None] * size
    if not live:
        return table
    n = len(live)
    offset, skip, nxt = [0] * n, [0] * n, [0] * n
    for i, (name, _) in enumerate(live):
        h1, h2 = _hashes(name)
        offset[i] = h1 % size
        skip[i] = h2 % (size - 1) + 1
    wmax = max(w for _, w in live)
    weights = [w for _, w in live]
    credit = [0] * n
    names = [name for name, _ in live]
    filled = 0
    while True:
        for i in range(n):
            credit[i] += weights[i]
            if credit[i] < wmax:
                continue
            credit[i] -= wmax
            off, sk, j = offset[i], skip[i], nxt[i]
            c = (off + j * sk) % size
            while table[c] is not None:
                j += 1
                c = (off + j * sk) % size
            nxt[i] = j + 1
            table[c] = names[i]
            filled += 1
            if filled == size:
                return table


def disruption(old: list[str | None], new: list[str | None]) -> float:
    """Share of slots (0..1) whose backend differs between two tables of one size."""
    if len(old) != len(new):
        return 1.0 if old or new else 0.0
    if not old:
        return 0.0
    return sum(1 for a, b in zip(old, new) if a != b) / len(old)


def shares(table: list[str | None]) -> dict[str, float]:
    """backend -> share of the slots it holds."""
    out: dict[str, int] = {}
    for b in table:
        if b is not None:
            out[b] = out.get(b, 0) + 1
    return {b: c / len(table) for b, c in out.items()}
