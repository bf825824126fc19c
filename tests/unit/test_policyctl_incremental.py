"""Reading only the rules that changed between the file applied last and a new one (policyctl/incremental.py):
which changes it takes as live edits, the edits' order, and every case it leaves to the full path."""

from __future__ import annotations

import random

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


def _batch(names: list[str], edits: list[tuple]) -> list[str]:
    """The rule names after LiveHook.batch's edits: deletes, replaces (in place), adds at their index."""
    out = [n for n in names if n not in {e[1] for e in edits if e[0] == "delete"}]
    for e in edits:
        if e[0] == "add":
            out.insert(e[2], e[1].name)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_changes_give_edits_that_make_the_new_list_or_none(seed):
    import importlib
    import random

    export = importlib.import_module("bpfgate.policyctl.export")   # the modules (policyctl.export and
    plan = importlib.import_module("bpfgate.policyctl.plan")       # policyctl.plan are also functions)

    rng = random.Random(seed)
    old_names = [f"r{i}" for i in range(60)]
    new_names, changed = list(old_names), set()
    for _ in range(rng.randint(1, 5)):
        op = rng.choice(["delete", "rename", "insert", "change", "change", "move"])
        i = rng.randrange(len(new_names))
        if op == "delete":
            del new_names[i]
        elif op == "rename":
            new_names[i] = new_names[i] + "x"
        elif op == "insert":
            new_names.insert(i, f"n{rng.randrange(1000)}")
        elif op == "change":
            changed.add(new_names[i])   # same name, another protocol: a replace
        else:
            new_names.insert(rng.randrange(len(new_names)), new_names.pop(i))
    if len(set(new_names)) != len(new_names):
        return
    old, new = text(old_names), text(new_names)
    for name in changed:
        new = new.replace(f"name: {name}\n        protocol: udp", f"name: {name}\n        protocol: sctp")
    ch = change(new, old)
    if ch is None:
        return   # the full path (a move, too many changes ...): what it must do is test_what_it_leaves...
    edits = ch.forward[("eth0", Hook.TC_INGRESS)]
    assert _batch(old_names, edits) == new_names
    assert _batch(new_names, ch.backward[("eth0", Hook.TC_INGRESS)]) == old_names
    # the agent's way: the new documents patched from the old ones, and the plan it remembers for them
    old_docs = export.load_policies(old, "policy.yaml")
    docs, split = inc.patched(new, old, old_docs, "policy.yaml")
    assert split.lists[0].items == inc.rules_lists(new)[0].items
    want = export.load_policies(new, "policy.yaml")
    assert docs[0].hooks == want[0].hooks
    o, n = old_docs[0].hooks[Hook.TC_INGRESS], docs[0].hooks[Hook.TC_INGRESS]
    remembered = plan.rule_changes(o, n)
    plan._known_changes.clear()
    assert remembered == plan.rule_changes(o, n)


def test_a_kept_split_of_the_old_text_gives_the_same_change():
    old = text(BASE)
    new = text(BASE).replace("name: r5\n", "name: r5x\n")
    kept = inc.split(old)
    a, b = change(new, old), inc.small_change(new, old, "policy.yaml", None, kept)
    assert a.forward == b.forward and a.patches == b.patches


def _by_sets(old: list[str], new: list[str], most: int):
    """list_change() as the sets alone say it: what every path of it must give."""
    if len(set(old)) != len(old) or len(set(new)) != len(new):
        return None
    gone, came = set(old) - set(new), set(new) - set(old)
    if len(gone) + len(came) > most:
        return None
    if [t for t in old if t not in gone] != [t for t in new if t not in came]:
        return None
    return ([(i, t) for i, t in enumerate(old) if t in gone], [(i, t) for i, t in enumerate(new) if t in came])


@pytest.mark.parametrize("seed", range(60))
def test_list_change_of_lists_edited_in_place_or_not_is_what_the_sets_say(seed):
    rng = random.Random(seed)
    old = [f"item {i}" for i in range(rng.choice([0, 1, 5, 40]))]
    new = list(old)
    for _ in range(rng.randint(0, 6)):
        kind = rng.choice(["edit", "edit", "swap", "dup", "back", "add", "del"])
        i = rng.randrange(len(new)) if new else None
        if kind == "edit" and new:
            new[i] = f"edited {rng.randrange(3)}"   # two edits may write the same item
        elif kind == "swap" and len(new) > 1:
            j = rng.randrange(len(new))
            new[i], new[j] = new[j], new[i]
        elif kind == "dup" and new:
            new[i] = rng.choice(new)
        elif kind == "back" and new and old:
            new[i] = rng.choice(old)   # an old item again, maybe elsewhere
        elif kind == "add":
            new.insert(rng.randint(0, len(new)), f"added {rng.randrange(10)}")
        elif kind == "del" and new:
            del new[i]
    most = rng.choice([2, 4, 100])
    got = inc.list_change(old, new, most)
    want = _by_sets(old, new, most)
    assert (None if got is None else (got.removed, got.added)) == want, (old, new, most)


@pytest.mark.parametrize("new", [
    ["a", "X", "c", "d"],          # one edited in place
    ["a", "X", "c", "Y"],          # two
    ["a", "X", "c", "X"],          # two edited to the same item: a duplicate
    ["a", "d", "c", "d"],          # edited to another item of the list: a duplicate
    ["a", "c", "b", "d"],          # two swapped: a move
    ["a", "b", "c", "d"],          # nothing
])
def test_list_change_in_place_cases(new):
    old = ["a", "b", "c", "d"]
    got = inc.list_change(old, new, 100)
    assert (None if got is None else (got.removed, got.added)) == _by_sets(old, new, 100)
