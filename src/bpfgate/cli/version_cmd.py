import typer

import bpfgate


def register(app: typer.Typer) -> None:
    @app.command("version")
    def version() -> None:
        """Print bpfgate's version."""
        typer.echo(bpfgate.__version__)
