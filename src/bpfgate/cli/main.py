"""The `bpfgate` command. Thin: parse arguments, call the library, print. Errors are mapped here, once."""

from __future__ import annotations

import sys
import threading

import click

from bpfgate.cli import commands
from bpfgate.errors import BpfgateError, VerifierError

_loaded: set[str] = set()
_loading = threading.RLock()   # the agent runs commands for clients in several threads at once


def _load(module: str) -> None:
    with _loading:
        if module not in _loaded:
            commands.register(module)(app)
            _loaded.add(module)


class _Commands(click.Group):
    """Imports a command's module when the command is looked up (commands.COMMANDS): `bpfgate rule add`
    does not import what `bpfgate top` needs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(commands.MODULE_OF))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands:
            module = commands.MODULE_OF.get(name)
            if module is not None:
                _load(module)
            else:   # a module COMMANDS does not name: all of them, as before
                _register()
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bpfgate")
def app() -> None:
    """eBPF programs in the Linux network path, driven from Python."""


def _register() -> None:
    """Every command group now (help, tests); one module per group, each exposes register(app)."""
    for module in commands.MODULES:
        _load(module)


def usage_line(e: click.ClickException) -> str:
    """A usage error as one line, like every other error: the command, what is wrong, where help is."""
    ctx = getattr(e, "ctx", None)
    msg = " ".join(e.format_message().split())
    if ctx is None:
        return msg
    return f"{ctx.command_path}: {msg} (see `{ctx.command_path} --help`)"


# commands that change or read whole policies and then end: their process runs without the cyclic garbage
# collector, and what is left at their end is frozen (out of the collection Python makes at exit). What they
# build is acyclic (freed by reference counting), and with the collector on, the first collection after
# `apply` of 100k rules walks every object it made (~0.5 s), and so does the one at exit (~0.3-0.6 s).
_BOUNDED = {"apply", "confirm", "rule", "rules", "set", "policy"}


def run(argv: list[str] | None = None) -> None:
    """Entry point of the console script: every BpfgateError becomes one line and an exit code."""
    import gc

    args = sys.argv[1:] if argv is None else argv
    bounded = bool(args) and args[0] in _BOUNDED
    if bounded:
        gc.disable()
        _fixed_mmap_threshold()
    code = invoke(argv)
    if bounded:
        gc.freeze()
    sys.exit(code)


def _fixed_mmap_threshold() -> None:
    """glibc's malloc raises its mmap threshold to the largest block freed so far (up to 32 MB): once such a
    command has freed a large table, blocks below that size come from the heap, where they stay when freed
    (~20 MB of a 100k-rule apply's peak RSS). Fixed at glibc's default, large blocks go back when freed."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-3, 128 * 1024)   # M_MMAP_THRESHOLD
    except (OSError, AttributeError):   # not glibc
        pass


def invoke(argv: list[str] | None) -> int:
    """Run the command line `argv`: what it prints, printed through cli.term (a BpfgateError as one line);
    its exit code. The agent runs the one-rule edits of a client's command line here (cli/entry.py)."""
    from bpfgate.cli import term

    try:
        rv = app.main(args=argv, prog_name="bpfgate", standalone_mode=False)
    except BpfgateError as e:
        term.error(str(e))
        if isinstance(e, VerifierError):
            term.detail(e.summary)
        return e.exit_code
    except PermissionError as e:  # a file or syscall we were not allowed: one line, not a traceback
        term.error(f"{e.strerror or e}: {e.filename or ''} (run as root, or with CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)")
        return 4
    except click.exceptions.Abort:
        return 130
    except KeyboardInterrupt:
        return 130
    except click.ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":   # `bpfgate rule`: the help, as click prints it
            e.show()
        else:
            term.error(usage_line(e))
        return e.exit_code
    except ValueError as e:
        if "null byte" not in str(e):   # a NUL in a path or name (os.stat and the like refuse it)
            raise
        term.error("a path or name holds a NUL byte (\\x00)")
        return 2
    except OSError as e:   # a file or device the command could not use (the ones we expect are typed)
        term.error(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""))
        return 1
    except click.exceptions.Exit as e:
        return e.exit_code
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    run()
