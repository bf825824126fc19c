"""The one time-scale knob: BPFGATE_TIME_SCALE when set, else measured (never below 1)."""

from __future__ import annotations

import pytest

from bpfgate.sandbox import timing


@pytest.fixture(autouse=True)
def fresh():
    timing.factor.cache_clear()
    yield
    timing.factor.cache_clear()


def test_env_var_scales_every_wait(monkeypatch):
    monkeypatch.setenv(timing.ENV, "12")
    assert timing.scaled(5) == 60
    timing.factor.cache_clear()
    monkeypatch.setenv(timing.ENV, "0.1")  # never shorter than measured on the development VM
    assert timing.scaled(5) == 5


def test_measured_when_unset_or_unreadable(monkeypatch):
    monkeypatch.delenv(timing.ENV, raising=False)
    monkeypatch.setattr(timing, "REFERENCE_S", 1e-6)  # any real Python start is "slow" against this
    assert timing.factor() > 100
    timing.factor.cache_clear()
    monkeypatch.setenv(timing.ENV, "fast")
    monkeypatch.setattr(timing, "REFERENCE_S", 1e6)
    assert timing.factor() == 1.0
