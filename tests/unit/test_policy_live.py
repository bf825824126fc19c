"""Live edits: each op's diff, applied to a model of the kernel maps, gives the classifier of the edited
policy, writes nothing that does not change, and keeps slots (counters) of untouched rules."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest

from bpfgate.errors import PolicyError
from bpfgate.policy import layout as L
from bpfgate.policy.classify import Reference, naive
from bpfgate.policy.compile import Limits, compile_hook
from bpfgate.policy.live import LiveHook, swap
from bpfgate.policy.model import Hook, HookPolicy, Rule
from bpfgate.policy.packet import Packet

from policy_gen import random_packet, random_policy, random_rule

LIMITS = Limits(max_shapes=32)


class KernelModel:
    """The maps as the kernel would hold them after applying diffs in the documented order."""

    def __init__(self, compiled):
        self.cls, self.rules, self.conf = dict(compiled.cls), dict(compiled.rules), compiled.conf()
        self.classes = compiled.classes   # bg_pfx_top/bg_pfx: fixed for a generation, live edits never write them

    def apply(self, d):
        for rid, act in d.rules_update.items():
            assert rid not in self.rules, "a live slot was overwritten"
            self.rules[rid] = act
        self.conf = d.conf_before or self.conf
        for k, v in d.cls_update.items():
            assert self.cls.get(k) != v, "no-op write"
            self.cls[k] = v
        for k in d.cls_delete:
            del self.cls[k]
        self.conf = d.conf_after or self.conf
        for rid in d.rules_free:
            assert all(v.rule_id != rid for v in self.cls.values()), "freed slot still referenced"
            del self.rules[rid]

    def reference(self, names):
        return Reference(self.conf, self.cls, self.rules, names, self.classes)


def _check(kernel, live, rules, default, rng, n=300):
    hp = HookPolicy(default=default, rules=tuple(rules))
    assert kernel.cls == live.c.cls
    ref = kernel.reference(live.c.names)
    for _ in range(n):
        pkt = random_packet(rng, hp)
        got, want = ref.classify(pkt), naive(hp, pkt)
        assert (got.name, got.action) == (want.name, want.action), pkt


@pytest.mark.parametrize("seed", range(12))
def test_random_edit_sequences(seed):
    _random_edits(seed)


@pytest.mark.parametrize("seed", range(6))
def test_random_edit_sequences_with_address_lists_as_sets(seed, monkeypatch):
    """Every rule matching one address list alone compiled as a set (nft's anonymous set; only long lists
    are, as they are): live edits on top of those sets' stage 0 agree with naive() too."""
    from bpfgate.policy import sets

    monkeypatch.setattr(sets, "INLINE_SET_MIN", 1)
    _random_edits(1000 + seed)


def _random_edits(seed: int) -> None:
    rng = random.Random(seed)
    hp = random_policy(rng, rng.randrange(0, 12))
    try:
        compiled = compile_hook(hp, Hook.TC_INGRESS, limits=LIMITS)
    except PolicyError:
        pytest.skip("policy too varied for the limits")
    live, kernel, rules = LiveHook(compiled, LIMITS), KernelModel(compiled), list(hp.rules)
    for step in range(25):
        op = rng.choice(["add", "add", "delete", "replace"]) if rules else "add"
        slots_before = {r.name: live.rule_id(r.name) for r in rules}
        try:
            if op == "add":
                rule = random_rule(rng, 100 + step)
                pos = rng.randrange(len(rules) + 1)
                diff = live.add(rule, pos)
                rules.insert(pos, rule)
            elif op == "delete":
                victim = rules.pop(rng.randrange(len(rules)))
                diff = live.delete(victim.name)
            else:
                i = rng.randrange(len(rules))
                new = random_rule(rng, 100 + step).model_copy(update={"name": rules[i].name})
                diff = live.replace(rules[i].name, new)
                rules[i] = new
        except PolicyError as e:
            assert "shape" in str(e) or "gap" in str(e)   # only shapes/priorities may refuse a live edit
            continue
        kernel.apply(diff)
        live.release(diff.rules_free)
        edited = new.name if op == "replace" else None
        for r in rules:   # untouched rules keep their slot, hence their counters
            if r.name in slots_before and r.name != edited:
                assert live.rule_id(r.name) == slots_before[r.name]
        _check(kernel, live, rules, hp.default, rng)
        names = live.names()   # the view a one-rule edit checks reads as the list of names in order
        assert list(names) == [r.name for r in rules] and len(names) == len(rules)
        assert all(r.name in names and names.index(r.name) == i and names[i] == r.name for i, r in enumerate(rules))
        assert "no-such-rule" not in names and names[1:3] == [r.name for r in rules[1:3]]


def test_a_rule_whose_atoms_take_an_unused_shape_and_a_new_one_keeps_both():
    """One atom of an added rule goes into a shape no rule uses any more (its keys are written only after
    every atom is placed), another needs a new shape: the new one must not take the unused one's place,
    or the first atom's keys sit in a shape of another mask and match the wrong packets."""
    hp = HookPolicy(rules=(Rule(name="a", dst="10.0.0.0/8", action="drop"),))
    raw = Limits(classes=False)   # a shape of a raw /8 destination prefix (no stage 0 class)
    c = compile_hook(hp, Hook.TC_INGRESS, limits=raw)
    live, kernel = LiveHook(c, raw), KernelModel(c)
    for d in (live.delete("a"), live.add(Rule(name="b", dst=["0.0.0.0/0", "198.18.144.0/23"], action="drop"))):
        kernel.apply(d)
        live.release(d.rules_free)
    b = live.rule_id("b")
    assert len({k[L.KEY_SHAPE_OFF] for k in live.c.rule_keys[b]}) == 2
    _check(kernel, live, [Rule(name="b", dst=["0.0.0.0/0", "198.18.144.0/23"], action="drop")], "allow",
           random.Random(3))
    ref = kernel.reference(live.c.names)
    for dst in ("198.19.255.128", "10.1.2.3", "198.18.145.1"):
        pkt = Packet(family=4, src=ipaddress.ip_address("198.18.0.1"), dst=ipaddress.ip_address(dst), proto=6)
        assert ref.classify(pkt).name == "b"


def test_add_is_minimal_and_delete_restores_shadowed():
    hp = HookPolicy(rules=(Rule(name="a", protocol="tcp", dst_port=80, action="drop"),))
    c = compile_hook(hp, Hook.TC_INGRESS)
    live = LiveHook(c)
    before = dict(c.cls)
    d = live.add(Rule(name="b", protocol="tcp", dst_port=[80, 81]), position=0)
    assert len(d.cls_update) == 2 and not d.cls_delete and len(d.rules_update) == 1
    assert d.conf_before is not None  # best priority of the shape went down
    d2 = live.delete("b")
    assert dict(c.cls) == before   # rule a wins port 80 again
    assert len(d2.cls_update) == 1 and len(d2.cls_delete) == 1 and d2.rules_free
    d3 = live.replace("a", Rule(name="a", protocol="tcp", dst_port=80, action="drop", log={"rate": 1}))
    assert d3.rules_update and d3.rules_free and len(d3.cls_update) == 1   # new action: new slot


def test_priority_gap_exhaustion_is_reported():
    live = LiveHook(compile_hook(HookPolicy(rules=(Rule(name="a"), Rule(name="b"))), Hook.XDP))
    with pytest.raises(PolicyError, match="no priority gap"):
        for i in range(20):
            live.add(Rule(name=f"x{i}", protocol=6), position=1)


def test_swap_flips_generation_and_keeps_unchanged_slots():
    r1, r2 = Rule(name="a", protocol="udp"), Rule(name="b", protocol="tcp", dst_port=22, action="drop")
    old = compile_hook(HookPolicy(rules=(r1, r2)), Hook.TC_INGRESS)
    new = swap(old, HookPolicy(rules=(r2.model_copy(update={"action": "pass"}), r1)))
    assert new.gen == 1 and all(k[1] == 1 for k in new.cls)
    assert not set(new.cls) & set(old.cls)   # generations never share a key
    ra, rb_old, rb_new = (next(i for i, n in c.names.items() if n == nm)
                          for c, nm in ((new, "a"), (old, "b"), (new, "b")))
    assert ra == next(i for i, n in old.names.items() if n == "a")   # same action: same slot
    assert rb_new != rb_old and rb_new not in old.rules            # changed action: fresh slot
    assert Reference.of(new).conf.gen == 1


def test_refused_add_leaves_the_shapes_as_they_were():
    """A refused edit changes nothing, also when it had reused the id of a shape left empty by a delete
    (a journal replay must reach the same state as the editing process)."""
    hp = HookPolicy(rules=(Rule(name="web", protocol="tcp", dst_port=80, action="drop"),
                           Rule(name="net", src="10.0.0.0/8", vlan=7, action="drop")))
    limits = Limits(max_shapes=2, classes=False)
    live = LiveHook(compile_hook(hp, Hook.TC_INGRESS, limits=limits), limits)
    live.delete("net")
    before = dict(live.c.shapes)
    two_new_masks = Rule(name="new", src=["192.0.2.0/24", "198.51.100.0/25"], action="drop")
    with pytest.raises(PolicyError):
        live.add(two_new_masks)
    assert live.c.shapes == before and not live.fresh


def test_a_key_added_live_is_in_its_shapes_filter_before_it_is_written():
    """The filter of a shape an edit adds keys to is widened in the bg_conf published before the keys (a
    removed key's bit stays: a stale bit costs a lookup, never a match)."""
    hp = HookPolicy(rules=(Rule(name="a", protocol="tcp", src_port=80, action="drop"),))   # (not the direct shape)
    live = LiveHook(compile_hook(hp, Hook.TC_INGRESS))
    (shape,) = live.conf.shapes
    assert shape.fmask == shape.mask and bin(shape.filter).count("1") == 1
    d = live.add(Rule(name="b", protocol="tcp", src_port=[81, 82], action="drop"))
    (widened,) = d.conf_before.shapes
    assert all(widened.filter >> L.filter_bit(k, widened.fmask) & 1 for k in d.cls_update)
    d2 = live.delete("b")
    assert d2.cls_delete and d2.conf_before is None and d2.conf_after is None
    pkt = Packet(4, ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2"), 6, 81, 5)
    assert Reference(live.conf, live.c.cls, live.c.rules, live.c.names).classify(pkt).name == "(default)"


def test_a_protocol_added_live_to_a_class_keyed_shape_walks_its_tree_before_its_keys_are_written():
    """Conf.tree_protos: the dst tree is walked for TCP only while only TCP rules key on its classes; a UDP
    rule keyed on them widens it in the bg_conf published before its keys."""
    rules = [Rule(name=f"t{i}", protocol="tcp", dst_port=80, src=[f"10.{i}.0.0/16"], dst=[f"192.0.2.{i}/32"],
                  action="drop") for i in range(4)]
    rules.append(Rule(name="nets", src=["10.0.0.0/8", "172.16.0.0/12"], action="drop"))
    live = LiveHook(compile_hook(HookPolicy(rules=tuple(rules)), Hook.TC_INGRESS))
    src, dst = live.conf.tree_protos
    assert dst == 1 << 6 and src == L.ALL_PROTOS   # "nets" matches every protocol
    d = live.add(Rule(name="u", protocol="udp", dst_port=53, dst=["192.0.2.1/32"], src=["10.1.0.0/16"],
                      action="drop"), 0)   # prefixes the generation has classes for
    assert d.conf_before.tree_protos[1] == (1 << 6) | (1 << 17)
    ref = Reference(d.conf_before, live.c.cls, live.c.rules, live.c.names, live.c.classes)
    pkt = Packet(4, ipaddress.ip_address("10.1.1.1"), ipaddress.ip_address("192.0.2.1"), 17, 5, 53)
    assert ref.classify(pkt).name == "u"
    stale = Reference(replace(d.conf_before, tree_protos=(src, dst)), live.c.cls, live.c.rules, live.c.names,
                      live.c.classes)
    assert stale.classify(pkt).name == "nets"   # without the widening: no dst class, "u" missed


def test_a_rule_listing_addresses_alone_is_added_live_past_the_rule_limit():
    """A live add of an inline blocklist (one address list) is held to the tables, not to max_rule_entries;
    a cross product past it is still refused."""
    limits = Limits(max_rule_entries=50)
    hp = HookPolicy(rules=(Rule(name="first", src=[f"198.18.9.{i}/32" for i in range(80)], action="drop"),))
    live = LiveHook(compile_hook(hp, Hook.TC_INGRESS, limits=limits), limits)
    d = live.add(Rule(name="block", src=[f"198.18.0.{i}/32" for i in range(200)], action="drop"))
    assert len(d.cls_update) == 200
    with pytest.raises(PolicyError, match="expands to 120 entries"):
        live.add(Rule(name="crossed", src=[f"198.18.1.{i}/32" for i in range(60)], protocol="tcp", dst_port=[1, 2]))
    ref = Reference.of(live.c)
    p = Packet(4, ipaddress.ip_address("198.18.0.199"), ipaddress.ip_address("198.18.255.1"), 6, 1, 80)
    assert ref.classify(p).name == "block"


def test_an_address_list_placed_in_a_wider_shape_is_held_to_the_rule_limit():
    """The free bits of the shape an address list lands in multiply its entries: that expansion is held to
    max_rule_entries as any rule's (one entry per address is all a list is granted)."""
    limits = Limits(max_rule_entries=50, max_shapes=1, classes=False)
    hp = HookPolicy(rules=(Rule(name="net", src="10.0.0.0/16", action="drop"),))
    live = LiveHook(compile_hook(hp, Hook.TC_INGRESS, limits=limits), limits)
    with pytest.raises(PolicyError, match="expands to 256 entries"):
        live.add(Rule(name="wide", src=["192.0.0.0/8"], action="drop"))   # 2^8 /16 keys
    d = live.add(Rule(name="many", src=[f"172.{16 + i}.0.0/16" for i in range(60)]))
    assert len(d.cls_update) == 60   # one /16 each: past the limit of 50, as the list is long
