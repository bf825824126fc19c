"""Attributes a package forwards to its submodules, imported on first use (a PEP 562 module __getattr__):
a package whose kernel side is heavy (the attach layer, netlink) stays cheap to import for the commands that
only read its light parts."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False   # not `from typing`: typing is ~5 ms of the start of a command answered before click
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Callable


def forward(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """A module __getattr__ for PACKAGE: NAME is getattr(PACKAGE.<where[NAME]>, NAME), the submodule imported
    when NAME is first asked for; any other name is an AttributeError."""

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__


def module(name: str) -> ModuleType:
    """Module NAME, its code run when one of its attributes is first used (importlib's LazyLoader): for a
    module a command may never call, e.g. netlink, whose pyroute2 takes ~80 ms to import. Imported already:
    that module."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
