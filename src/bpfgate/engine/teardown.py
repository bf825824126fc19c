"""`bpfgate detach` of a policy engine: the engine's own detach, so what an engine shares with the other
engines of its device stays right (the conntrack tracker, the XDP/tc-ingress lookup-only switch).

Registered in bpfgate.attach (FAMILY_DETACH): the attach layer calls detach(att) for a record whose owner
is "engine"; None means the engine cannot be opened (pins or state unreadable), and the layer then removes
the record, its pins and its state as for any attachment.
"""

from __future__ import annotations

import os

from bpfgate.errors import BpfgateError
from bpfgate.policy.model import Hook


def detach(att) -> list[str] | None:
    from bpfgate import attach

    from .engine import Engine

    if not att.state:
        return None   # recorded by a bpfgate that did not record state: the generic path
    try:
        hook = Hook(os.path.basename(att.state[0]))
        eng = Engine.open(att.dev or att.cgroup, hook, att.netns)
    except (BpfgateError, ValueError):
        return None
    before = {a.key: a for a in attach.records()}
    eng.detach()
    after = {a.key for a in attach.records()}
    return [f"{a.hook} {a.method} attachment {a.prog_name} on {a.where} (policy engine)"
            for k, a in before.items() if k not in after] + [f"state {p}" for p in att.state]
