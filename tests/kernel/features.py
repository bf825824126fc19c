"""Tests of optional kernel features skip where this kernel lacks them, with doctor's reason (e.g. TCX
needs Linux >= 6.6: Debian 12's 6.1 has none; some kernel builds refuse XDP live frames)."""

from __future__ import annotations

import pytest

from bpfgate import doctor


def require(name: str) -> None:
    """Skip the calling test unless doctor's check `name` is OK here."""
    c = doctor.check(name)
    if not c.ok:
        pytest.skip(f"`bpfgate doctor`: {name} {c.status.upper()}: {c.detail}")
