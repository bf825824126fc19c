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


def problem(dev: str, hook: Hook, hp: HookPolicy) -> str | None:
    """Why this hook policy would cut established connections, or None."""
    if hook not in INGRESS or hp.default != "deny" or allows_established(hp):
        return None
    return (f"{dev} {hook.value}: default deny with no `ct: established` pass rule would cut established "
            f"connections (including SSH); add one, e.g. `- {{name: est, ct: [established, related]}}` "
            f"first, or use --force")
