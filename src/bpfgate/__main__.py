"""`python -m bpfgate ...` is the `bpfgate` command."""

from bpfgate.cli.main import run

run()
