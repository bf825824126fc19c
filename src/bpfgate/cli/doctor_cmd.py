"""`bpfgate doctor`: what this kernel can do for bpfgate, each feature really loaded and attached."""

from __future__ import annotations

import click
from rich.markup import escape

from bpfgate.cli import term

_STATUS = {"ok": "[green]OK[/green]", "missing": "[red]MISSING[/red]", "warn": "[yellow]WARN[/yellow]"}


def register(app: click.Group) -> None:
    app.add_command(doctor)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (keys: docs/doctor.md).")
@click.option("--fix", is_flag=True, help="Mount bpffs and tracefs when they are missing.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, fix: bool) -> None:
    """Check the kernel: BTF, JIT, capabilities, mounts, and one real probe per BPF feature.

    Exit status: 0 when the core works (BTF, maps, ring buffer, tc, generic XDP, the policy engine's
    object), 1 when one of them is missing.
    """
    from bpfgate import doctor as doc

    checks = doc.run_checks(fix=fix)
    if as_json:
        term.print_json(doc.document(checks))
    else:
        _print(checks, doc.core_ok(checks))
    ctx.exit(doc.exit_code(checks))


def _print(checks, core_ok: bool) -> None:
    rows = []
    for c in checks:
        detail = escape(c.detail)
        if c.fix and not c.ok:
            detail += f"\n[dim]fix: {escape(c.fix)}[/dim]"
        name = f"[bold]{c.name}[/bold]" if c.essential else c.name
        rows.append((name, _STATUS.get(c.status, escape(c.status)), detail, escape(c.impact)))
    term.table(None, ("check", "status", "detail", "impact"), rows, markup=True, wrap=True)
    fixes = [c.fix for c in checks if c.fix and not c.ok and c.kind == "system"]
    if core_ok:
        term.ok("core ready: BTF, maps, ring buffer, tc, XDP and the policy engine work" + ("" if not fixes else
                f" (`bpfgate doctor --fix` would run: {'; '.join(fixes)})"))
    else:
        missing = ", ".join(c.name for c in checks if c.essential and not c.ok)
        term.fail(f"core not ready: {missing} missing (essential checks are in bold)")
