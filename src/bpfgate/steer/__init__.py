"""Egress steering (bpf/steer.bpf.c): send traffic out of a chosen interface to a chosen next hop, live.

    s = Steering.attach(["eth0", "eth1"], netns="srv", symmetric=["eth1"])  # programs + pinned maps
    s.add(rules.make("198.18.200.1/32", dev="eth1", via="198.18.1.1"))      # explicit rule, live
    s.rules(); s.stats(); s.delete("198.18.200.1/32")
    Steering.open(netns="srv")                                              # a later process edits it

Attached at TC ingress and egress of each interface (clsact direct-action, or TCX where the kernel has it,
at the family's slot). One set of maps per network namespace, pinned under /sys/fs/bpf/bpfgate/steer/<ns>,
shared by the programs of every interface: rules, interfaces, counters and the connection tracker, so the
egress hook of the interface a reply would leave by knows which interface the connection came in on.
`bpfgate detach` removes the programs, and the maps with the namespace's last steering attachment.
"""

from __future__ import annotations

from bpfgate import lazy

from . import rules

# The kernel side (steering.py) is imported on first use: the policy model reads steer.policy on every
# command, and would otherwise pay for the attach layer and netlink each time.
_KERNEL_SIDE = ("C", "FAMILY", "MAPS", "RULES_MAX", "IF_RETURN", "STATS", "FAILURES", "METHODS", "DIRECTIONS",
                "pin_dir", "attached", "RuleState", "Interface", "Steering", "detach", "SteerCollector")
__all__ = ["rules", *_KERNEL_SIDE]
__getattr__ = lazy.forward(__name__, dict.fromkeys(_KERNEL_SIDE, "steering"))
