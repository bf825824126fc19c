"""Stage 0 (policy/prefixes.py): the class walk finds the longest class prefix, class ranges are exactly
the nested class prefixes, and compiled policies using classes classify like the rules say."""

from __future__ import annotations

import ipaddress
import pickle
import random

import pytest

from bpfgate.policy import layout as L
from bpfgate.policy import prefixes as P
from bpfgate.policy.classify import Reference, naive
from bpfgate.policy.compile import compile_hook
from bpfgate.policy.model import Hook, HookPolicy, Rule
from bpfgate.policy.packet import Packet


def random_prefixes(rng: random.Random, width: int, n: int, buckets: int) -> set[tuple[int, int]]:
    """n prefixes of every length crowded into a few top-16 buckets (forces bucket fitting) plus some
    spread ones."""
    tops = [rng.getrandbits(16) for _ in range(buckets)]
    out = set()
    while len(out) < n:
        plen = rng.randint(0, width)
        addr = (rng.choice(tops) << (width - 16) | rng.getrandbits(width - 16)) if rng.random() < 0.8 \
            else rng.getrandbits(width)
        out.add((addr >> (width - plen) << (width - plen) if plen else 0, plen))
    return out


def contains(p: tuple[int, int], addr: int, width: int) -> bool:
    v, n = p
    return addr >> (width - n) == v >> (width - n) if n else True


def near(rng: random.Random, ps: list, width: int) -> int:
    v, n = rng.choice(ps)
    a = v | (rng.getrandbits(width - n) if n < width else 0)
    return (a + rng.choice([0, 0, 0, 1, -1])) % (1 << width)


@pytest.mark.parametrize("width, seed", [(32, 0), (32, 1), (128, 2), (128, 3)])
def test_walk_finds_the_longest_class_prefix(width, seed):
    rng = random.Random(seed)
    cands = random_prefixes(rng, width, 600, buckets=4)
    tree = P.build_tree(L.TREE_SRC6 if width == 128 else L.TREE_SRC4, width, cands)
    k = tree.prefixes
    assert k and all(n >= P.MIN_CLASS_LEN for _v, n in k)
    assert any(len(lens) == L.PFX_LENS for _c, _s, lens in tree.top.values())   # crowded buckets were fitted
    assert all(len(lens) <= L.PFX_LENS for _c, _s, lens in tree.top.values())
    by_len = sorted(range(len(k)), key=lambda i: -k[i][1])
    for _ in range(4000):
        a = near(rng, sorted(cands), width)
        want = next((i + 1 for i in by_len if contains(k[i], a, width)), 0)
        assert tree.lookup(a) == want, (hex(a), want)


@pytest.mark.parametrize("width", [32, 128])
def test_class_ranges_are_the_nested_class_prefixes(width):
    rng = random.Random(width)
    cands = random_prefixes(rng, width, 400, buckets=3)
    built = P.build_tree(0, width, cands)
    tree = pickle.loads(pickle.dumps(built))   # a saved state: its class ranges are made again when first used
    assert tree.nested is None and tree.prefixes == built.prefixes
    k = set(tree.prefixes)
    for v, n in cands:
        got = tree.classes_in(v, n)
        assert got == built.classes_in(v, n)
        if (v, n) not in k:
            assert got is None
            continue
        nested = {i + 1 for i, (qv, qn) in enumerate(tree.prefixes) if qn >= n and contains((v, n), qv, width)}
        assert set(got) == nested


def test_wide_prefix_over_many_stays_raw_and_classifies_right():
    """A /8 holding more than CLASS_CAP policy prefixes is not a class (its rule would be replicated that
    often): it stays a raw prefix in its own shape; verdicts still follow the rules."""
    rng = random.Random(7)
    hosts = sorted({rng.getrandbits(24) for _ in range(P.CLASS_CAP + 100)})
    rules = [Rule(name=f"h{i}", src=str(ipaddress.IPv4Address((10 << 24) | h)), protocol="tcp", action="drop")
             for i, h in enumerate(hosts[:200])]
    rules.append(Rule(name="wide", src="10.0.0.0/8", action="pass"))
    rules += [Rule(name=f"g{i}", src=str(ipaddress.IPv4Address((10 << 24) | h)), action="drop")
              for i, h in enumerate(hosts[200:])]
    hp = HookPolicy(default="deny", rules=tuple(rules))
    c = compile_hook(hp, Hook.TC_INGRESS)
    assert c.classes.classes_in("src", ipaddress.ip_network("10.0.0.0/8")) is None
    raw = [s for s in c.conf().shapes if any(s.mask[16:20])]
    assert len(raw) == 1 and raw[0].entries == 1   # the /8 alone, as a raw prefix
    ref = Reference.of(c)
    for _ in range(3000):
        h = rng.choice(hosts) if rng.random() < 0.7 else rng.getrandbits(24)
        src = ipaddress.IPv4Address(((10 if rng.random() < 0.9 else 11) << 24) | h)
        pkt = Packet(family=4, src=src, dst=ipaddress.IPv4Address("198.18.0.1"), proto=rng.choice([6, 17]),
                     sport=1, dport=2)
        got, want = ref.classify(pkt), naive(hp, pkt)
        assert (got.name, got.action) == (want.name, want.action), pkt


@pytest.mark.parametrize("v6", [False, True])
def test_mixed_length_cidrs_are_one_shape_and_one_lookup(v6):
    """The point of stage 0: CIDRs of every length spread over the space -> one shape, one hash lookup."""
    rng = random.Random(11)
    width, lo = (128, 16) if v6 else (32, 8)
    nets = set()
    while len(nets) < 3000:
        n = rng.randint(lo, width)
        nets.add(ipaddress.ip_network((rng.getrandbits(width) >> (width - n) << (width - n), n)))
    nets = sorted(nets, key=lambda x: (x.prefixlen, int(x.network_address)))
    hp = HookPolicy(rules=tuple(Rule(name=f"c{i}", src=str(n), action="drop") for i, n in enumerate(nets)))
    c = compile_hook(hp, Hook.TC_INGRESS)
    ref = Reference.of(c)
    assert len(ref.conf.shapes) == 1 and ref.conf.trees == 1 << (L.TREE_SRC6 if v6 else L.TREE_SRC4)
    other = ipaddress.ip_address("fd00::2" if v6 else "198.18.0.2")
    for _ in range(3000):
        net = rng.choice(nets)
        a = int(net.network_address) | rng.getrandbits(width - net.prefixlen) if rng.random() < 0.8 \
            else rng.getrandbits(width)
        pkt = Packet(family=6 if v6 else 4, src=ipaddress.ip_address(a), dst=other, proto=6, sport=1, dport=2)
        got, want = ref.classify(pkt), naive(hp, pkt)
        assert (got.name, got.action) == (want.name, want.action), pkt
    assert ref.lookups <= 3000
