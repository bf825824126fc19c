"""`bpfgate agent`: one long-running owner of a namespace's policy engines, reconciled with a policy
directory (daemon.py), with /healthz, /readyz and Prometheus /metrics (http.py). The engines run from
their pins: the agent can die and restart without a gap in enforcement.

The daemon is imported on first use: every CLI command imports the agent's client (to hand edits to a
running agent), and the daemon's imports (the engine, netlink) would be paid by each of them."""

from __future__ import annotations

import importlib

__all__ = ["STATE_DIR", "Agent", "Round"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("bpfgate.agent.daemon"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
