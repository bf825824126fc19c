"""Policy files naming cgroups: which hooks run where, paths against the cgroup v2 mount, the fields a
cgroup or socket hook cannot match, and the export round trip."""

from __future__ import annotations

import pytest

from bpfgate import cgroups
from bpfgate.errors import PolicyError
from bpfgate.policy.model import Hook, Policy
from bpfgate.policy.parse import load_text
from bpfgate.policyctl.export import desired_state, export_text, load_policies


@pytest.fixture(autouse=True)
def mount(monkeypatch):
    monkeypatch.setattr(cgroups, "cgroup2_mount", lambda: "/sys/fs/cgroup/unified")


def doc(body: str) -> Policy:
    return load_text("version: 1\n" + body, "p.yaml")


def test_cgroup_hooks_run_on_cgroups_device_hooks_on_interfaces():
    p = doc("interfaces: [eth0]\ncgroups: [app/web, /sys/fs/cgroup/unified/db/]\n"
            "hooks:\n  tc-ingress: {default: allow}\n  cgroup-egress: {default: deny}\n")
    assert p.cgroups == ("/sys/fs/cgroup/unified/app/web", "/sys/fs/cgroup/unified/db")   # relative: to the mount
    state = desired_state([p])
    assert sorted((d, h.value) for d, h in state) == [
        ("/sys/fs/cgroup/unified/app/web", "cgroup-egress"), ("/sys/fs/cgroup/unified/db", "cgroup-egress"),
        ("eth0", "tc-ingress")]


@pytest.mark.parametrize("body, says", [
    ("cgroups: [x]\nhooks:\n  tc-ingress: {}\n", "run on interfaces"),
    ("interfaces: [eth0]\nhooks:\n  cgroup-connect: {}\n", "run on cgroups"),
    ("hooks:\n  cgroup-bind: {}\n", "name the targets"),
    ("interfaces: [eth0]\ncgroups: [x]\nhooks:\n  xdp: {}\n", "no cgroup-\\* hook"),
])
def test_targets_and_hooks_must_agree(body, says):
    with pytest.raises(PolicyError, match=says):
        doc(body)


@pytest.mark.parametrize("hook, rule, says", [
    ("cgroup-egress", "{name: r, vlan: 5}", "no VLAN tag"),
    ("cgroup-ingress", "{name: r, action: redirect, redirect: {interface: lo}}", "only pass or drop"),
    ("cgroup-connect", "{name: r, protocol: tcp, tcp_flags: syn}", "no tcp_flags"),
    ("cgroup-connect", "{name: r, ct: established}", "no ct"),
    ("cgroup-connect", "{name: r, protocol: tcp, src_port: 80}", "matches the destination"),
    ("cgroup-bind", "{name: r, dst: 198.18.0.0/15}", "matches the local address"),
])
def test_fields_a_cgroup_hook_cannot_match_are_refused(hook, rule, says):
    with pytest.raises(PolicyError, match=says):
        doc(f"cgroups: [x]\nhooks:\n  {hook}:\n    rules: [{rule}]\n")


def test_export_names_cgroups_and_applies_back_to_the_same_state():
    p = doc("cgroups: [a]\nhooks:\n  cgroup-connect:\n    rules: [{name: r, protocol: tcp, dst_port: 5432, "
            "action: drop}]\n  cgroup-bind: {default: allow}\n")
    state = desired_state([p])
    text = export_text(state)
    assert "cgroups:" in text and "interfaces" not in text
    assert desired_state(load_policies(text, "export")) == state


def test_one_cgroup_in_two_documents_is_refused():
    text = "version: 1\ncgroups: [a]\nhooks: {cgroup-bind: {}}\n---\nversion: 1\ncgroups: [/sys/fs/cgroup/unified/a]\n" \
           "hooks: {cgroup-connect: {}}\n"
    with pytest.raises(PolicyError, match="already in document 1"):
        load_policies(text, "p.yaml")


def test_target_dir_names_round_trip():
    for t in ("eth0", "/sys/fs/cgroup/unified/a b/c%d"):
        assert cgroups.from_dir_name(cgroups.dir_name(t)) == t
        assert "/" not in cgroups.dir_name(t)
    assert Hook("cgroup-connect").on_cgroup and not Hook("xdp").on_cgroup


def test_the_agent_reports_a_cgroup_document_instead_of_half_keeping_it(tmp_path):
    from bpfgate.agent import desired

    (tmp_path / "a.yaml").write_text("version: 1\ninterfaces: [eth0]\ncgroups: [x]\n"
                                     "hooks: {tc-ingress: {}, cgroup-egress: {}}\n")
    [pf] = desired.read(str(tmp_path), ["eth0"])
    assert pf.policies == [] and "does not keep cgroup policies" in pf.error
