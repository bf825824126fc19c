"""`bpfgate demo --scenario`: the CLI offers exactly the scenarios the library runs (the CLI keeps its own
copy of the names so that its start imports no scenario), and each has its topology line for the header."""

from __future__ import annotations

import pytest

from bpfgate import scenarios
from bpfgate.cli import demo_cmd


def test_the_cli_offers_the_library_scenarios():
    assert demo_cmd.SCENARIOS == scenarios.NAMES
    for name in scenarios.NAMES:
        assert scenarios.describe(name)


def test_an_unknown_scenario_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="no scenario 'nope'"):
        scenarios.run("nope")
