"""scripts/kernels/runner.py's bookkeeping (the guest itself is exercised by `scripts/run kernels`): what a
failed kernel's run leaves for a developer or CI to read after the runner's temporary directory is gone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
