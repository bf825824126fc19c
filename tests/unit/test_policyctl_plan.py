"""Planning: what apply prints and decides, from the desired and running policies (pure)."""

from __future__ import annotations

from bpfgate.policy.model import Hook, HookPolicy, Rule
from bpfgate.policyctl.guard import allows_established, problem
from bpfgate.policyctl.plan import plan, rule_changes

EST = Rule(name="est", ct=["established", "related"])
SSH = Rule(name="ssh", protocol="tcp", dst_port=22)
WEB = Rule(name="web", protocol="tcp", dst_port=[80, 443])
DNS = Rule(name="dns", protocol="udp", dst_port=53)
TI, TE, XDP = Hook.TC_INGRESS, Hook.TC_EGRESS, Hook.XDP


def hp(*rules, default="allow"):
    return HookPolicy(default=default, rules=tuple(rules))


def test_identical_state_is_no_change():
    state = {("eth0", TI): hp(EST, SSH, default="deny")}
    p = plan(dict(state), dict(state))
    assert not p.changed and p.changes() == []
    assert p.summary().startswith("no change")
    assert p.lines() == ["= eth0 tc-ingress: unchanged"]


def test_attach_swap_detach_in_scope_only():
    running = {("eth0", TI): hp(SSH), ("eth0", TE): hp(DNS), ("eth9", TI): hp(WEB)}
    desired = {("eth0", TI): hp(SSH, WEB), ("eth1", XDP): hp(WEB)}
    p = plan(desired, running, "ns")
    acts = {(h.dev, h.hook): h.action for h in p.hooks}
    assert acts == {("eth0", TI): "swap", ("eth0", TE): "detach", ("eth1", XDP): "attach"}  # eth9 untouched
    assert p.summary() == "1 attach, 1 swap, 1 detach; 3 rule change(s)"
    d = p.to_dict()
    assert d["netns"] == "ns" and d["changed"] and {h["action"] for h in d["hooks"]} == {"attach", "swap", "detach"}


def test_rule_changes_by_name_and_content():
    web2 = Rule(name="web", protocol="tcp", dst_port=8080, action="drop")
    ch = rule_changes(hp(EST, SSH, WEB), hp(EST, web2, DNS))
    got = {(c.kind, c.name, c.position) for c in ch}
    assert got == {("removed", "ssh", 1), ("changed", "web", 1), ("added", "dns", 2)}
    changed = next(c for c in ch if c.kind == "changed")
    assert changed.fields == ("dst_port", "action")
    assert changed.describe() == "~ rule web: dst_port, action changed"


def test_moved_rules_are_the_fewest_that_explain_the_new_order():
    a, b, c, d = (Rule(name=n) for n in "abcd")
    ch = rule_changes(hp(a, b, c, d), hp(b, c, d, a))
    assert [(x.kind, x.name, x.position) for x in ch] == [("moved", "a", 3)]


def test_default_change_only():
    p = plan({("eth0", TI): hp(EST, default="deny")}, {("eth0", TI): hp(EST)})
    (h,) = p.hooks
    assert h.action == "swap" and h.default == ("allow", "deny") and h.rules == []
    assert h.lines() == ["~ eth0 tc-ingress: policy swap", "  ~ default allow -> deny"]


def test_guard():
    assert problem("eth0", TI, hp(SSH, default="deny")) is not None
    assert problem("eth0", XDP, hp(SSH, default="deny")) is not None
    assert problem("eth0", TE, hp(SSH, default="deny")) is None          # egress: not the ingress cut
    assert problem("eth0", TI, hp(SSH, default="allow")) is None
    assert problem("eth0", TI, hp(SSH, EST, default="deny")) is None
    narrow = Rule(name="est80", ct="established", protocol="tcp", dst_port=80)
    assert not allows_established(hp(narrow))                             # would still cut SSH
    assert not allows_established(hp(Rule(name="x", ct="established", action="drop")))
    assert not allows_established(hp(Rule(name="x", ct="new")))
    assert "--force" in problem("eth0", TI, hp(default="deny"))


def test_nd_warning_for_default_deny_ingress():
    from bpfgate.policyctl.guard import warnings

    assert warnings("eth0", TI, hp(EST, default="deny"))
    assert not warnings("eth0", TI, hp(EST, default="allow"))
    assert not warnings("eth0", TE, hp(EST, default="deny"))
    nd = Rule(name="nd", protocol="icmpv6", icmp_type=135)
    na = Rule(name="na", protocol="icmpv6", icmp_type=136)
    assert warnings("eth0", TI, hp(EST, nd, default="deny"))          # 136 still missing
    assert not warnings("eth0", XDP, hp(EST, nd, na, default="deny"))
    assert not warnings("eth0", TI, hp(EST, Rule(name="icmp6", protocol="icmpv6"), default="deny"))
    p = plan({("eth0", TI): hp(EST, default="deny")}, {})
    assert len(p.warnings()) == 1 and p.to_dict()["warnings"] == p.warnings()


def test_automation_rules_are_remembered_while_their_policy_lives_and_passed_on_to_patched_policies():
    """What plan.automation learnt of a hook policy holds for as long as the policy lives (and no longer:
    a memo must not keep a 100k-rule policy alive); a policy patched from one without automation rules has
    none either, across any number of patches (an agent's rounds)."""
    import gc
    import importlib

    P = importlib.import_module("bpfgate.policyctl.plan")   # (the package's `plan` is the function)

    syn = Rule.model_validate({"name": "syn-block", "src": "198.18.0.1", "action": "drop", "owner": "syn-blocker"})
    hp = HookPolicy.model_validate({"rules": [syn, {"name": "a", "protocol": "tcp", "action": "drop"}]})
    assert P.automation(hp) == [syn]
    key = id(hp)
    del hp
    gc.collect()
    assert key not in P._known_automation._entries   # let go with the policy
    old = HookPolicy.model_validate({"rules": [{"name": "a", "protocol": "tcp", "action": "drop"}]})
    assert P.automation(old) == []
    for i in range(3):   # each round: the policy patched from the last one
        new = old.model_copy(update={"rules": (*old.rules, Rule.model_validate({"name": f"r{i}", "action": "drop"}))})
        P.remember_changes(old, new, [])
        assert new in P._known_automation and P.automation(new) == []
        old = new
