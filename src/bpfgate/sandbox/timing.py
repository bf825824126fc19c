"""How long to wait for things to start on this machine: one knob for the sandbox, the demo and the tests.

Waits that end as soon as something is ready (a server listening, an interface up, a process gone, an
event arriving) are given in seconds as measured on the development VM and pass through `scaled()`.
The factor is BPFGATE_TIME_SCALE when set (e.g. 10 for a guest under emulation); otherwise it is
measured once per process: how long this machine takes to start bpfgate's CLI in a new Python (what
most of these waits wait for: a loaded machine takes seconds, an emulated guest tens) against
REFERENCE_S, never below 1. Waits for something that must NOT happen (a blocked
connection) are not scaled: they would only make the tests slower.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import lru_cache

ENV = "BPFGATE_TIME_SCALE"
REFERENCE_S = 0.5  # importing bpfgate's CLI on the development VM (0.8-2 s with a load of 13 on its 2 cores)


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
        subprocess.run([sys.executable, "-c", "import bpfgate.cli.main"], timeout=300, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return 10.0
    return max(1.0, (time.monotonic() - t0) / REFERENCE_S)


def scaled(seconds: float) -> float:
    """`seconds` (a wait that ends early on success) on this machine."""
    return seconds * factor()
