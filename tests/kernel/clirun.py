"""Run the `bpfgate` CLI in a child process from kernel tests (imported by test modules in this folder)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from bpfgate.sandbox.timing import scaled

CLI = [sys.executable, "-m", "bpfgate.cli.main"]


# what a command answered before click (cli/entry.py) must not import (most of its time otherwise)
HEAVY = ("pydantic", "yaml", "pyroute2", "bpfgate.policy.model", "bpfgate.policy.compile", "bpfgate.engine.engine",
         "bpfgate.policyctl.api", "bpfgate.nat", "click", "rich")
_ENTRY = ("import sys\nfrom bpfgate.cli.entry import run\n"
          "try:\n    run(sys.argv[1:])\nfinally:\n"
          "    print(' '.join(m for m in %r if m in sys.modules), file=sys.stderr)\n" % (HEAVY,))


def run_entry(*argv: str, **kw) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`bpfgate ARGV` in a child through the console script's entry point (cli/entry.py), and which of HEAVY
    it imported (its stderr without that report)."""
    r = subprocess.run([sys.executable, "-c", _ENTRY, *argv], capture_output=True, text=True,
                       timeout=scaled(60), check=False, **kw)
    head, sep, last = r.stderr.removesuffix("\n").rpartition("\n")
    r.stderr = head + sep
    return r, set(last.split())


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
