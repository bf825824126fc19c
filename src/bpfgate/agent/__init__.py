"""`bpfgate agent`: one long-running owner of a namespace's policy engines, reconciled with a policy
directory (daemon.py), with /healthz, /readyz and Prometheus /metrics (http.py). The engines run from
their pins: the agent can die and restart without a gap in enforcement."""

from bpfgate.agent.daemon import STATE_DIR, Agent, Round

__all__ = ["STATE_DIR", "Agent", "Round"]
