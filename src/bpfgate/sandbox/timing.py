"""How long to wait for things to start on this machine: one knob for the sandbox, the demo and the tests.

Waits that end as soon as something is ready (a server listening, an interface up, a process gone, an
event arriving) are given in seconds as measured on the development VM and pass through `scaled()`.
The factor is BPFGATE_TIME_SCALE when set (e.g. 10 for a guest under emulation); otherwise it is
measured once per process: how long this machine takes to start Python (what most of these waits
wait for) against REFERENCE_S, never below 1. Waits for something that must NOT happen (a blocked
connection) are not scaled: they would only make the tests slower.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import lru_cache

ENV = "BPFGATE_TIME_SCALE"
REFERENCE_S = 0.15  # `python -c pass` on a busy development VM (an emulated guest: seconds)


@lru_cache(maxsize=1)
def factor() -> float:
    """The time scale of this machine (>= 1)."""
    value = os.environ.get(ENV)
    if value:
        try:
            return max(1.0, float(value))
        except ValueError:
            pass  # a typo must not break every wait: measure instead
    t0 = time.monotonic()
    try:
        subprocess.run([sys.executable, "-c", "pass"], timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 10.0
    return max(1.0, (time.monotonic() - t0) / REFERENCE_S)


def scaled(seconds: float) -> float:
    """`seconds` (a wait that ends early on success) on this machine."""
    return seconds * factor()
