"""The hooks a policy runs at. Apart from the models (model.py re-exports them): code that only names a
hook (apply's no-change check, the saved-state listing) does not import pydantic."""

from __future__ import annotations

from enum import Enum


class Hook(str, Enum):
    TC_INGRESS = "tc-ingress"
    TC_EGRESS = "tc-egress"
    XDP = "xdp"
    CGROUP_INGRESS = "cgroup-ingress"   # cgroup_skb: the packets of a cgroup's sockets
    CGROUP_EGRESS = "cgroup-egress"
    CGROUP_CONNECT = "cgroup-connect"   # socket policy: connect() / UDP sendmsg() destinations (EPERM)
    CGROUP_BIND = "cgroup-bind"         # socket policy: bind() addresses and ports (EPERM)

    @property
    def on_cgroup(self) -> bool:
        return self in CGROUP_HOOKS


# pickled (engine snapshots) under the name it had before this module: snapshots stay as they were, readable
# by every bpfgate of the same SNAPSHOT_VERSION
Hook.__module__ = "bpfgate.policy.model"

SOCKET_HOOKS = frozenset({Hook.CGROUP_CONNECT, Hook.CGROUP_BIND})
CGROUP_HOOKS = frozenset({Hook.CGROUP_INGRESS, Hook.CGROUP_EGRESS}) | SOCKET_HOOKS

DEFAULT_NAME = "(default)"   # the default verdict's row in counters and listings, as if it were a rule
