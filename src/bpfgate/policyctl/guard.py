"""Guard: refuse a policy that would cut established connections (your SSH session among them).

An ingress hook (tc-ingress, xdp) whose default is deny must have a rule that lets established traffic
through: action pass with `ct` naming `established`, and no other match field narrowing it (a
`ct: established` + `dst_port: 80` rule still cuts SSH). `--force` overrides.
"""

from __future__ import annotations

from bpfgate.policy.model import CT_STATES, Hook, HookPolicy

INGRESS = (Hook.TC_INGRESS, Hook.XDP)
ESTABLISHED = CT_STATES["established"]


def allows_established(hp: HookPolicy) -> bool:
    for r in hp.rules:
        if (r.action == "pass" and r.ct and ESTABLISHED in r.ct and r.match_fields() == ["ct"]
                and r.rate_limit is None):
            return True
    return False


ND_TYPES = {135, 136}   # neighbour solicitation / advertisement


def _passes_nd(hp: HookPolicy) -> bool:
    """Whether some pass rule lets both ND types through (rules with only protocol/icmp_type fields)."""
    have: set[int] = set()
    for r in hp.rules:
        if r.action != "pass" or r.rate_limit is not None or set(r.match_fields()) - {"protocol", "icmp_type"}:
            continue
        if r.protocol is not None and 58 not in r.matching("protocol"):
            continue
        have |= ND_TYPES if r.icmp_type is None else {r.icmp_type} & ND_TYPES
        if r.protocol is None and r.icmp_type is None:
            return True
    return have >= ND_TYPES


def warnings(dev: str, hook: Hook, hp: HookPolicy) -> list[str]:
    """Things a default-deny ingress probably does not mean (not refused: an IPv4-only host is fine)."""
    if hook not in INGRESS or hp.default != "deny" or _passes_nd(hp):
        return []
    why = (f"{dev} {hook.value}: default deny drops IPv6 neighbour discovery (icmpv6 types 135, 136): IPv6 "
           f"stops working once neighbour entries expire; add e.g. `- {{name: nd, protocol: icmpv6, "
           f"icmp_type: 135}}` and one for 136")
    return [why]


def guarded(hook: Hook, default: str) -> bool:
    """Whether the guard looks at a hook policy's rules at all (an ingress hook with default deny)."""
    return hook in INGRESS and default == "deny"


def problem(dev: str, hook: Hook, hp: HookPolicy) -> str | None:
    """Why this hook policy would cut established connections, or None."""
    if not guarded(hook, hp.default) or allows_established(hp):
        return None
    return (f"{dev} {hook.value}: default deny with no `ct: established` pass rule would cut established "
            f"connections (including SSH); add one, e.g. `- {{name: est, ct: [established, related]}}` "
            f"first, or use --force")
