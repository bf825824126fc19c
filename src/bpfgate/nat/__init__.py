"""Address/port translation (DNAT, SNAT) and L4 load balancing with a Maglev table, at TC ingress/egress of
an interface (bpf/nat.bpf.c). gateway.Gateway drives one interface; rules.py parses and checks rules and
services; maglev.py builds the tables and measures what a change moves.

The kernel side (gateway, collector) is imported on first use: `apply` reads nat.policy on every run and
would otherwise pay for the attach layer and netlink each time."""

from __future__ import annotations

from bpfgate import lazy

from .rules import Backend, NatRule, Service, backend, dnat, service, snat

_LAZY = {"NatCollector": "collector", "Change": "gateway", "Gateway": "gateway", "pin_dir": "gateway",
         "running": "gateway", "state_dir": "gateway"}

__all__ = ["Backend", "Change", "Gateway", "NatCollector", "NatRule", "Service", "backend", "dnat", "pin_dir", "running",
           "service", "snat", "state_dir"]
__getattr__ = lazy.forward(__name__, _LAZY)
