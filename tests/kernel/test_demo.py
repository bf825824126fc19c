"""The demo's scenario as a test: drop HTTP by a live map edit, with real requests; nothing left after."""

import json
import os
import subprocess
import sys

import pytest

from bpfgate import attach, demo
from bpfgate.kernel import pins

pytestmark = pytest.mark.kernel


def test_demo_scenario_holds_and_leaves_nothing():
    res = demo.run(timeout=5.0)  # generous: a loaded CI machine must not turn "served" into a timeout
    failed = [c for c in res.checks if not c.ok]
    assert not failed, failed
    assert res.counters[80]["packets"] > 0 and res.counters[80]["bytes"] > 0
    assert 8080 not in res.counters
    assert not [a for a in attach.records() if a.owner == "gate"]
    assert not os.path.exists(pins.pin_path("gate"))


def test_demo_cli_json_exit_code():
    r = subprocess.run([sys.executable, "-m", "bpfgate", "demo", "--json", "--timeout", "5"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and len(out["checks"]) == 8
