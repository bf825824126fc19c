"""Packages whose kernel side is imported on first use (bpfgate.lazy.forward): importing the package leaves the
heavy submodule out, a forwarded name brings it in, any other name is an AttributeError."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [("bpfgate.agent", "bpfgate.agent.daemon", "Agent"),
         ("bpfgate.steer", "bpfgate.steer.steering", "Steering"),
         ("bpfgate.nat", "bpfgate.nat.gateway", "Gateway")]


@pytest.mark.parametrize("package,heavy,name", CASES)
def test_kernel_side_imported_on_first_use(package, heavy, name):
    code = (f"import sys, importlib; p = importlib.import_module({package!r}); print({heavy!r} in sys.modules); "
            f"c = getattr(p, {name!r}); print({heavy!r} in sys.modules, c.__module__)\n"
            f"try: p.no_such_name\nexcept AttributeError as e: print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["False", f"True {heavy}", f"module {package!r} has no attribute 'no_such_name'"]
