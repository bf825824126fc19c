"""Address/port translation (DNAT, SNAT) and L4 load balancing with a Maglev table, at TC ingress/egress of
an interface (bpf/nat.bpf.c). gateway.Gateway drives one interface; rules.py parses and checks rules and
services; maglev.py builds the tables and measures what a change moves."""

from .collector import NatCollector
from .gateway import Change, Gateway, pin_dir, running, state_dir
from .rules import Backend, NatRule, Service, backend, dnat, service, snat

__all__ = ["Backend", "Change", "Gateway", "NatCollector", "NatRule", "Service", "backend", "dnat", "pin_dir", "running",
           "service", "snat", "state_dir"]
