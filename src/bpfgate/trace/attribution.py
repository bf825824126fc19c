"""Which bpfgate program (and, once the policy engine exists, which rule) dropped a packet.

A TC program's TC_ACT_SHOT shows in skb:kfree_skb with reason TC_INGRESS / TC_EGRESS and the device the
packet was on. We look up the filters at that device's clsact hook (in the namespace the drop happened
in) and name the first bpfgate program (name starting with bg_) there: that is the program that dropped
it, as long as one bpfgate program sits on the hook.

The policy engine's rule: an engine's TC drop leaves its rule id in the skb's cb, the tracer copies it
into the event (engine_rule), and the engine attached with that program id names it (a rule deleted since
has no name: null). Other resolvers: `register_rule_resolver(fn)`; fn(drop_event_dict, program_info_dict)
returns a rule name (or None).
XDP drops (XDP_DROP) do not reach kfree_skb at all: they are not attributable here.
TCX-attached programs are not looked up yet (only clsact filters).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from bpfgate.errors import BpfgateError

TC_REASONS = {"TC_INGRESS": "ingress", "TC_EGRESS": "egress"}
CACHE_SECONDS = 2.0  # filters change rarely; a burst of drops must not mean a netlink dump each

RuleResolver = Callable[[dict, dict], "str | None"]
_resolvers: list[RuleResolver] = []
_cache: dict[tuple, tuple[float, Any]] = {}


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


def _cached(key: tuple, fetch: Callable[[], Any]) -> Any:
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is None or now - hit[0] > CACHE_SECONDS:
        hit = (now, fetch())
        _cache[key] = hit
    return hit[1]


def _engine_names(netns_ino: int, prog_id: int) -> dict[int, str]:
    """rule id -> name of the policy engine whose program is prog_id, in that namespace ({} if none)."""
    from bpfgate.engine import Engine
    from bpfgate.engine.engine import rule_names
    from bpfgate.engine.state import StateStore

    spaces = netns_names()
    if netns_ino not in spaces:
        return {}
    ns = spaces[netns_ino]
    for dev, hook in StateStore.listing(ns):
        try:
            if StateStore(dev, hook, ns).load_meta().get("prog_id") != prog_id:
                continue
            with Engine.open(dev, hook, ns) as eng:
                return rule_names(eng.live.c) if eng.live is not None else {}
        except (BpfgateError, OSError, ValueError):
            return {}
    return {}


def _engine_rule(ev: dict, prog: dict) -> str | None:
    rid = ev.get("engine_rule")
    if not rid or not prog["program"].startswith("bg_engine"):
        return None
    names = _cached(("engine", ev["netns"], prog["prog_id"]), lambda: _engine_names(ev["netns"], prog["prog_id"]))
    return names.get(rid - 1)


def attribute(ev: dict) -> dict | None:
    """{"program", "prog_id", "direction", "priority", "handle", "rule"} for a drop by a bpfgate TC
    program, else None."""
    direction = TC_REASONS.get(ev.get("reason", ""))
    if not direction or not ev.get("ifindex") or not ev.get("netns"):
        return None
    key = (ev["netns"], ev["ifindex"], direction)
    prog = _cached(key, lambda: _program_at(*key))
    if prog is None:
        return None
    rule = None
    for resolve in [_engine_rule, *_resolvers]:
        rule = resolve(ev, prog)
        if rule is not None:
            break
    return {**prog, "rule": rule}
