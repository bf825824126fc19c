"""`bpfgate demo` as a test: every expectation of the engine demo, and of each `--scenario`, holds with real
traffic; the CLI's JSON says so; nothing is left behind, even when interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


# ---- `bpfgate demo --scenario NAME` ---------------------------------------------------------------------


def _left_behind(pid: int) -> list[str]:
    """Namespaces, root interfaces, markers (sandbox.leftovers), attachment records, pins and /run/bpfgate
    state of the sandboxes of process `pid` (their names carry its PID): empty after a clean run."""
    from bpfgate import attach
    from bpfgate.attach.record import RUN_ROOT
    from bpfgate.kernel.pins import PIN_ROOT
    from bpfgate.sandbox import leftovers
    from bpfgate.sandbox.names import owner_of

    def ours(name: str | None) -> bool:
        o = owner_of(name or "")
        return bool(o) and o[1] == pid

    found = leftovers(pid) + [f"attachment {a.key}" for a in attach.records() if ours(a.netns)]
    for root in (PIN_ROOT, RUN_ROOT):
        for path, dirs, files in os.walk(root):
            found += [os.path.join(path, n) for n in dirs + files if ours(n)]
    return found


def _scenario(name: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "bpfgate", "demo", "--scenario", name, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=scaled(120))
    assert proc.returncode == 0, stderr[-2000:]
    assert not _left_behind(proc.pid)
    out = json.loads(stdout)
    failed = [c for c in out["checks"] if not c["ok"]]
    assert out["ok"] and out["scenario"] == name and not failed, failed
    return proc, out


def test_scenario_steer_fixes_the_return_path_both_ways():
    _, out = _scenario("steer")
    steps = [c["step"] for c in out["checks"]]
    for fam in (4, 6):   # failing without, working with symmetric return and with an explicit rule
        assert any(s.startswith(f"IPv{fam}: client ->") and "nothing steered" in s for s in steps)
        assert any(s.startswith(f"IPv{fam}: the same with symmetric return") for s in steps)
        assert any(s.startswith(f"IPv{fam}: explicit rule") for s in steps)
    st = out["steer"]
    assert st["stats"]["steered"] > 0 and st["stats"]["returned"] > 0
    assert {r["dev"] for r in st["rules"]} == {"sec0"} and all(r["steered"] > 0 for r in st["rules"])


def test_scenario_lb_spreads_by_weight_and_keeps_flows_across_changes():
    _, out = _scenario("lb")
    lb = out["lb"]
    assert [s["weight"] for s in lb["spread"]] == [1, 2, 3]
    for s in lb["spread"]:
        assert abs(s["flow_share"] - s["weight_share"]) < lb["tolerance"]
    assert sum(s["flows"] for s in lb["spread"]) == lb["flows"]
    added, drained, removed = lb["changes"][1:]
    assert 0.3 < added["moved"] < 0.37 and 0 < removed["moved"] < 0.5
    assert "198.18.1.2:9003" not in removed["shares"]
    kept = [c for c in out["checks"] if c["step"].endswith(": existing flows")]
    assert len(kept) == 3 and kept[0]["observed"].startswith("0 of ")


def test_scenario_nat_dnat_snat_http_with_clean_checksums():
    _, out = _scenario("nat")
    nat = out["nat"]
    done = {(f["side"], ":" in f["dst"]) for f in nat["flows"] if f["packets"][0] and f["packets"][1]}
    assert done == {("destination", False), ("destination", True), ("source", False), ("source", True)}
    assert sum(1 for c in out["checks"] if c["expected"] == "HTTP 200" and c["observed"] == "HTTP 200") == 2


def test_scenario_interrupted_leaves_nothing():
    """Ctrl-C in the middle of a scenario (steering attached, traffic flowing): exit, and nothing left."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "bpfgate", "demo", "--scenario", "steer"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})   # each check's line as it is made
    deadline = time.monotonic() + scaled(60)
    line = ""
    while "steering attached" not in line:   # the first check: steering is attached by now
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=scaled(60))
    assert proc.returncode != 0
    assert not _left_behind(proc.pid)


def test_scenario_bad_use_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "bpfgate", "demo", "--scenario", "nope"], capture_output=True,
                       text=True, timeout=scaled(60))
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "bpfgate", "demo", "--scenario", "lb", "--mode", "tc"],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 2 and "not with --scenario" in r.stderr and "Traceback" not in r.stderr
