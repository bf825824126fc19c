"""Registry of command groups. Add one line per cli module (each has register(app: click.Group))."""

REGISTRY: list = []
