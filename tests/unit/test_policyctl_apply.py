"""apply / confirm / live edits against MemoryBackend (the control-plane logic; the kernel side is in
tests/kernel/test_policyctl_*.py): idempotence, all-or-nothing across interfaces, guard, rollback timer."""

from __future__ import annotations

import json
import os
import time

import pytest

from bpfgate import policyctl
from bpfgate.errors import BpfgateError, NotFound, PolicyError
from bpfgate.policy.model import Hook, HookPolicy, Policy, Rule
from bpfgate.policyctl import pending as pconfirm
from bpfgate.policyctl.export import desired_state

TI, TE, XDP = Hook.TC_INGRESS, Hook.TC_EGRESS, Hook.XDP
EST = {"name": "est", "ct": ["established", "related"]}
SSH = {"name": "ssh", "protocol": "tcp", "dst_port": 22}
WEB = {"name": "web", "protocol": "tcp", "dst_port": 80, "action": "drop"}


def pol(devs, hooks):
    return Policy.model_validate({"interfaces": devs, "hooks": hooks})


BASE = pol(["eth0", "eth1"], {"tc-ingress": {"default": "deny", "rules": [EST, SSH, WEB]},
                              "tc-egress": {"rules": [{"name": "dns", "protocol": "udp", "dst_port": 53}]}})


@pytest.fixture
def be():
    return policyctl.MemoryBackend()


def test_apply_then_reapply_is_no_change(be):
    r = policyctl.apply(BASE, backend=be, netns="ns")
    assert r.applied and r.changed and [x[0] for x in be.log] == ["attach"] * 4
    assert be.running("ns") == desired_state([BASE])
    n = len(be.log)
    r2 = policyctl.apply(BASE, backend=be, netns="ns")
    assert not r2.changed and not r2.applied and len(be.log) == n
    assert r2.plan.summary() == "no change: 4 hook(s) already run this policy"
    assert r2.to_dict()["changed"] is False


def test_one_rule_changed_swaps_only_that_hook(be):
    policyctl.apply(BASE, backend=be)
    n = len(be.log)
    changed = pol(["eth0", "eth1"], {"tc-ingress": {"default": "deny", "rules": [EST, SSH, dict(WEB, dst_port=8080)]},
                                     "tc-egress": {"rules": [{"name": "dns", "protocol": "udp", "dst_port": 53}]}})
    r = policyctl.apply(changed, backend=be)
    assert be.log[n:] == [("swap", "eth0", TI), ("swap", "eth1", TI)]
    assert [(c.kind, c.name) for h in r.plan.changes() for c in h.rules] == [("changed", "web")] * 2


def test_failure_on_second_interface_rolls_back_the_first(be):
    policyctl.apply(BASE, backend=be)
    before = be.running(None)
    new = pol(["eth0", "eth1"], {"tc-ingress": {"default": "deny", "rules": [EST, SSH]}})
    be.fail_on.add(("swap", "eth1", TI))
    with pytest.raises(policyctl.ApplyError) as e:
        policyctl.apply(new, backend=be)
    assert be.running(None) == before
    assert "injected failure" in str(e.value) and "rolled back" in str(e.value)
    assert be.log[-2:] == [("swap", "eth0", TI), ("swap", "eth0", TI)]   # there and back


def test_failure_on_attach_undoes_attaches_and_detaches_are_last(be):
    policyctl.apply(pol(["eth0"], {"tc-ingress": {"rules": [SSH]}, "tc-egress": {}}), backend=be)
    before = be.running(None)
    be.fail_on.add(("attach", "eth1", XDP))
    with pytest.raises(policyctl.ApplyError):
        policyctl.apply(pol(["eth0", "eth1"], {"xdp": {"rules": [SSH]}}), backend=be)
    assert be.running(None) == before                       # the eth0 xdp attach undone, nothing detached
    assert ("detach", "eth0", TE) not in be.log


def test_rollback_failure_is_reported(be):
    policyctl.apply(BASE, backend=be)
    new = pol(["eth0", "eth1"], {"tc-ingress": {"default": "deny", "rules": [EST]}})

    class Flaky(policyctl.MemoryBackend):
        calls = 0

        def swap(self, dev, hook, netns, hp):
            Flaky.calls += 1
            if Flaky.calls >= 2:
                raise BpfgateError(f"swap {dev}", "boom")
            super().swap(dev, hook, netns, hp)

    fb = Flaky()
    fb.hooks = {k: dict(v) for k, v in be.hooks.items()}
    with pytest.raises(policyctl.ApplyError) as e:
        policyctl.apply(new, backend=fb)
    assert e.value.rollback_errors and "rollback FAILED" in str(e.value)


def test_guard_refuses_without_force_and_changes_nothing(be):
    cut = pol(["eth0"], {"tc-ingress": {"default": "deny", "rules": [SSH]}})
    with pytest.raises(BpfgateError, match="cut established connections"):
        policyctl.apply(cut, backend=be)
    assert be.log == []
    policyctl.apply(cut, backend=be, force=True)
    assert be.running(None)[("eth0", TI)].default == "deny"


def test_compile_error_is_refused_before_any_change(be):
    policyctl.apply(BASE, backend=be)
    n = len(be.log)
    huge = {"name": "huge", "src": [f"198.18.{i}.{j}/32" for i in range(2) for j in range(0, 256, 2)],
            "protocol": "tcp", "dst_port": [str(p) for p in range(1, 2001, 3)]}
    with pytest.raises(PolicyError, match="expands to"):
        policyctl.apply(pol(["eth0"], {"tc-ingress": {"rules": [huge]}}), backend=be)
    assert len(be.log) == n


HUGE_YAML = ("      - name: huge\n        protocol: tcp\n        src: [{src}]\n        dst_port: [{ports}]\n"
             .format(src=", ".join(f"198.18.{i}.{j}/32" for i in range(2) for j in range(0, 256, 2)),
                     ports=", ".join(str(p) for p in range(1, 2001, 3))))


def test_compile_error_names_the_line_in_a_file_of_several_documents(be, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("interfaces: [eth1]\nhooks:\n  tc-ingress:\n    rules:\n      - {name: ssh, protocol: tcp}\n"
                 "---\n# the second document\ninterfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n"
                 "      - {name: ssh, protocol: tcp}\n" + HUGE_YAML)
    with pytest.raises(PolicyError, match=r"^policy p\.yaml:13 hooks\.tc-ingress\.rules\[1\]: rule 'huge' expands to"):
        policyctl.apply(str(f), backend=be)
    assert be.log == []


def test_compile_error_of_a_file_changed_since_it_was_read_names_no_line(be, tmp_path, monkeypatch):
    import importlib

    apply_mod = importlib.import_module("bpfgate.policyctl.apply")   # the module, not policyctl.apply()
    f = tmp_path / "p.yaml"
    f.write_text("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n" + HUGE_YAML)
    real = apply_mod.compile_hook

    def rewritten_first(*a, **kw):   # someone edits the file between its reading and the compiler's error
        f.write_text("# edited\n" + f.read_text())
        return real(*a, **kw)
    monkeypatch.setattr(apply_mod, "compile_hook", rewritten_first)
    with pytest.raises(PolicyError, match=r"^policy p\.yaml hooks\.tc-ingress\.rules\[0\]: rule 'huge' expands to"):
        policyctl.apply(str(f), backend=be)
    assert be.log == []


def test_dry_run_changes_nothing(be):
    r = policyctl.apply(BASE, backend=be, dry_run=True)
    assert r.dry_run and r.changed and not r.applied and be.log == []


def test_apply_from_file_and_detach_of_hooks_left_out(be, tmp_path):
    policyctl.apply(BASE, backend=be)
    f = tmp_path / "p.yaml"
    f.write_text("interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n      - {name: ssh, protocol: tcp, dst_port: 22}\n")
    r = policyctl.apply(str(f), backend=be)
    assert {(h.dev, h.hook.value, h.action) for h in r.plan.changes()} == {("eth0", "tc-ingress", "swap"),
                                                                           ("eth0", "tc-egress", "detach")}
    assert set(be.running(None)) == {("eth0", TI), ("eth1", TI), ("eth1", TE)}   # eth1: not in the file


# ---- confirm / rollback ----------------------------------------------------------------------------------

def test_unconfirmed_change_is_rolled_back(be, tmp_path):
    policyctl.apply(BASE, backend=be, netns="ns")
    before = be.running("ns")
    new = pol(["eth0"], {"tc-ingress": {"default": "deny", "rules": [EST]}, "xdp": {"rules": [WEB]}})
    r = policyctl.apply(new, backend=be, netns="ns", confirm=0.2, state_root=str(tmp_path), start_watcher=False)
    assert r.pending and os.path.exists(r.pending.path)
    assert be.running("ns") != before
    with pytest.raises(BpfgateError, match="waiting for confirmation"):
        policyctl.apply(BASE, backend=be, netns="ns", state_root=str(tmp_path))
    assert pconfirm.watch(r.pending.path, backend=be, poll=0.02) == 0
    assert be.running("ns") == before                     # eth0 xdp detached, tc-ingress and egress restored
    assert not os.path.exists(r.pending.path)
    last = pconfirm.last_rollback("ns", str(tmp_path))
    assert last["ok"] and "restored 3 hook(s)" in last["detail"]
    with pytest.raises(NotFound) as e:                   # too late
        policyctl.confirm("ns", state_root=str(tmp_path))
    assert "rolled back" in str(e.value)
    # a later change, confirmed: confirming again names the confirmation, not the older rollback
    r = policyctl.apply(new, backend=be, netns="ns", confirm=5, state_root=str(tmp_path), start_watcher=False)
    policyctl.confirm("ns", state_root=str(tmp_path))
    with pytest.raises(NotFound) as e:
        policyctl.confirm("ns", state_root=str(tmp_path))
    assert "the last change was confirmed at" in str(e.value) and "rolled back" not in str(e.value)


def test_confirmed_change_stays(be, tmp_path):
    policyctl.apply(BASE, backend=be)
    new = pol(["eth0"], {"tc-ingress": {"default": "deny", "rules": [EST]}})
    r = policyctl.apply(new, backend=be, confirm=5, state_root=str(tmp_path), start_watcher=False)
    after = be.running(None)
    p = policyctl.confirm(state_root=str(tmp_path))
    assert 0 < p.remaining <= 5
    t = time.monotonic()
    assert pconfirm.watch(r.pending.path, backend=be, poll=0.02) == 0   # exits at once: confirmed
    assert time.monotonic() - t < 1 and be.running(None) == after
    with pytest.raises(NotFound):
        policyctl.confirm(state_root=str(tmp_path))


def test_confirm_without_change_or_bad_seconds(be, tmp_path):
    policyctl.apply(BASE, backend=be)
    r = policyctl.apply(BASE, backend=be, confirm=5, state_root=str(tmp_path), start_watcher=False)
    assert r.pending is None and pconfirm.read(None, str(tmp_path)) is None   # nothing changed: nothing to roll back
    with pytest.raises(BpfgateError, match="between"):
        policyctl.apply(BASE, backend=be, confirm=0)


def test_failed_apply_disarms_its_rollback(be, tmp_path):
    be.fail_on.add(("attach", "eth1", TI))
    with pytest.raises(policyctl.ApplyError):
        policyctl.apply(BASE, backend=be, confirm=5, state_root=str(tmp_path), start_watcher=False)
    assert pconfirm.read(None, str(tmp_path)) is None and be.running(None) == {}


def test_pending_file_round_trip(tmp_path):
    prev = {("eth0", TI): HookPolicy(default="deny", rules=(Rule.model_validate(EST),)), ("eth1", XDP): None}
    p = pconfirm.arm(pconfirm.Pending("ns", time.time() + 9, prev, "tc"), str(tmp_path), start_watcher=False)
    with open(p.path) as f:
        assert pconfirm.Pending.from_json(json.load(f)).previous == prev


# ---- live edits, listing ----------------------------------------------------------------------------------

def test_add_and_delete_rules(be):
    policyctl.apply(BASE, backend=be)
    assert policyctl.add_rule("eth0", "tc-ingress", {"name": "dns", "protocol": "udp", "dst_port": 53},
                              backend=be) == 3
    assert policyctl.add_rule("eth0", "tc-ingress", {"name": "first", "src": "198.18.9.0/24", "action": "drop"},
                              before="est", backend=be) == 0
    assert policyctl.add_rule("eth0", "tc-ingress", Rule(name="mid"), after="ssh", backend=be) == 3
    assert policyctl.add_rule("eth0", "tc-ingress", Rule(name="p1"), position=1, backend=be) == 1
    names = [r.name for r in be.running(None)[("eth0", TI)].rules]
    assert names == ["first", "p1", "est", "ssh", "mid", "web", "dns"]
    policyctl.delete_rule("eth0", "tc-ingress", "mid", backend=be)
    assert "mid" not in [r.name for r in be.running(None)[("eth0", TI)].rules]
    assert be.running(None)[("eth1", TI)] == BASE.hooks[TI]   # the other interface untouched


@pytest.mark.parametrize("kw, err", [
    ({"rule": {"name": "ssh"}}, "exists"),
    ({"rule": {"name": "x"}, "before": "nope"}, "no rule named"),
    ({"rule": {"name": "x"}, "before": "ssh", "after": "est"}, "only one"),
    ({"rule": {"name": "x"}, "position": 9}, "outside"),
    ({"rule": {"name": "x", "dst_port": 80}}, "ports need protocol"),
    ({"rule": {"name": "x", "protocol": "tcp", "dst_port": 70000}}, "out of range"),
    ({"rule": {"name": "x", "colour": "red"}}, "unknown field"),
    ({"rule": {"name": "x"}, "dev": "eth7"}, "no bpfgate policy"),
    ({"rule": {"name": "x"}, "hook": "tc-sideways"}, "unknown hook"),
])
def test_add_rule_refusals_change_nothing(be, kw, err):
    policyctl.apply(BASE, backend=be)
    state, n = be.running(None), len(be.log)
    args = {"dev": "eth0", "hook": "tc-ingress", **kw}
    with pytest.raises(BpfgateError, match=err):
        policyctl.add_rule(args.pop("dev"), args.pop("hook"), args.pop("rule"), backend=be, **args)
    assert be.running(None) == state and len(be.log) == n


def test_delete_guard_and_unknown_rule(be):
    policyctl.apply(BASE, backend=be)
    with pytest.raises(BpfgateError, match="cut established"):
        policyctl.delete_rule("eth0", "tc-ingress", "est", backend=be)
    with pytest.raises(NotFound):
        policyctl.delete_rule("eth0", "tc-ingress", "nope", backend=be)
    policyctl.delete_rule("eth0", "tc-ingress", "est", backend=be, force=True)


def test_rules_listing_and_export_round_trip(be):
    policyctl.apply(BASE, backend=be, netns="ns")
    be.packets[("ns", "eth0", TI)] = {"web": 7, "(default)": 2}
    rows = policyctl.rules("eth0", netns="ns", backend=be)
    assert [(r.hook, r.position, r.name) for r in rows][:5] == [
        ("tc-egress", 0, "dns"), ("tc-egress", None, "(default)"), ("tc-ingress", 0, "est"),
        ("tc-ingress", 1, "ssh"), ("tc-ingress", 2, "web")]
    web = next(r for r in rows if r.name == "web" and r.hook == "tc-ingress")
    assert (web.packets, web.bytes, web.action, web.match) == (7, 700, "drop", "protocol=tcp dst_port=80")
    assert rows[-1].to_dict()["name"] == "(default)" and rows[-1].packets == 2
    text = policyctl.export(netns="ns", backend=be)
    r = policyctl.apply(policyctl.load_policies(text), netns="ns", backend=be)
    assert not r.changed
    with pytest.raises(NotFound):
        policyctl.export("eth5", netns="ns", backend=be)
    with pytest.raises(NotFound):
        policyctl.rules("eth5", netns="ns", backend=be)


def test_deadline_restarts_after_the_change_and_watcher_rereads_it(be, tmp_path):
    policyctl.apply(BASE, backend=be)
    r = policyctl.apply(pol(["eth0"], {"tc-ingress": {"default": "deny", "rules": [EST]}}), backend=be,
                        confirm=0.3, state_root=str(tmp_path), start_watcher=False)
    pconfirm.restart_clock(r.pending, 0.6)                 # e.g. the clock restarted later
    t = time.monotonic()
    assert pconfirm.watch(r.pending.path, backend=be, poll=0.02) == 0
    assert time.monotonic() - t >= 0.5


def test_overdue_change_without_watcher_is_rolled_back_by_the_next_apply(be, tmp_path):
    policyctl.apply(BASE, backend=be)
    before = be.running(None)
    new = pol(["eth0"], {"tc-ingress": {"default": "deny", "rules": [EST]}})
    r = policyctl.apply(new, backend=be, confirm=0.05, state_root=str(tmp_path), start_watcher=False)
    assert r.pending.watcher_pid == 0                       # no watcher: as if it had been killed
    time.sleep(0.1)
    with pytest.raises(BpfgateError, match="restored now"):
        policyctl.apply(new, backend=be, state_root=str(tmp_path))
    assert be.running(None) == before and pconfirm.read(None, str(tmp_path)) is None
    assert policyctl.apply(new, backend=be, state_root=str(tmp_path)).applied


def test_changes_in_one_namespace_are_serialised(be, tmp_path):
    import threading

    done = threading.Event()

    def worker():
        policyctl.apply(BASE, backend=be, netns="ns", state_root=str(tmp_path))
        done.set()

    with pconfirm.locked("ns", str(tmp_path)):      # e.g. a watcher rolling back, another apply
        t = threading.Thread(target=worker)
        t.start()
        assert not done.wait(0.3) and be.log == []
    t.join(5)
    assert done.is_set() and len(be.log) == 4


def test_a_swap_is_compiled_once_as_the_engine_would_compile_it():
    """precheck compiles a swap against the running generation (live=...), exactly as the engine's swap would
    (other generation, unchanged rules keeping their slots): execute hands that to the backend."""
    from bpfgate.policy.compile import Limits, compile_hook
    from bpfgate.policy.live import swap as live_swap
    from bpfgate.policyctl.apply import _swap_key, precheck
    from bpfgate.policyctl.plan import plan as make_plan

    old = HookPolicy.model_validate({"rules": [{"name": f"r{i}", "src": f"198.18.{i}.0/24", "action": "drop"}
                                               for i in range(20)]})
    new = HookPolicy.model_validate({"rules": [{"name": f"r{i}", "src": f"198.18.{i}.0/24", "action": "drop"}
                                               for i in range(1, 20)] + [{"name": "x", "protocol": "udp"}]})
    running = compile_hook(old, Hook.TC_INGRESS, ifindex=lambda n: 1)
    p = make_plan({("eth0", Hook.TC_INGRESS): new}, {("eth0", Hook.TC_INGRESS): old})
    got = precheck(p, ifindex=lambda n: 1, live=lambda dev, hook: (running, Limits()))
    compiled, base = got[_swap_key(p.hooks[0])]
    assert base is running and compiled == live_swap(running, new, ifindex=lambda n: 1)
    assert compiled.gen == running.gen ^ 1 and compiled.by_name["r5"] == running.by_name["r5"]
