"""`bpfgate agent`: one long-running owner of a namespace's policy engines, reconciled with a policy
directory (daemon.py), with /healthz, /readyz and Prometheus /metrics (http.py). The engines run from
their pins: the agent can die and restart without a gap in enforcement.

The daemon is imported on first use: every CLI command imports the agent's client (to hand edits to a
running agent), and the daemon's imports (the engine, netlink) would be paid by each of them."""

from __future__ import annotations

from bpfgate import lazy

__all__ = ["STATE_DIR", "Agent", "Round"]
__getattr__ = lazy.forward(__name__, dict.fromkeys(__all__, "daemon"))
