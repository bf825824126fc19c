"""Registry of command groups: the modules under bpfgate/cli exposing register(app: click.Group).

The core commands and each family's (bpfgate.families) are imported by name: a family's command group is
registered with the family.
"""

import importlib

from bpfgate import families

MODULES = families.cli_modules()

REGISTRY = [importlib.import_module(f"bpfgate.cli.{m}").register for m in MODULES]
