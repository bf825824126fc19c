"""bpfgate.policyctl forwards to its API (api.py) on first use, so that `bpfgate apply`'s no-change answer
(policyctl/unchanged.py) imports none of the models, the compiler or netlink."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import types

import bpfgate.policyctl as package
from bpfgate.policyctl import api

HEAVY = ("pydantic", "yaml", "pyroute2", "bpfgate.policy.model", "bpfgate.policy.compile", "bpfgate.engine.engine",
         "bpfgate.policyctl.api", "bpfgate.nat", "bpfgate.attach")


def test_the_no_change_answer_imports_nothing_heavy():
    code = ("import sys\nimport bpfgate.cli.main, bpfgate.cli.policy_cmd\n"
            "from bpfgate.policyctl.unchanged import apply_unchanged\nfrom bpfgate.policyctl import pending\n"
            "import bpfgate.engine.state, bpfgate.engine.paths, bpfgate.policy.source\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == []


def test_a_name_of_both_a_submodule_and_the_api_is_the_apis():
    """As when the API was the package's __init__: `policyctl.apply` is the function, not apply.py."""
    submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    both = {n for n in submodules if n in vars(api) and not isinstance(vars(api)[n], types.ModuleType)}
    assert both == package._FUNCTIONS_FIRST
    for name in both:
        assert getattr(package, name) is getattr(api, name)
    assert isinstance(package.pending, types.ModuleType) and package.MemoryBackend is api.MemoryBackend
