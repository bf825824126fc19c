"""Registry of command groups. Add one line per cli module (each has register(app))."""

from bpfgate.cli import version_cmd

REGISTRY = [
    version_cmd.register,
]
