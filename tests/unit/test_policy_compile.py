"""Compiler output: record layout, port splitting, shape limits, early stop, slot reuse."""

from __future__ import annotations

import ipaddress
import json
import struct

import pytest
import yaml

from bpfgate.errors import PolicyError
from bpfgate.policy import layout as L
from bpfgate.policy.atoms import port_blocks
from bpfgate.policy.classify import Reference, naive
from bpfgate.policy.compile import PRIO_STEP, Limits, compile_hook
from bpfgate.policy.model import Hook, HookPolicy, Rule
from bpfgate.policy.packet import Packet


def test_record_sizes_and_key_fields():
    assert L.KEY_SIZE == 56 and len(L.Conf(0, 0).pack()) == 80 + L.MAX_SHAPES * 136
    k = L.ClsKey(shape=3, gen=1, have=L.HAVE_PORTS, family=4, proto=6, dport=443,
                 src=ipaddress.ip_address("198.18.0.1").packed + bytes(12))
    raw = k.pack()
    assert raw[0] == 3 and raw[1] == 1 and raw[3] == 4 and struct.unpack_from("=H", raw, 14) == (443,)
    assert raw[16:20] == bytes([198, 18, 0, 1]) and L.ClsKey.unpack(raw) == k


def test_short_key_is_the_c_layout_and_only_for_shapes_within_4_address_bytes():
    """A key of a shape with no address bits past src[0..3]/dst[0..3] goes to bg_cls_short in its 32-byte
    form (fields where the C struct has them); a shape with IPv6 address bits past them keeps the long key."""
    from bpfgate import contract

    k = L.ClsKey(shape=L.SHAPE_SHORT | 2, gen=1, have=7, family=4, proto=17, ct_state=2, vlan=5, sport=7, dport=9,
                 src=bytes([198, 18, 0, 1]) + bytes(12), dst=bytes([10, 0, 0, 2]) + bytes(12), src_cls=3, dst_cls=4)
    name, raw = L.cls_map_key(k.pack())
    C = contract.struct("engine", "bg_cls_short_key")
    assert name == "bg_cls_short" and len(raw) == L.SHORT_KEY_SIZE == 32
    assert raw[C.src4.offset:C.src4.offset + 4] == bytes([198, 18, 0, 1])
    assert raw[C.dst4.offset:C.dst4.offset + 4] == bytes([10, 0, 0, 2])
    assert struct.unpack_from("=II", raw, C.src_cls.offset) == (3, 4) and raw[:16] == k.pack()[:16]
    rules = (Rule(name="v4", src="198.18.0.0/24", dst="10.0.0.0/9", action="drop"),
             Rule(name="v6-32", src="fd00::/32", action="drop"),
             Rule(name="v6-48", src="fd00:0:1::/48", action="drop"))
    c = compile_hook(HookPolicy(rules=rules), Hook.TC_INGRESS, limits=Limits(classes=False))
    short = {c.names[v.rule_id] for k, v in c.cls.items() if k[L.KEY_SHAPE_OFF] & L.SHAPE_SHORT}
    assert short == {"v4", "v6-32"} and len({L.shape_index(s.id) for s in c.conf().shapes}) == len(c.conf().shapes)


def test_direct_shape_keys_go_to_the_array_at_their_index():
    """The shape "protocol P, destination port N" (exactly) carries SHAPE_DIRECT: its keys of tcp, udp and
    sctp go to bg_cls_direct at ((gen & 1) * 3 + slot) << 16 | port, slot = proto & 3 (direct_index() in
    engine.bpf.c), its overlay keys and any other shape's keys to the hash maps; one such shape at most; its
    filter holds only its keys in the hash (none here: the program's loop skips it)."""
    rules = (Rule(name="web", protocol="tcp", dst_port=[80, 443], action="drop"),
             Rule(name="dns", protocol=["udp", "sctp"], dst_port=53, action="drop"),
             Rule(name="from", protocol="tcp", src_port=80, action="drop"),
             Rule(name="net", protocol="tcp", dst_port=22, src="198.18.0.0/24", action="drop"))
    for gen in (0, 1):
        c = compile_hook(HookPolicy(rules=rules), Hook.TC_INGRESS, gen=gen)
        direct = [s for s in c.conf().shapes if s.id & L.SHAPE_DIRECT]
        assert len(direct) == 1 and direct[0].mask == L.DIRECT_MASK and direct[0].id & L.SHAPE_SHORT
        assert L.Conf.pack(c.conf())[L.CONF_DIRECT_OFF] == direct[0].id
        where = {}
        for k, v in c.cls.items():
            name, raw = L.cls_map_key(k)
            where.setdefault(c.names[v.rule_id], set()).add((name, raw))
            assert L.cls_map_key(L.overlay_key(k))[0] != "bg_cls_direct"
        u32 = lambda i: struct.pack("=I", i)   # noqa: E731
        sctp, udp, tcp = ((gen * L.DIRECT_PROTOS + slot) << 16 for slot in range(3))
        assert where["web"] == {("bg_cls_direct", u32(tcp | 80)), ("bg_cls_direct", u32(tcp | 443))}
        assert where["dns"] == {("bg_cls_direct", u32(udp | 53)), ("bg_cls_direct", u32(sctp | 53))}
        assert any(direct[0].fmask) and direct[0].filter == 0
        assert {name for r in ("from", "net") for name, _ in where[r]} == {"bg_cls_short"}
        wide, short, idx = L.split_keys(c.cls)
        assert sorted(idx) == sorted(raw for r in ("web", "dns") for _n, raw in where[r]) and not wide
    assert L.direct_index(L.ClsKey(shape=L.SHAPE_DIRECT | L.SHAPE_SHORT, have=L.HAVE_PROTO, proto=6).pack()) is None
    assert L.direct_index(L.ClsKey(shape=L.SHAPE_DIRECT | L.SHAPE_SHORT, have=L.HAVE_PROTO | L.HAVE_PORTS,
                                   proto=47, dport=1).pack()) is None


@pytest.mark.parametrize("lo, hi", [(0, 65535), (1, 65534), (1000, 2000), (80, 80), (32767, 32768)])
def test_port_blocks_cover_exactly(lo, hi):
    covered = [p for v, n in port_blocks(lo, hi) for p in range(v, v + (1 << (16 - n)))]
    assert sorted(covered) == list(range(lo, hi + 1))
    assert all(v % (1 << (16 - n)) == 0 for v, n in port_blocks(lo, hi))   # aligned


def test_many_rules_one_shape_and_flat_lookups():
    """10k single-port rules: one shape, one lookup per packet, whatever the rule count (the direct shape's:
    an array read, no hash lookup)."""
    rules = tuple(Rule(name=f"p{i}", protocol="tcp", dst_port=i + 1, action="drop") for i in range(10_000))
    c = compile_hook(HookPolicy(rules=rules), Hook.TC_INGRESS)
    ref = Reference.of(c)
    assert len(ref.conf.shapes) == 1 and len(c.cls) == 10_000
    v = ref.classify(Packet(4, ipaddress.ip_address("1.2.3.4"), ipaddress.ip_address("1.2.3.5"), 6, 9, 5000))
    assert v.name == "p4999" and ref.lookups == 0 and ref.conf.shapes[0].id & L.SHAPE_DIRECT


def test_early_stop_skips_shapes_that_cannot_win():
    rules = (Rule(name="first", protocol="udp"),
             Rule(name="later", protocol="udp", dst_port=53, src=["10.0.0.0/8"]))
    ref = Reference.of(compile_hook(HookPolicy(rules=rules), Hook.XDP))
    pkt = Packet(4, ipaddress.ip_address("10.1.1.1"), ipaddress.ip_address("10.2.2.2"), 17, 5, 53)
    assert ref.classify(pkt).name == "first" and ref.lookups == 1 and len(ref.conf.shapes) == 2


def test_shape_filters_hold_every_entry_and_skip_lookups_that_would_miss():
    """A shape's filter has the bit of each of its entries: over the whole mask for a few entries, over the
    key's first word (protocol) for a big TCP-only shape, none when neither has few values; the direct
    shape's, of its entries in the hash only (none here: all are in the array)."""
    rules = [Rule(name=f"raw{i}", src=[f"{16 * i}.0.0.0/12"], action="drop") for i in range(16)]
    rules += [Rule(name=f"t{i}", protocol="tcp", dst_port=i + 1, src=[f"10.{i % 256}.{i // 256}.0/24"],
                   action="drop") for i in range(200)]
    rules += [Rule(name=f"p{i}", protocol=["tcp", "udp"][i % 2], dst_port=i + 1, action="drop") for i in range(200)]
    c = compile_hook(HookPolicy(rules=tuple(rules)), Hook.TC_INGRESS, limits=Limits(max_shapes=32))
    conf = c.conf()
    by_id = {s.id: s for s in conf.shapes}
    for key in c.cls:
        s = by_id[key[L.KEY_SHAPE_OFF]]
        assert L.in_direct(key) or not any(s.fmask) or s.filter >> L.filter_bit(key, s.fmask) & 1
    fmasks = sorted((s.entries, s.fmask == s.mask, bin(s.filter).count("1")) for s in conf.shapes)
    assert fmasks[0] == (16, True, fmasks[0][2]) and 8 <= fmasks[0][2] <= 16   # the /12s: whole mask
    big = sorted((bin(s.filter).count("1"), s.fmask != s.mask) for s in conf.shapes if s.entries == 200)
    assert big == [(0, False), (1, True)]   # tcp and udp ports: the direct shape; tcp 5-tuples: by protocol
    ref = Reference.of(c)
    udp = Packet(4, ipaddress.ip_address("10.1.0.1"), ipaddress.ip_address("1.2.3.5"), 17, 9, 1001)
    assert ref.classify(udp).name == "(default)" and ref.lookups <= 2   # the tcp 5-tuples were not looked up


def test_fragments_and_truncation():
    rules = (Rule(name="ports", protocol="udp", dst_port=53, action="drop"), Rule(name="udp", protocol="udp"))
    hp = HookPolicy(default="deny", rules=rules)
    ref = Reference.of(compile_hook(hp, Hook.TC_INGRESS))
    a, b = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
    assert ref.classify(Packet(4, a, b, 17, 1, 53)).name == "ports"
    assert ref.classify(Packet(4, a, b, 17, 1, 53, fragment="later")).name == "udp"   # no ports: only portless rules
    assert ref.classify(Packet(4, a, b, 17, None, None)).name == "udp"                # L4 truncated
    assert ref.classify(Packet(4, None, b, 17, 1, 53)).name == "(default)"            # L3 truncated: nothing above
    for p in (Packet(4, a, b, 17, 1, 53, fragment="later"), Packet(4, None, b, 17, 1, 53)):
        assert naive(hp, p).name == ref.classify(p).name


def test_shape_limit_is_reported_with_advice():
    rules = tuple(Rule(name=f"r{i}", src=[str(ipaddress.ip_network(f"10.{i}.0.0/{8 + i}", strict=False))],
                       dst=[str(ipaddress.ip_network(f"172.16.{i}.0/{32 - i}", strict=False))],
                       protocol="tcp", dst_port=f"{i}-{1000 + 77 * i}") for i in range(20))
    with pytest.raises(PolicyError, match="shapes|entries") as e:
        compile_hook(HookPolicy(rules=rules), Hook.TC_INGRESS, limits=Limits(max_shapes=2, max_entries=10_000))
    assert "hooks.tc-ingress" in str(e.value)


def test_rule_expansion_cap():
    big = Rule(name="big", src=[f"10.0.{i}.0/24" for i in range(100)], dst=[f"10.1.{i}.0/24" for i in range(100)],
               protocol="tcp", dst_port="1-65534")
    with pytest.raises(PolicyError, match=r"rules\[0\].*expands to"):
        compile_hook(HookPolicy(rules=(big,)), Hook.TC_INGRESS)


def test_rule_expansion_cap_names_the_file_and_line(tmp_path):
    from bpfgate.policy.parse import load_file, load_text

    text = ("interfaces: [eth0]\nhooks:\n  xdp:\n    rules:\n      - {name: ok, protocol: udp}\n      - name: big\n        protocol: tcp\n"
            "        src: [" + ", ".join(f"10.0.{i}.0/24" for i in range(100)) + "]\n"
            "        dst: [" + ", ".join(f"10.1.{i}.0/24" for i in range(100)) + "]\n        dst_port: 1-65534\n")
    f = tmp_path / "big.yaml"
    f.write_text(text)
    as_json = json.dumps(yaml.safe_load(text), indent=1)   # read by the json module, its lines by PyYAML
    line = as_json.splitlines().index('     "name": "big",')   # the item's `{` (1-based: the line before)
    for policy, where in ((load_file(f), "big.yaml:6"), (load_text(text), "<policy>:6"),
                          (load_text(as_json, "big.json"), f"big.json:{line}")):
        with pytest.raises(PolicyError) as e:
            compile_hook(policy.hooks[Hook.XDP], Hook.XDP)
        assert str(e.value).startswith(f"policy {where} hooks.xdp.rules[1]: rule 'big' expands to")


def test_priorities_and_default_slot():
    c = compile_hook(HookPolicy(default="deny", rules=(Rule(name="a"), Rule(name="b", protocol=6))), Hook.XDP)
    assert c.rules[c.default_rule].action == L.ACT_DROP and c.names[c.default_rule] == "(default)"
    assert sorted(c.prios.values()) == [PRIO_STEP, 2 * PRIO_STEP]


def test_actions_encoded():
    r = Rule(name="x", protocol="tcp", action="redirect", redirect={"interface": "veth9", "direction": "ingress"},
             mark=7, log={"rate": 3}, rate_limit={"rate": 1000, "unit": "bytes", "per": "source", "over": "pass"})
    c = compile_hook(HookPolicy(rules=(r,)), Hook.TC_INGRESS, ifindex=lambda name: 42)
    act = c.rules[next(i for i, n in c.names.items() if n == "x")]
    assert act.action == L.ACT_REDIRECT and act.redirect_ifindex == 42 and act.mark == 7
    assert act.flags == (L.RF_COUNT | L.RF_LOG | L.RF_MARK | L.RF_RATE | L.RF_RATE_BYTES | L.RF_RATE_PER_SRC
                         | L.RF_REDIR_INGRESS)
    assert (act.rate, act.burst, act.over_action, act.log_rate) == (1000, 1000, L.ACT_PASS, 3)
    assert len(act.pack()) == 40


def test_rules_checked_as_the_file_was_read_are_checked_again_for_another_hook():
    """The compiler trusts check() for the hook it checked the rules for, and only for that one."""
    from bpfgate.policy.parse import checked_for, load_text

    text = ("version: 1\ninterfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n"
            "      - {name: m, protocol: tcp, mark: 7, action: pass}\n")
    hp = load_text(text, "p.yaml").hooks[Hook.TC_INGRESS]
    assert checked_for(hp, Hook.TC_INGRESS) and not checked_for(hp, Hook.XDP)
    assert compile_hook(hp, Hook.TC_INGRESS).names
    with pytest.raises(PolicyError, match="mark is not possible at xdp"):
        compile_hook(hp, Hook.XDP)
    assert not checked_for(hp.model_copy(), Hook.TC_INGRESS)   # another object


@pytest.mark.parametrize("seed", range(12))
def test_address_rules_atoms_are_rule_atoms(seed):
    """atoms_of() takes its own path for a rule matching one address field alone: the same atoms as
    rule_atoms(), with the policy's classes (set bits among them, or none) and without."""
    import random

    from bpfgate.policy.atoms import _address_atoms, atom_count, atoms_of, rule_atoms
    from bpfgate.policy.prefixes import Classes
    from bpfgate.policy.sets import hook_sets, uses_sets, with_ports
    from policy_gen import _net, random_policy, random_set_policy

    rng = random.Random(seed)
    hp = (random_set_policy if seed % 2 else random_policy)(rng, 60)
    extra = []
    for i in range(80):
        nets = [str(_net(rng, rng.random() < 0.5)) for _ in range(rng.choice([1, 1, 2, 3]))]
        d = {"name": f"a{i}", rng.choice(["src", "dst"]): nets, "action": rng.choice(["pass", "drop"])}
        if rng.random() < 0.3:
            d.update(rng.choice([{"log": True}, {"mark": 7, "action": "pass"}, {"comment": "x"}, {"count": False}]))
        extra.append(Rule.model_validate(d))
    hp = hp.model_copy(update={"rules": hp.rules + tuple(extra)})
    sets = hook_sets(hp)
    classes = Classes.of(hp.rules, 0, {n: st.keys for n, st in sets.items() if st.type == "addr"})
    fast = 0
    for rule in hp.rules:
        named = uses_sets(rule)
        rule = with_ports(rule, hp.sets) if named else rule   # as the compiler gives it
        for cl in (classes,) if named else (classes, None):
            assert atoms_of(rule, cl) == list(rule_atoms(rule, cl)), rule
        if (rule.src is None) != (rule.dst is None) and not rule.negated and rule.protocol is None \
                and rule.vlan is None and rule.ct is None and rule.src_port is None and rule.dst_port is None \
                and rule.tcp_flags is None and rule.icmp_type is None and type(rule.src or rule.dst) is tuple:
            fast += 1
            assert atom_count(rule) == len(list(rule_atoms(rule, None)))
    assert fast >= 80   # the fast path was taken (each of `extra` qualifies)
    assert _address_atoms("src", (ipaddress.ip_network("198.18.0.0/15"),), None) == \
        list(rule_atoms(Rule(name="x", src="198.18.0.0/15"), None))


def test_a_rule_listing_addresses_alone_is_held_to_the_table_limit_not_the_rule_limit(monkeypatch):
    """A blocklist written inline (one rule, one address list) compiles as as many one-address rules do:
    max_rule_entries stops cross products, and a list of addresses alone is none. max_entries still holds.
    (A list this long compiles as a set where a set can hold it: here as entries, as one a set cannot.)"""
    from bpfgate.policy import sets

    monkeypatch.setattr(sets, "INLINE_SET_MIN", 10**9)
    nets = ([f"198.18.{i >> 8}.{i & 255}/32" for i in range(600)] + [f"fd00::{i:x}/128" for i in range(600)]
            + ["198.19.0.0/16", "198.19.7.0/24", "fd00:1::/48"])
    rule = Rule(name="block", src=nets, action="drop")
    hp = HookPolicy(rules=(rule, Rule(name="web", protocol="tcp", dst_port=80)))
    c = compile_hook(hp, Hook.TC_INGRESS, limits=Limits(max_rule_entries=100))
    assert len(c.rule_keys[c.by_name["block"]]) >= 1200
    ref = Reference.of(c)
    for src in ("198.18.1.7", "198.18.2.88", "fd00::2a", "198.19.7.9", "198.19.200.1", "fd00:1::5",
                "198.18.2.89", "198.20.0.1", "fd00::1:0", "fd00:2::1"):
        a = ipaddress.ip_address(src)
        other = ipaddress.ip_address("198.18.255.1" if a.version == 4 else "fd00:ff::1")
        p = Packet(a.version, a, other, 6, 1234, 80)
        assert ref.classify(p).name == naive(hp, p).name, src
    assert naive(hp, Packet(4, ipaddress.ip_address("198.18.2.87"), ipaddress.ip_address("198.18.255.1"),
                            6, 1, 80)).name == "block"
    crossed = Rule(name="crossed", src=nets[:60], protocol="tcp", dst_port=[1, 2])   # 120 atoms: a cross product
    with pytest.raises(PolicyError, match=r"expands to 120 entries .*named set"):
        compile_hook(HookPolicy(rules=(crossed,)), Hook.TC_INGRESS, limits=Limits(max_rule_entries=100))
    with pytest.raises(PolicyError, match="map entries"):
        compile_hook(hp, Hook.TC_INGRESS, limits=Limits(max_rule_entries=100, max_entries=1000))


def test_entries_estimate_counts_atoms_until_enough():
    from bpfgate.policy.atoms import entries_estimate
    from bpfgate.policy.model import SetRef

    rules = [Rule(name="list", src=[f"198.18.0.{i}" for i in range(10)]),
             Rule(name="cross", src=["198.18.1.0/24", "198.18.2.0/24"], protocol="tcp", dst_port=[80, 443]),
             Rule(name="set", src="198.18.3.0/24").model_copy(update={"src": SetRef("s")})]
    assert entries_estimate(rules, 1000) == 10 + 4 + 1
    assert entries_estimate(rules, 12) == 14   # stops at the rule that reaches it
    long = [f"198.19.{i >> 8}.{i & 255}" for i in range(2000)]   # a list that compiles as a set: one entry
    assert entries_estimate([Rule(name="as-set", src=long), Rule(name="entries", src=[*long, "fd00::/100"])],
                            10**6) == 1 + 2001
