"""Engine state persistence without a kernel: a snapshot plus the journal of live edits, replayed by another
process, gives the same LiveHook (slots, priorities, map contents) as the process that made the edits."""

from __future__ import annotations

import pytest

from bpfgate.engine import state as S
from bpfgate.policy.compile import compile_hook
from bpfgate.policy.live import LiveHook
from bpfgate.policy.model import Hook, HookPolicy, Rule


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "STATE_ROOT", str(tmp_path))
    return S.StateStore("eth0", Hook.TC_INGRESS, "ns1")


def rule(d):
    return Rule.model_validate(d)


def test_snapshot_and_journal_replay(store):
    hp = HookPolicy.model_validate({"default": "deny", "rules": [
        {"name": "a", "protocol": "tcp", "dst_port": [80, "1000-2000"]},
        {"name": "b", "src": "198.18.0.0/24", "action": "drop"}]})
    live = LiveHook(compile_hook(hp, Hook.TC_INGRESS, ifindex=lambda _n: 1), ifindex=lambda _n: 1)
    store.save_meta({"prog_id": 1})
    store.snapshot(live, [])
    edits = [("add", {"rule": rule({"name": "c", "protocol": "udp", "src_port": 53}), "position": 0}),
             ("delete", {"name": "a"}),
             ("replace", {"name": "b", "rule": rule({"name": "b", "src": "198.18.1.0/24", "action": "drop"})}),
             ("add", {"rule": rule({"name": "a", "protocol": "tcp", "dst_port": 443}), "position": None})]
    for op, kw in edits:
        if op == "add":
            diff = live.add(kw["rule"], kw["position"])
        elif op == "delete":
            diff = live.delete(kw["name"])
        else:
            diff = live.replace(kw["name"], kw["rule"])
        store.journal(op, **kw)
        if diff.rules_free:
            live.release(diff.rules_free)
            store.journal("release", slots=diff.rules_free)
    again = store.load_live(lambda _n: 1)
    assert again.c.cls == live.c.cls
    assert again.c.rules == live.c.rules and again.c.names == live.c.names and again.c.prios == live.c.prios
    assert again.order == live.order and again.quarantine == live.quarantine
    assert [r for r in S.StateStore.listing("ns1")] == [("eth0", Hook.TC_INGRESS)]
    store.remove()
    assert not store.exists()


def test_journal_refuses_a_non_rule(store):
    import base64
    import pickle

    with pytest.raises(ValueError):
        S._rule(base64.b64encode(pickle.dumps({"name": "x"})).decode())
