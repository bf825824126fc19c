"""What `apply` prints: its plan, summarised for big changes. Light to import (no click, no Rich until a
line needs markup): `bpfgate apply` of an unchanged file prints through it before click is imported."""

from __future__ import annotations

from bpfgate.cli import term


def print_nat(res) -> None:
    for c in res.nat:
        moved = f": {100 * c['moved']:.3f}% of its table's slots moved" if "moved" in c else ""
        name = f" {c['name']}" if "name" in c else ""
        term.info(f"{'would ' if res.dry_run else ''}{c['op']}{name} on {c['interface']}{moved}")


SUMMARY_OVER = 50   # rule changes on one hook above which the text output counts them instead of listing each


def hook_lines(h, verbose: bool) -> list[str]:
    """A hook's part of the plan; its rule changes counted by kind when there are many (a 100k-rule swap
    is not 200,000 lines), listed with --verbose (and always in --json)."""
    if verbose or h.action not in ("attach", "swap") or len(h.rules) <= SUMMARY_OVER:
        return h.lines()
    counts: dict[str, int] = {}
    for c in h.rules:
        counts[c.kind] = counts.get(c.kind, 0) + 1
    return h.lines(rules=False) + [   # (100k rule lines not formatted to be dropped: ~0.5 s)
        "  " + ", ".join(f"{n:,} rule(s) {kind}" for kind, n in counts.items()) + " (--verbose lists each)"]


def print_plan(res, as_json: bool, verbose: bool = False) -> None:
    if as_json:
        term.print_json(res.to_dict())
        return
    print_nat(res)
    if not res.engine:
        if not res.nat:
            term.ok("no change: NAT as the file says")
        return
    p = res.plan
    for r in res.repaired:
        term.warning(r)
    for line in res.steer:
        term.info(("would " if res.dry_run else "") + line)
    if not p.changed and res.steer:
        term.ok(f"{'dry run: would apply' if res.dry_run else 'applied'}: {len(res.steer)} steering change(s)")
        return
    if not p.changed:
        term.ok(p.summary())
        for line in (ln for h in p.hooks if h.kept for ln in h.lines()):
            term.info(line)
        return
    for line in (ln for h in p.hooks for ln in hook_lines(h, verbose)):
        term.info(line)
    for w in p.warnings():
        term.warning(w)
    if res.dry_run:
        term.info(f"dry run: would {p.summary()}")
    else:
        term.ok(f"applied: {p.summary()}")
    if res.pending:
        from rich.markup import escape

        term.info(f"[yellow]rolls back in {res.pending.remaining:.0f} s[/yellow] unless confirmed: "
                  f"`bpfgate confirm{' --netns ' + escape(res.pending.netns) if res.pending.netns else ''}`", markup=True)
