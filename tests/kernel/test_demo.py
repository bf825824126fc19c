"""`bpfgate demo` as a test: every expectation of the engine demo holds with real traffic."""

from __future__ import annotations

import pytest

from bpfgate import demo
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel


def test_demo_all_expectations_hold():
    res = demo.run()
    failed = [f"{c.step}: expected {c.expected}, got {c.observed}" for c in res.checks if not c.ok]
    assert not failed, "\n".join(failed)
    assert len(res.checks) >= 25
    assert res.policies and "default: deny" in res.policies[-1]


def test_demo_cli_exit_code_json_and_nothing_left():
    import json
    import os
    import subprocess
    import sys

    from bpfgate import attach
    from bpfgate.kernel import pins

    r = subprocess.run([sys.executable, "-m", "bpfgate", "demo", "--json"], capture_output=True, text=True,
                       timeout=scaled(300))
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["ok"] and all(c["ok"] for c in out["checks"])
    assert not [a for a in attach.records() if a.owner == "engine"]
    assert not os.path.exists(pins.pin_path("engine", "-"))
