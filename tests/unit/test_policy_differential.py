"""The compiler is proven by two classifiers agreeing: the reference (map entries, as the BPF program
walks them) and the naive one (rules in order, fields tested directly)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfgate.policy.classify import Reference, naive
from bpfgate.policy.compile import Limits, compile_hook
from bpfgate.policy.model import Hook

from policy_gen import random_packet, random_policy

LIMITS = [Limits(), Limits(max_shapes=4, cheap_merge=0), Limits(cheap_merge=0, max_shapes=32),
          Limits(max_shapes=2, cheap_merge=1 << 20)]


def _agree(seed: int, n_rules: int, n_packets: int, limits: Limits) -> int:
    rng = random.Random(seed)
    hp = random_policy(rng, n_rules)
    try:
        compiled = compile_hook(hp, Hook.TC_INGRESS, limits=limits, gen=seed & 1)
    except Exception as e:  # a policy too varied for tight limits is a legitimate, reported refusal
        assert "shapes" in str(e) or "entries" in str(e), e
        return 0
    ref = Reference.of(compiled)
    assert len(ref.conf.shapes) <= limits.max_shapes
    for _ in range(n_packets):
        pkt = random_packet(rng, hp)
        got, want = ref.classify(pkt), naive(hp, pkt)
        assert (got.name, got.action) == (want.name, want.action), (pkt, got, want)
    return n_packets


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_rules=st.integers(0, 25), lim=st.sampled_from(LIMITS))
def test_reference_equals_naive(seed, n_rules, lim):
    _agree(seed, n_rules, 60, lim)


@pytest.mark.parametrize("seed", range(4))
def test_reference_equals_naive_bulk(seed):
    """Many packets per policy (25k packets over the four seeds)."""
    assert _agree(1000 + seed, 30, 6000, Limits(max_shapes=32)) == 6000
