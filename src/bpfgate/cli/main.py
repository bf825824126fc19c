"""The `bpfgate` command. Thin: parse arguments, call the library, print. Errors are mapped here, once."""

from __future__ import annotations

import sys

import typer

from bpfgate.errors import BpfgateError, VerifierError

app = typer.Typer(
    name="bpfgate",
    help="eBPF programs in the Linux network path, driven from Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # one module per command group; each exposes register(app)
    from bpfgate.cli import commands

    for register in commands.REGISTRY:
        register(app)


def run(argv: list[str] | None = None) -> int:
    """Entry point of the console script: every BpfgateError becomes one line and an exit code."""
    from bpfgate.cli import term

    _register()
    try:
        app(args=argv, standalone_mode=False)
    except BpfgateError as e:
        term.error(str(e))
        if isinstance(e, VerifierError) and e.summary != e.log:
            term.err.print(e.summary, markup=False, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    return 0


if __name__ == "__main__":
    run()
