"""The `bpfgate` command's entry point. Two kinds of command are answered here, before click, Rich and the
control plane are imported (a whole run is then Python's start and a few standard modules):
- `bpfgate apply FILE` of the file applied last ("no change");
- `bpfgate rule add|del ...` and `set add|del ...` while an agent runs for the command's namespace: the
  command line goes to the agent as it is, the agent parses it with the very click command (options are
  defined there only), does the edit with its engines and hands back what to print and the exit code.
Everything else, and anything these answers are not sure of, goes to the full command line (cli/main.py).
"""

from __future__ import annotations

import sys

# the options of `apply` this answer reads (click's spellings); any other argument means the full path
_FLAGS = {"--dry-run": "dry_run", "--json": "as_json", "-v": "verbose", "--verbose": "verbose"}


def apply_args(args: list[str]) -> dict | None:
    """`apply [--netns NAME] [--dry-run] [--json] [-v] FILE` as keyword arguments; None for any other form."""
    if not args or args[0] != "apply":
        return None
    out = {"file": None, "netns": None, "dry_run": False, "as_json": False, "verbose": False}
    rest = iter(args[1:])
    for a in rest:
        if a in _FLAGS:
            out[_FLAGS[a]] = True
        elif a == "--netns":
            out["netns"] = next(rest, None)
            if not out["netns"] or out["netns"].startswith("-"):
                return None
        elif a.startswith("--netns="):
            out["netns"] = a.split("=", 1)[1]
        elif a.startswith("-") or out["file"] is not None or not a:
            return None   # another option, stdin, a second FILE: click's to parse
        else:
            out["file"] = a
    return out if out["file"] is not None and out["netns"] != "" else None


def answered(args: list[str]) -> bool:
    """Whether `args` was an apply of the file applied last, now answered "no change" (printed)."""
    kw = apply_args(args)
    if kw is None:
        return False
    try:
        from bpfgate.policyctl.unchanged import apply_unchanged

        res = apply_unchanged(kw["file"], kw["netns"], kw["dry_run"])
    except Exception:   # noqa: BLE001 - the full path makes the same checks and reports what failed
        return False
    if res is None:
        return False
    from bpfgate.cli.applied import print_plan

    print_plan(res, kw["as_json"], kw["verbose"])
    return True


def edit_args(args: list[str]) -> dict | None:
    """{"netns": NAME, or None for the host's} of an edit command an agent may answer (`rule add|del`,
    `set add|del`), from its --netns NAME / --netns=NAME; None for any other command, --help, `--`, or a
    --netns without a name. A guess: the agent checks it against what click parses (agent/api.py)."""
    from bpfgate.agent.client import CLI_EDITS

    if tuple(args[:2]) not in CLI_EDITS:
        return None
    netns = None
    rest = iter(args[2:])
    for a in rest:
        if a in ("--help", "-h", "--"):
            return None
        if a == "--netns":
            netns = next(rest, None)
            if not netns or netns.startswith("-"):
                return None
        elif a.startswith("--netns="):
            netns = a.split("=", 1)[1]
            if not netns:
                return None
    return {"netns": netns}


def answered_by_agent(args: list[str]) -> int | None:
    """The exit code of an edit command the namespace's agent ran (what it printed written here), or None:
    no agent there, or not such a command; the full command line does it."""
    kw = edit_args(args)
    if kw is None:
        return None
    from bpfgate.agent import client
    from bpfgate.cli import term
    from bpfgate.errors import BpfgateError

    try:
        done = client.run_cli(kw["netns"], args, term.streams())
    except BpfgateError as e:   # the agent busy past the wait, its socket not ours: as the full path says
        term.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:   # Ctrl-C while a busy agent is awaited: as the full path, no traceback
        return 130
    if done is None:
        return None
    for stream, text in ((sys.stdout, done["stdout"]), (sys.stderr, done["stderr"])):
        if text:
            stream.write(text)
            stream.flush()
    return done["code"]


def run(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if answered(args):
        sys.exit(0)
    code = answered_by_agent(args)
    if code is not None:
        sys.exit(code)
    from bpfgate.cli.main import run as full

    full(args)
