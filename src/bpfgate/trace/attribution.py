"""Which bpfgate program (and, once the policy engine exists, which rule) dropped a packet.

A TC program's TC_ACT_SHOT shows in skb:kfree_skb with reason TC_INGRESS / TC_EGRESS and the device the
packet was on. We look up the filters at that device's clsact hook (in the namespace the drop happened
in) and name the first bpfgate program (name starting with bg_) there: that is the program that dropped
it, as long as one bpfgate program sits on the hook.

Hook for the policy engine: `register_rule_resolver(fn)`; fn(drop_event_dict, program_info_dict)
returns a rule name (or None). The engine can answer from the flow (its compiler knows which rule
matches a 5-tuple) or from a per-rule counter it reads back; until one is registered, `rule` is null.
XDP drops (XDP_DROP) do not reach kfree_skb at all: they are not attributable here.
TCX-attached programs are not looked up yet (only clsact filters).
"""

from __future__ import annotations

import os
import time
from typing import Callable

from bpfgate.errors import BpfgateError

TC_REASONS = {"TC_INGRESS": "ingress", "TC_EGRESS": "egress"}
CACHE_SECONDS = 2.0  # filters change rarely; a burst of drops must not mean a netlink dump each

RuleResolver = Callable[[dict, dict], "str | None"]
_resolvers: list[RuleResolver] = []
_cache: dict[tuple, tuple[float, dict | None]] = {}


def register_rule_resolver(fn: RuleResolver) -> None:
    _resolvers.append(fn)


def netns_names() -> dict[int, str | None]:
    """netns inode -> iproute2 name (/run/netns); our own namespace -> None (no name needed)."""
    out: dict[int, str | None] = {}
    try:
        for name in os.listdir("/run/netns"):
            try:
                out[os.stat(os.path.join("/run/netns", name)).st_ino] = name
            except OSError:
                continue
    except OSError:
        pass
    out[os.stat("/proc/self/ns/net").st_ino] = None
    return out


def _program_at(netns_ino: int, ifindex: int, direction: str) -> dict | None:
    from bpfgate.kernel import tc

    spaces = netns_names()
    if netns_ino not in spaces:
        return None  # an unnamed namespace we cannot enter by name
    try:
        filters = tc.list_filters(ifindex, direction, netns=spaces[netns_ino])
    except BpfgateError:
        return None
    for f in filters:
        if f.prog_name.startswith("bg_"):
            return {"program": f.prog_name, "prog_id": f.prog_id, "direction": direction,
                    "priority": f.priority, "handle": f.handle}
    return None


def attribute(ev: dict) -> dict | None:
    """{"program", "prog_id", "direction", "priority", "handle", "rule"} for a drop by a bpfgate TC
    program, else None."""
    direction = TC_REASONS.get(ev.get("reason", ""))
    if not direction or not ev.get("ifindex") or not ev.get("netns"):
        return None
    key = (ev["netns"], ev["ifindex"], direction)
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is None or now - hit[0] > CACHE_SECONDS:
        hit = (now, _program_at(*key))
        _cache[key] = hit
    prog = hit[1]
    if prog is None:
        return None
    rule = None
    for resolve in _resolvers:
        rule = resolve(ev, prog)
        if rule is not None:
            break
    return {**prog, "rule": rule}
