"""Registry of command groups: the modules under bpfgate/cli exposing register(app: click.Group).

The core commands and each family's (bpfgate.families) are imported by name: a family's command group is
registered with the family. `bpfgate CMD` imports only the module that registers CMD (COMMANDS): importing
every module, with what each imports (pyroute2, the pydantic models, the inspect pipeline, prometheus), was
most of the time of a one-rule edit. tests/unit/test_families.py checks COMMANDS against what the modules
register.
"""

import importlib

from bpfgate import families

MODULES = families.cli_modules()

# the top-level commands each module registers
COMMANDS = {
    "status_cmd": ("detach", "status"), "doctor_cmd": ("doctor",), "metrics_cmd": ("metrics",),
    "agent_cmd": ("agent",), "policy_cmd": ("apply", "confirm", "policy", "rule", "rules", "set"), "demo_cmd": ("demo",),
    "flows_cmd": ("flows",), "top_cmd": ("top",), "capture_cmd": ("capture",), "syn_cmd": ("syn",),
    "events_cmd": ("events",), "steer_cmd": ("steer",), "nat_cmd": ("nat",), "lb_cmd": ("lb",),
    "tune_cmd": ("tune",), "accel_cmd": ("accel",), "proxy_cmd": ("proxy",), "trace_cmd": ("trace",),
}
MODULE_OF = {cmd: m for m in MODULES for cmd in COMMANDS.get(m, ())}


def register(module: str):
    """The register(app) of one command module (imported now)."""
    return importlib.import_module(f"bpfgate.cli.{module}").register
