"""`python -m bpfgate ...` is the `bpfgate` command."""

from bpfgate.cli.entry import run

run()
