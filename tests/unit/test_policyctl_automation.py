"""Rules added by automation (Rule.owner): added through the control plane, kept by `apply` of a file that
does not name them (and the plan says so), left out of `policy export`, shown by `rules`; a policy file
cannot claim an owner."""

from __future__ import annotations

import pytest

from bpfgate import policyctl
from bpfgate.errors import PolicyError
from bpfgate.policy.model import Hook, Policy
from bpfgate.policy.parse import load_text

H = Hook.TC_INGRESS
WEB = {"name": "web", "protocol": "tcp", "dst_port": 80, "action": "drop"}
BLOCK = {"name": "syn-flood-198.18.0.9", "src": "198.18.0.9/32", "protocol": "tcp", "tcp_flags": "syn,!ack",
         "action": "drop"}


def pol(rules, devs=("eth0",)):
    return Policy.model_validate({"interfaces": list(devs), "hooks": {H.value: {"rules": rules}}})


@pytest.fixture
def backend(tmp_path):
    b = policyctl.MemoryBackend()
    policyctl.apply(pol([WEB]), backend=b, state_root=str(tmp_path))
    policyctl.add_rule("eth0", H, BLOCK, position=0, owner="syn-blocker", backend=b)
    return b


def names(b):
    return [r.name for r in b.running(None)[("eth0", H)].rules]


def test_apply_keeps_automation_rules_and_says_so(backend, tmp_path):
    b = backend
    res = policyctl.apply(pol([WEB]), backend=b, state_root=str(tmp_path))
    assert not res.changed and "1 rule(s) added by automation kept" in res.plan.summary()
    assert any("syn-flood-198.18.0.9 kept: added by syn-blocker" in ln for ln in res.plan.hooks[0].lines())
    res = policyctl.apply(pol([dict(WEB, dst_port=81)]), backend=b, state_root=str(tmp_path))
    assert res.applied and names(b) == ["syn-flood-198.18.0.9", "web"]
    assert [c.name for c in res.plan.hooks[0].rules] == ["web"]          # the block is no change
    assert res.plan.to_dict()["hooks"][0]["kept"] == [{"name": "syn-flood-198.18.0.9", "owner": "syn-blocker"}]


def test_a_file_rule_of_the_same_name_takes_it_over(backend, tmp_path):
    b = backend
    res = policyctl.apply(pol([dict(BLOCK, action="pass"), WEB]), backend=b, state_root=str(tmp_path))
    (h,) = res.plan.changes()
    assert h.kept == [] and {c.name for c in h.rules} == {"syn-flood-198.18.0.9"}
    assert b.running(None)[("eth0", H)].rules[0].owner is None


def test_detaching_the_hook_warns_that_the_blocks_go(backend, tmp_path):
    b = backend
    egress = Policy.model_validate({"interfaces": ["eth0"], "hooks": {"tc-egress": {"rules": [WEB]}}})
    p = policyctl.plan(egress, backend=b)
    (w,) = [w for w in p.warnings() if "automation" in w]
    assert "syn-flood-198.18.0.9 (syn-blocker)" in w
    assert any("goes with it" in ln for ln in p.lines())


def test_export_leaves_them_out_and_reapplies_to_no_change(backend, tmp_path):
    b = backend
    text = policyctl.export(backend=b)
    body = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert "syn-flood" not in "\n".join(body)
    assert "# left out: rules added by automation" in text and "syn-flood-198.18.0.9 (added by syn-blocker)" in text
    res = policyctl.apply(policyctl.load_policies(text), backend=b, state_root=str(tmp_path))
    assert not res.changed and names(b) == ["syn-flood-198.18.0.9", "web"]


def test_rules_show_the_owner(backend):
    rows = {r.name: r for r in policyctl.rules(backend=backend)}
    assert rows["syn-flood-198.18.0.9"].owner == "syn-blocker" and rows["web"].owner is None
    assert rows["syn-flood-198.18.0.9"].to_dict()["owner"] == "syn-blocker"


def test_a_policy_file_cannot_claim_an_owner():
    text = "interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n      - {name: a, owner: syn-blocker}\n"
    with pytest.raises(PolicyError, match="owner is set by the program") as e:
        load_text(text, "p.yaml")
    assert "p.yaml:5" in str(e.value) and "owner" in str(e.value)
