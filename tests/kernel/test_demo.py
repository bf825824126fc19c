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
    from bpfgate.sandbox.names import owner_of

    proc = subprocess.Popen([sys.executable, "-m", "bpfgate", "demo", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=scaled(300))
    assert proc.returncode == 0, stderr[-2000:]
    out = json.loads(stdout)
    assert out["ok"] and all(c["ok"] for c in out["checks"])

    def demos(name: str | None) -> bool:   # other runs on this machine attach engines too: only the demo's
        o = owner_of(name or "")
        return bool(o) and o[1] == proc.pid

    assert not [a for a in attach.records() if demos(a.netns)]
    engine_state = attach.state_root("engine")
    assert not [d for d in (os.listdir(engine_state) if os.path.isdir(engine_state) else []) if demos(d)]
    engine_pins = pins.pin_path("engine")
    assert not [d for d in (os.listdir(engine_pins) if os.path.isdir(engine_pins) else []) if demos(d)]
