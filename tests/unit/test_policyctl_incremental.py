"""Reading only the rules that changed between the file applied last and a new one (policyctl/incremental.py):
which changes it takes as live edits, the edits' order, and every case it leaves to the full path."""

from __future__ import annotations

import pytest

from bpfgate.policy.hooks import Hook
from bpfgate.policyctl import incremental as inc


def text(rules: list[str], default: str = "allow", hook: str = "tc-ingress", header: str = "") -> str:
    body = "".join(f"      - name: {r}\n        protocol: udp\n        dst_port: {1000 + int(r.strip('rnzx') or 0)}\n"
                   for r in rules)
    return (f"version: 1\n{header}interfaces: [eth0, eth1]\nhooks:\n  {hook}:\n    default: {default}\n"
            f"    rules:\n{body}  tc-egress:\n    default: allow\n    rules:\n      - name: out\n        protocol: tcp\n")


BASE = [f"r{i}" for i in range(100)]


def change(new: str, old: str):
    return inc.small_change(new, old, "policy.yaml", None)


def test_lists_and_items_are_found():
    t = text(["r1", "r2"])
    lists = inc.rules_lists(t)
    assert [len(x.items) for x in lists] == [2, 1]
    assert lists[0].item_text(lists[0].items[1]) == "      - name: r2\n        protocol: udp\n        dst_port: 1002\n"
    assert inc.frame(t, lists, [[lst.item_text(p) for p in lst.items] for lst in lists]) == t


def test_a_few_changed_rules_become_edits_in_batch_order():
    old = text(BASE)
    new_rules = list(BASE)
    new_rules[3] = "r3x"          # renamed: removed + added
    del new_rules[50]             # removed
    new_rules.insert(10, "n10")   # added
    new = text(new_rules).replace("name: r7\n        protocol: udp", "name: r7\n        protocol: tcp")
    ch = change(new, old)
    assert ch is not None
    assert set(ch.forward) == {("eth0", Hook.TC_INGRESS), ("eth1", Hook.TC_INGRESS)}   # the file's interfaces
    edits = ch.forward[("eth0", Hook.TC_INGRESS)]
    assert [(e[0], e[1] if isinstance(e[1], str) else e[1].name) for e in edits] == [
        ("delete", "r3"), ("delete", "r50"), ("replace", "r7"), ("add", "r3x"), ("add", "n10")]
    assert [e[2] for e in edits if e[0] == "add"] == [3, 10]
    kinds = sorted((c.kind, c.name) for h in ch.plan.hooks if h.action == "swap" for c in h.rules)
    assert ("changed", "r7") in kinds and ("removed", "r50") in kinds and ("added", "n10") in kinds
    # the way back undoes it
    back = ch.backward[next(iter(ch.backward))]
    assert [(e[0], e[1] if isinstance(e[1], str) else e[1].name) for e in back] == [
        ("delete", "r3x"), ("delete", "n10"), ("replace", "r7"), ("add", "r3"), ("add", "r50")]


@pytest.mark.parametrize("make_new", [
    lambda: text(BASE, default="deny", hook="tc-egress"),                      # the frame changed
    lambda: text(BASE[1:3] + BASE[:1] + BASE[3:]),                            # a rule moved
    lambda: text([f"z{i}" for i in range(100)]),                               # too many changed
    lambda: text(BASE).replace("dst_port: 1005", "dst_port: nope"),            # a bad rule: the full path says where
    lambda: text(BASE).replace("name: r5\n", "name: r5 # *x\n"),              # YAML it does not read alone
    lambda: text(BASE).replace("    rules:\n      - name: r0", "    rules: [{name: r0}]\n      - name: r0"),
])
def test_what_it_leaves_to_the_full_path(make_new):
    assert change(make_new(), text(BASE)) is None


def test_a_guarded_hook_is_left_to_the_full_path():
    old = text(BASE, default="deny")   # ingress, default deny: the guard reads every rule
    assert change(old.replace("name: r5\n", "name: r5x\n"), old) is None
    old = text(BASE, default="deny", hook="xdp")
    assert change(old.replace("name: r5\n", "name: r5x\n"), old) is None
