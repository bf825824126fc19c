"""Run the `bpfgate` CLI in a child process from kernel tests (imported by test modules in this folder)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from bpfgate.sandbox.timing import scaled

CLI = [sys.executable, "-m", "bpfgate.cli.main"]


def run_cli(args: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """`bpfgate ARGS` in a child. Should it hang, its Python stacks (faulthandler, SIGABRT) are the failure."""
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "bpfgate.cli.main", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    timeout = scaled(timeout)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=scaled(30))
        pytest.fail(f"bpfgate {' '.join(args)} still running after {timeout} s; its stacks:\n{err[-4000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
