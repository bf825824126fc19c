"""Attributes a package forwards to its submodules, imported on first use (a PEP 562 module __getattr__):
a package whose kernel side is heavy (the attach layer, netlink) stays cheap to import for the commands that
only read its light parts."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False   # not `from typing`: typing is ~5 ms of the start of a command answered before click
if TYPE_CHECKING:
    from typing import Callable


def forward(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """A module __getattr__ for PACKAGE: NAME is getattr(PACKAGE.<where[NAME]>, NAME), the submodule imported
    when NAME is first asked for; any other name is an AttributeError."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__
