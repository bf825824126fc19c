"""The family registry (bpfgate.families) is the one registration: what it names exists, and the attach
layer, doctor and the CLI take their tables from it."""

from __future__ import annotations

import importlib
import pathlib

from bpfgate import families
from bpfgate.attach import FAMILY_DETACH, FAMILY_STATE, order
from bpfgate.cli import commands
from bpfgate.doctor import objects

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_family_object_has_its_source():
    for name, lost in families.objects():
        assert (ROOT / "bpf" / f"{name}.bpf.c").is_file(), name
        assert lost, f"{name}: say what a user loses without it"


def test_every_bpf_source_belongs_to_a_family_or_is_a_fixture():
    fixtures = {"probes", "selftest", "dropper"}  # doctor's probes and the kernel layer's test programs
    registered = {name for name, _ in families.objects()}
    sources = {p.name.removesuffix(".bpf.c") for p in (ROOT / "bpf").glob("*.bpf.c")}
    assert sources - fixtures == registered


def test_cli_modules_register():
    assert len(set(families.cli_modules())) == len(families.cli_modules())
    for m in families.cli_modules():
        assert callable(importlib.import_module(f"bpfgate.cli.{m}").register), m
    assert commands.MODULES == families.cli_modules()


def test_each_command_is_found_in_the_module_that_registers_it():
    """commands.COMMANDS (what `bpfgate CMD` imports for CMD) is what each module registers."""
    import subprocess
    import sys

    import click

    for m in families.cli_modules():
        group = click.Group()
        commands.register(m)(group)
        assert tuple(sorted(group.commands)) == tuple(sorted(commands.COMMANDS.get(m, ()))), m
    # `bpfgate rule --help` imports the policy commands and none of the others'
    code = ("import sys; from bpfgate.cli import main\n"
            "try: main.app.main(['rule', '--help'], prog_name='bpfgate')\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('bpfgate.cli.') and m.endswith('_cmd')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['bpfgate.cli.policy_cmd']"


def test_layers_read_the_registry():
    assert list(objects.OBJECT_CHECKS) == [name for name, _ in families.objects()]
    assert order.SLOTS == families.slots()
    assert FAMILY_STATE == families.with_state()
    assert FAMILY_DETACH == families.detachers()
    for module in FAMILY_DETACH.values():
        assert callable(importlib.import_module(module).detach)
    names = [f.name for f in families.FAMILIES]
    assert len(set(names)) == len(names)
    assert len({s.owner for s in order.SLOTS}) == len(order.SLOTS)
