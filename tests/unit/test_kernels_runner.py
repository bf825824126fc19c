"""scripts/kernels/runner.py's bookkeeping (the guest itself is exercised by `scripts/run kernels`): what a
failed kernel's run leaves for a developer or CI to read after the runner's temporary directory is gone."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("kernels_runner", ROOT / "scripts/kernels/runner.py")
runner = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = runner  # dataclasses look their module up
spec.loader.exec_module(runner)


def test_keep_copies_junit_log_and_doctor_report(tmp_path):
    out = tmp_path / "out-6.1"
    out.mkdir()
    for name, text in (("junit.xml", "<testsuites/>"), ("console.log", "guest: boot"), ("pytest.rc", "1"),
                       ("hot.img", "not kept")):
        (out / name).write_text(text)
    kept = runner.keep(out, tmp_path / "runs" / "6.1")
    assert sorted(p.name for p in kept.iterdir()) == ["console.log", "junit.xml", "pytest.rc"]
    assert (kept / "junit.xml").read_text() == "<testsuites/>"


def test_results_option_and_pytest_arguments():
    args = runner.parse(["6.1", "--results", "/tmp/r", "--", "tests/kernel/test_doctor.py", "-x"])
    assert args.kernels == ["6.1"] and args.results == Path("/tmp/r")
    assert args.paths == ["tests/kernel/test_doctor.py"] and args.options == ["-m", "smoke", "-x"]
    assert runner.parse([]).results is None


def knobs_read_by_tests_and_bpfgate() -> set[str]:
    """BG_*/BPFGATE_* variables that tests/kernel and src read from the environment."""
    from bpfgate.sandbox import timing
    read = re.compile(r'environ\.get\(\s*"((?:BG|BPFGATE)_\w+)"')
    names = {timing.ENV}
    for tree in ("tests/kernel", "src"):
        for path in (ROOT / tree).rglob("*.py"):
            names.update(read.findall(path.read_text()))
    return names


def test_forwarded_variables_are_the_knobs_the_tests_read():
    # a knob added to a test reaches the guest only if it is listed, and a listed one must still exist
    assert set(runner.FORWARDED_ENV) == knobs_read_by_tests_and_bpfgate()


def test_only_allow_listed_variables_are_forwarded():
    environ = {"BG_DIFF_SCALE": "0.05", "BPFGATE_TIME_SCALE": "10", "BG_NOT_A_KNOB": "1", "HOME": "/root",
               "PATH": "/usr/bin"}
    assert runner.forwarded_env(environ) == {"BG_DIFF_SCALE": "0.05", "BPFGATE_TIME_SCALE": "10"}
    with pytest.raises(SystemExit, match="BG_DIFF_SEED holds a newline"):
        runner.forwarded_env({"BG_DIFF_SEED": "1\nBPFGATE_DEBUG=1"})


DRIVER = """
import importlib.util, signal, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("kernels_runner", sys.argv[1])
runner = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = runner
spec.loader.exec_module(runner)
signal.signal(signal.SIGINT, runner.STOP)
signal.signal(signal.SIGTERM, runner.STOP)
reason = runner.boot(Path(sys.argv[2]), Path("vmlinuz"), Path("hot.img"), Path(sys.argv[3]), ["-q"], 5)
print("reason:", reason, flush=True)
"""


def test_a_guest_stopped_by_hand_is_reported_stopped(tmp_path):
    """SIGTERM to the runner stops the whole guest (vng and what it started) and boot() says so; the
    verdict is "stopped", not a failure with no pytest exit status. The guest's environment file holds
    the forwarded knobs only."""
    out = tmp_path / "out"
    out.mkdir()
    vng = tmp_path / "vng"  # stands in for virtme-ng: a process group with a child that would outlive it
    vng.write_text(f"#!/bin/sh\nsleep 300 &\necho $! >{tmp_path}/child.pid\necho booted\nwait\n")
    vng.chmod(0o755)
    env = {**os.environ, "BG_DIFF_SCALE": "0.1", "BG_NOT_A_KNOB": "1"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "scripts/kernels/runner.py"), str(vng),
                               str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=30)
    assert "reason: stopped by SIGTERM" in stdout and "booted" in stdout
    assert "stopped by SIGTERM: the guest was stopped" in stderr
    with pytest.raises(ProcessLookupError):  # killed with its group: nothing of the guest is left running
        for _ in range(100):
            os.kill(child, 0)
            time.sleep(0.05)
    assert (out / "pytest.env").read_text() == "BG_DIFF_SCALE=0.1\n"

    result = runner.Result("6.1", stopped="stopped by SIGTERM")
    runner.judge(out, result)  # no junit.xml, no pytest.rc: the guest never finished
    assert not result.ok and result.failures == []
    assert runner.verdict(result, {"6.1"}) == "stopped by SIGTERM"


def test_a_finished_guest_without_exit_status_fails():
    result = runner.Result("6.1")
    runner.judge(Path("/nonexistent"), result)
    assert runner.verdict(result, {"6.1"}) == "FAIL"
    assert result.failures == ["pytest exit status none (see the console output above)"]
