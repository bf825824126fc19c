"""`bpfgate tour` as a test: every expectation of the engine tour holds with real traffic."""

from __future__ import annotations

import pytest

from bpfgate import tour

pytestmark = pytest.mark.kernel


def test_tour_all_expectations_hold():
    res = tour.run()
    failed = [f"{c.step}: expected {c.expected}, got {c.observed}" for c in res.checks if not c.ok]
    assert not failed, "\n".join(failed)
    assert len(res.checks) >= 25
    assert res.policies and "default: deny" in res.policies[-1]
