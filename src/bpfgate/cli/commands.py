"""Registry of command groups: one line per module under bpfgate/cli exposing register(app: click.Group).

Modules are imported by name so that adding a command group is a one-line change here.
"""

import importlib

MODULES = [
    "events_cmd",
    "syn_cmd",
    "metrics_cmd",
    "flows_cmd",
    "capture_cmd",
    "top_cmd",
    "status_cmd",
    "demo_cmd",
    "doctor_cmd",
    "trace_cmd",
    "policy_cmd",
]

REGISTRY = [importlib.import_module(f"bpfgate.cli.{m}").register for m in MODULES]
