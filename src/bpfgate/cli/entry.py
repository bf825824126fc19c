"""The `bpfgate` command's entry point. `bpfgate apply FILE` of the file applied last is answered here, before
click, Rich and the control plane are imported (a whole run ~0.1 s, most of it Python's start); everything
else, and anything this answer is not sure of, goes to the full command line (cli/main.py).
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


def run(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if answered(args):
        sys.exit(0)
    from bpfgate.cli.main import run as full

    full(args)
