"""Named sets: parsed with clear errors, compiled onto stage 0's prefix classes (the reference classifier
and the naive one agree), written back by export."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfgate.errors import PolicyError
from bpfgate.policy.classify import Reference, naive
from bpfgate.policy.compile import Limits, compile_hook
from bpfgate.policy.model import Hook, SetRef
from bpfgate.policy.packet import Packet
from bpfgate.policy.parse import load_text
from bpfgate.policyctl.export import desired_state, export_text, load_policies

from policy_gen import random_packet, random_set_policy

POLICY = """\
version: 1
interfaces: [eth0]
sets:
  blocklist:
    type: addr
    elements: ["198.18.0.0/24", "198.18.5.7", "fd00::/64", "10.0.0.0/8"]
  web: {type: port, elements: [80, 443, "8000-8099"]}
hooks:
  tc-ingress:
    default: allow
    rules:
      - {name: blocked, src: "@blocklist", action: drop}
      - {name: web, protocol: tcp, dst_port: "@web", dst: "!@blocklist"}
      - {name: wide, src: 198.18.0.0/16, action: drop}
"""


def _hook(text=POLICY):
    p = load_text(text, "p.yaml")
    return p.hooks[Hook.TC_INGRESS]


def _verdict(hp, addr, dport=80, proto=6):
    import ipaddress

    a = ipaddress.ip_address(addr)
    pkt = Packet(family=a.version, src=a, dst=a, proto=proto, sport=1234, dport=dport)
    got, want = Reference.of(compile_hook(hp, Hook.TC_INGRESS)).classify(pkt), naive(hp, pkt)
    assert got.name == want.name, (addr, got, want)
    return got.name


def test_rules_name_sets_and_match_their_elements():
    hp = _hook()
    assert hp.rules[0].src == SetRef("blocklist") and hp.rules[1].negated == ("dst",)
    assert _verdict(hp, "198.18.0.200") == "blocked"
    assert _verdict(hp, "198.18.5.7") == "blocked"
    assert _verdict(hp, "10.200.0.1") == "blocked"
    assert _verdict(hp, "fd00::1234") == "blocked"
    assert _verdict(hp, "198.18.5.8") == "web"          # in the wider class prefix, outside the set
    assert _verdict(hp, "198.18.5.8", dport=81) == "wide"
    assert _verdict(hp, "fd01::1", dport=8050) == "web"
    assert _verdict(hp, "fd01::1", dport=8100) == "(default)"


def test_one_rule_over_a_large_set_is_one_entry_and_one_shape():
    els = [f"10.{i >> 8 & 255}.{i & 255}.{(i * 7) & 255}" for i in range(20_000)]
    els += [f"fd00:{i:x}::/48" for i in range(5_000)]
    text = ("version: 1\ninterfaces: [eth0]\nsets:\n  big:\n    type: addr\n    elements:\n"
            + "".join(f'      - "{e}"\n' for e in dict.fromkeys(els))
            + 'hooks:\n  tc-ingress:\n    rules:\n      - {name: b, src: "@big", action: drop}\n')
    c = compile_hook(_hook(text), Hook.TC_INGRESS)
    assert len(c.cls) == 1 and len(c.conf().shapes) == 1
    assert c.classes.pfx_count() == len(set(els))
    assert Reference.of(c).classify(Packet(family=4, src=__import__("ipaddress").ip_address("10.0.1.7"),
                                           dst=__import__("ipaddress").ip_address("10.0.0.1"), proto=6)).name == "b"


def test_the_stage0_estimate_read_before_compiling_is_what_the_compile_counts():
    """What an engine loaded beside the compile sizes its prefix table by: each named set once per field
    naming it, plus the rules' own addresses (at most a few more than the compile counts)."""
    from bpfgate.policy.sets import stage0_estimate

    els = [f"fd00:{i:x}::/48" for i in range(3_000)] + [f"198.18.{i >> 8}.{i & 255}" for i in range(2_000)]
    text = ("version: 1\ninterfaces: [eth0]\nsets:\n  big:\n    type: addr\n    elements:\n"
            + "".join(f'      - "{e}"\n' for e in els)
            + 'hooks:\n  tc-ingress:\n    rules:\n      - {name: b, src: "@big", action: drop}\n'
            + '      - {name: c, dst: "@big", action: drop}\n      - {name: d, src: "@big", protocol: udp}\n'
            + '      - {name: e, src: [198.19.0.0/16, "fd01::/32"], dst: 198.19.1.0/24}\n')
    hp = _hook(text)
    counted = compile_hook(hp, Hook.TC_INGRESS).classes.pfx_count()
    assert stage0_estimate(hp) == 2 * len(els) + 3
    assert counted <= 2 * len(els) + 3 <= counted + 3   # a /16 may stay in level 0 alone


@pytest.mark.parametrize("change, where, reason", [
    ('src: "@blocklist"', 'src: "@nope"', "p.yaml:12 hooks.tc-ingress.rules[0].src: unknown set 'nope'"),
    ('src: "@blocklist"', 'src: "@web"', "rules[0].src: set 'web' is of type port; src needs a set of type addr"),
    ('dst_port: "@web"', 'dst_port: "@blocklist"', "rules[1].dst_port: set 'blocklist' is of type addr"),
    ('"198.18.5.7"', '"198.18.5.7/8"', "p.yaml:6 sets.blocklist.elements[1]: bad CIDR '198.18.5.7/8'"),
    ('"198.18.5.7"', '80', "p.yaml:6 sets.blocklist.elements[1]: 80 is a port"),
    ('"198.18.5.7"', '"fd00::/17"', "sets.blocklist.elements[1]: a /17 set element is stored as 32,768 /32"),
    ('443', '"fd00::1"', "sets.web.elements[1]: 'fd00::1' is an address"),
    ('443', '70000', "sets.web.elements[1]: port 70000 out of range"),
    ('src: "@blocklist"', 'src: ["@blocklist", "10.0.0.0/8"]', "src: a set reference ('@name') stands alone"),
    ('type: port', 'type: ports', "sets.web.type"),
])
def test_errors_name_the_file_line_and_field(change, where, reason):
    with pytest.raises(PolicyError) as e:
        _hook(POLICY.replace(change, where, 1))
    assert reason in str(e.value), str(e.value)


def test_json_is_accepted_and_export_writes_the_sets_back():
    p = load_text(POLICY, "p.yaml")
    as_json = json.dumps({"version": 1, "interfaces": ["eth0"],
                          "sets": {"s": {"type": "addr", "elements": ["198.18.0.1", "fd00::/64"]}},
                          "hooks": {"tc-ingress": {"rules": [{"name": "x", "src": "!@s"}]}}})
    j = load_text(as_json, "p.json")
    assert j.hooks[Hook.TC_INGRESS].rules[0].src == SetRef("s")
    for policy in (p, j):
        text = export_text(desired_state([policy]))
        assert "sets:" in text and "@" in text
        again = load_policies(text)
        assert desired_state(again) == desired_state([policy])


def _agree(seed: int, n_rules: int, n_packets: int, limits: Limits) -> int:
    rng = random.Random(seed)
    hp = random_set_policy(rng, n_rules)
    try:
        compiled = compile_hook(hp, Hook.TC_INGRESS, limits=limits, gen=seed & 1)
    except PolicyError as e:   # too varied for tight limits: a reported refusal
        assert "shapes" in str(e) or "entries" in str(e), e
        return 0
    ref = Reference.of(compiled)
    for _ in range(n_packets):
        pkt = random_packet(rng, hp)
        got, want = ref.classify(pkt), naive(hp, pkt)
        assert (got.name, got.action) == (want.name, want.action), (pkt, got, want)
    return n_packets


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n_rules=st.integers(0, 20),
       lim=st.sampled_from([Limits(), Limits(max_shapes=32, cheap_merge=0), Limits(max_shapes=4)]))
def test_reference_equals_naive_with_sets(seed, n_rules, lim):
    _agree(seed, n_rules, 60, lim)


@pytest.mark.parametrize("seed", range(3))
def test_reference_equals_naive_with_sets_bulk(seed):
    assert _agree(500 + seed, 25, 4000, Limits(max_shapes=32)) == 4000


# ---- long inline address lists: matched as sets --------------------------------------------------------

def _inline_text(nets, wide="198.18.0.0/16"):
    return ("version: 1\ninterfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n"
            "      - {name: web, protocol: tcp, dst_port: 80, action: pass}\n"
            "      - name: block\n        action: drop\n        src: [" + ", ".join(nets) + "]\n"
            f"      - {{name: wide, src: {wide}, action: pass}}\n")


def _agree_on(hp, c, rng, addrs, n=3000):
    import ipaddress

    ref = Reference.of(c)
    for _ in range(n):
        a = ipaddress.ip_address(rng.choice(addrs)(rng))
        pkt = Packet(family=a.version, src=a, dst=a, proto=rng.choice([6, 17]), sport=1, dport=rng.choice([80, 81]))
        got, want = ref.classify(pkt), naive(hp, pkt)
        assert (got.name, got.action) == (want.name, want.action), (pkt, got, want)


def test_a_long_inline_address_list_is_one_entry_as_a_named_set_is():
    from bpfgate.policy.sets import INLINE_SET_MIN

    nets = [f"198.18.{i >> 8}.{i & 255}/32" for i in range(0, 2 * INLINE_SET_MIN, 2)]
    nets += [f"fd00:{i:x}::/64" for i in range(500)] + ["198.19.0.0/24", "10.0.0.0/12"]
    hp = _hook(_inline_text(nets))
    c = compile_hook(hp, Hook.TC_INGRESS)
    block = c.by_name["block"]
    assert len(c.rule_keys[block]) == 1 and c.classes.pfx_count() >= len(nets) - 1   # /12: level 0 only
    assert c.sets == {}   # no set of the policy's: `set list` shows none, `set add` names none
    assert c.source[block] is hp.rules[1]   # listed and exported as written
    _agree_on(hp, c, random.Random(1), [lambda r: f"198.18.{r.randrange(16)}.{r.randrange(256)}",
                                        lambda r: f"fd00:{r.randrange(600):x}::{r.randrange(3)}",
                                        lambda r: f"198.19.0.{r.randrange(256)}", lambda r: f"10.{r.randrange(32)}.0.1"])


def test_an_inline_list_a_set_cannot_hold_stays_an_entry_per_address():
    from bpfgate.policy.sets import INLINE_SET_MIN

    v6 = [f"fd00::{i:x}:0/112" for i in range(INLINE_SET_MIN)]   # a /112 element: 65536 /128 entries each
    hp = _hook(_inline_text(v6, wide="fd00::/16"))
    c = compile_hook(hp, Hook.TC_INGRESS)
    assert len(c.rule_keys[c.by_name["block"]]) == INLINE_SET_MIN and not c.classes.set_bits
    # a field naming 8 sets already: no bit left for the list
    v4 = [f"198.18.{i >> 8}.{i & 255}" for i in range(INLINE_SET_MIN)]
    text = _inline_text(v4).replace("hooks:", "sets:\n" + "".join(
        f"  s{k}: {{type: addr, elements: [198.19.{k}.0/24]}}\n" for k in range(8)) + "hooks:")
    text += "".join(f'      - {{name: n{k}, src: "@s{k}", action: drop}}\n' for k in range(8))
    hp = _hook(text)
    c = compile_hook(hp, Hook.TC_INGRESS)
    assert len(c.rule_keys[c.by_name["block"]]) == INLINE_SET_MIN and len(c.classes.set_bits["src"]) == 8
    _agree_on(hp, c, random.Random(2), [lambda r: f"198.18.{r.randrange(5)}.{r.randrange(256)}",
                                        lambda r: f"198.19.{r.randrange(9)}.1"], n=1000)


@pytest.mark.parametrize("seed", range(6))
def test_reference_equals_naive_with_address_lists_as_sets(seed, monkeypatch):
    """Every rule matching one address list alone compiled as a set (as long lists are), beside named sets
    and rules of every other kind."""
    from policy_gen import _net

    from bpfgate.policy import sets
    from bpfgate.policy.model import HookPolicy, Rule

    monkeypatch.setattr(sets, "INLINE_SET_MIN", 1)
    rng = random.Random(900 + seed)
    hp = random_set_policy(rng, 20)
    rules = list(hp.rules)
    for k in range(4):   # rules of one address list alone, most of them lists a set holds
        field = rng.choice(["src", "dst"])
        nets = [str(_net(rng, rng.random() < 0.4)) for _ in range(rng.randint(1, 6))]
        rules.insert(rng.randrange(len(rules) + 1), Rule(name=f"list{k}", action=rng.choice(["pass", "drop"]),
                                                         **{field: nets}))
    hp = HookPolicy(default=hp.default, rules=tuple(rules), sets=hp.sets)
    assert sets.inline_sets(hp.rules), "no rule of the policy is compiled as a set"
    try:
        c = compile_hook(hp, Hook.TC_INGRESS, limits=Limits(max_shapes=32), gen=seed & 1)
    except PolicyError as e:   # too varied for the limits: a reported refusal
        assert "shapes" in str(e) or "entries" in str(e), e
        return
    ref = Reference.of(c)
    for _ in range(3000):
        pkt = random_packet(rng, hp)
        got, want = ref.classify(pkt), naive(hp, pkt)
        assert (got.name, got.action) == (want.name, want.action), (pkt, got, want)


# ---- live edits ---------------------------------------------------------------------------------------

def _tables(c):
    return {t: (dict(tr.top), dict(tr.pfx)) for t, tr in c.classes.trees.items()}


def _random_element(rng: random.Random, hp) -> str:
    from policy_gen import _net

    from bpfgate.policy.prefixes import ELEMENT_OK

    while True:
        nets = [e for sd in hp.sets.values() if sd.type == "addr" for e in sd.elements] + \
               [n for r in hp.rules for f in (r.src, r.dst) if isinstance(f, tuple) for n in f]
        if nets and rng.random() < 0.5:   # inside or around something the policy has
            base = rng.choice(nets)
            w = base.max_prefixlen
            n = min(w, base.prefixlen + rng.choice([0, 1, 4, 8, 16]))
            v = (int(base.network_address) | rng.getrandbits(w)) & ~((1 << (w - n)) - 1) if n else 0
            net = type(base)((v, n))
        else:
            net = _net(rng, rng.random() < 0.4)
        if ELEMENT_OK[(net.max_prefixlen, net.prefixlen)]:
            return str(net)


@pytest.mark.parametrize("seed", range(6))
def test_live_element_edits_equal_a_fresh_compile(seed):
    """Random adds and deletes of address and port elements: the edited tables are exactly a fresh compile's
    of the edited sets, the rules' bg_cls entries of address sets never change, and reference == naive."""
    from bpfgate.policy.live import LiveHook
    from bpfgate.policy.model import SetDef

    rng = random.Random(seed)
    hp = random_set_policy(rng, 12)
    try:
        c = compile_hook(hp, Hook.TC_INGRESS, limits=Limits(max_shapes=32))
    except PolicyError:
        return
    live = LiveHook(c, Limits(max_shapes=32))
    cls_before = dict(c.cls)
    edited_port = False
    for _ in range(40):
        name = rng.choice(["a", "b", "p"])
        st = c.sets[name]
        if st.type == "port":
            e = rng.choice([80, 443, "1000-1100", 22, "8000-8099"])
            present = (tuple(map(int, str(e).split("-"))) if "-" in str(e) else (e, e)) in st
            edited_port = True
        else:
            present = bool(st.elements) and rng.random() < 0.4
            e = str(rng.choice(list(st.elements))) if present else _random_element(rng, hp)
            present = __import__("bpfgate.policy.model", fromlist=["x"]).parse_network(e) in st
        for d in live.set_edit(name, [e], add=not present):
            if not any(c.classes.set_bit(f, name) for f in ("src", "dst")) and st.type == "addr":
                assert d.writes() == 0   # a set no rule names: nothing in the kernel
    sets = {n: SetDef.model_construct(type=st.type, elements=tuple(st.elements), comment=None)
            for n, st in c.sets.items()}
    edited = hp.model_copy(update={"sets": sets})
    fresh = compile_hook(edited, Hook.TC_INGRESS, limits=Limits(max_shapes=32))
    assert _tables(c) == _tables(fresh)
    if not edited_port:
        assert c.cls == cls_before
    ref = Reference.of(c)
    ref.conf = live.conf
    for _ in range(600):
        pkt = random_packet(rng, edited)
        got, want = ref.classify(pkt), naive(edited, pkt)
        assert got.name == want.name, (pkt, got, want)


def test_live_edit_refusals_change_nothing():
    from bpfgate.policy.live import LiveHook

    c = compile_hook(_hook(), Hook.TC_INGRESS)
    live = LiveHook(c)
    before = (_tables(c), dict(c.cls), {n: dict(s.keys) for n, s in c.sets.items()})
    for name, elements, add, reason in [
        ("nope", ["198.18.9.9"], True, "no such set"),
        ("blocklist", ["198.18.9.9", "80"], True, "80 is a port"),
        ("blocklist", ["198.18.9.9", "198.18.5.7"], True, "'198.18.5.7' is already in the set"),
        ("blocklist", ["198.18.9.9"], False, "'198.18.9.9' is not in the set"),
        ("blocklist", ["198.18.9.9/8"], True, "host bits set"),
        ("blocklist", ["fd00::/17"], True, "32,768 /32 entries"),
        ("web", ["fd00::1"], True, "is an address"),
        ("web", ["9", "9"], True, "named twice"),
    ]:
        with pytest.raises(PolicyError, match=reason):
            live.set_edit(name, elements, add)
        assert (_tables(c), dict(c.cls), {n: dict(s.keys) for n, s in c.sets.items()}) == before


def test_a_live_address_add_is_a_few_stage0_writes():
    from bpfgate.policy.live import LiveHook

    c = compile_hook(_hook(), Hook.TC_INGRESS)
    live = LiveHook(c)
    shapes = live.conf.shapes
    (d,) = live.set_edit("blocklist", ["203.0.113.7"], add=True)
    assert not d.cls_update and not d.cls_delete and d.conf_before is None
    # the set is named in src and in dst: one entry and its bucket's level-0 entry in each field's tree
    assert len(d.stage.pfx_update) == 2 and len(d.stage.top) == 2
    (d,) = live.set_edit("blocklist", ["203.0.113.7"], add=False)
    assert d.stage.pfx_delete and live.conf.shapes == shapes
