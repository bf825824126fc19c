"""Tests of optional kernel features skip where this kernel lacks them, with doctor's reason (e.g. TCX
needs Linux >= 6.6: Debian 12's 6.1 has none; some kernel builds refuse XDP live frames; Debian 11's 5.10
cannot load flow accounting, which needs atomic fetch instructions: 5.12)."""

from __future__ import annotations

import pytest

from bpfgate import doctor


def require(name: str) -> None:
    """Skip the calling test unless doctor's check `name` passes here. An object check that warns (the
    object loads, an older kernel's tracepoint lacks an argument) passes: its command works."""
    c = doctor.check(name)
    if c.status == doctor.MISSING:
        pytest.skip(f"`bpfgate doctor`: {name} {c.status.upper()}: {c.detail}")
