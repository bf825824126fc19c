"""Kernel verdict (BPF_PROG_TEST_RUN) == Reference verdict on 1M generated frames per run: random
policies (tests/unit/policy_gen.py) x random and adversarial frames (truncation, IPv4 options, fragments,
IPv6 extension chains past the walk bound, VLAN tags, corrupted bytes, ARP), TC (rule id compared exactly:
the test build writes rule_id + 1 into skb->mark and reads ct_state from it) and XDP (action compared).
The other families built on the same parser (bpf/include/parse.h) meet its Python twin (engine.frames) on
the same kind of frames: syn (XDP), attempts, flows' keys and byte counts, capture's filters (TC)."""

from __future__ import annotations

import ipaddress
import os
import random
import struct
import sys
from dataclasses import replace

import pytest

from bpfgate.engine import Engine, frames
from bpfgate.errors import BpfgateError, PolicyError
from bpfgate.kernel.testrun import test_run as run_prog
from bpfgate.policy import layout as L
from bpfgate.policy.classify import Reference, naive
from bpfgate.policy.compile import Limits, compile_hook
from bpfgate.policy.model import Hook, HookPolicy, Rule
from bpfgate.policy.packet import Packet

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "unit"))
from policy_gen import random_packet, random_policy, random_set_policy

pytestmark = pytest.mark.kernel
SKB_SIZE = 192               # struct __sk_buff; mark at offset 8
XDP_RET = {L.ACT_PASS: 2, L.ACT_DROP: 1, L.ACT_REDIRECT: 4}
TC_PASS = 0xFFFFFFFF          # TC_ACT_UNSPEC: a pass lets the filters after the gate run
LIMITS = Limits(max_shapes=32, max_rule_entries=1 << 14, max_entries=1 << 18)
# 8 policies x (105k TC + 20k XDP) = 1M frames a run; BG_DIFF_SCALE=0.1 for a quick local run
SCALE = float(os.environ.get("BG_DIFF_SCALE", "1"))
POLICIES, TC_FRAMES, XDP_FRAMES = 8, int(105_000 * SCALE), int(20_000 * SCALE)


def adversarial_frame(rng: random.Random, p) -> bytes:
    vlans = ()
    if p.vlan is not None:
        vlans = (p.vlan,) + ((rng.choice([5, 4095]),) if rng.random() < 0.3 else ())
    ext = ()
    if p.family == 6 and rng.random() < 0.35:
        ext = tuple(rng.choice([0, 43, 60, 44, 51]) for _ in range(rng.choice([1, 2, 3, 6, 7])))
    elif p.family == 6 and p.fragment != "none":
        ext = (44,)
    fr = frames.build(p, vlans=vlans, ip_options=rng.choice([0] * 6 + [1, 3, 10]) if p.family == 4 else 0,
                      v6_ext=ext, payload=bytes(rng.choice([0, 0, 4, 40])))
    r = rng.random()
    if r < 0.15:      # truncated anywhere past the Ethernet header
        fr = fr[:rng.randrange(14, len(fr) + 1)]
    elif r < 0.18:    # one corrupted byte in the headers (versions, IHL, next headers, ethertypes)
        i = rng.randrange(12, min(len(fr), 80))
        fr = fr[:i] + bytes([rng.getrandbits(8)]) + fr[i + 1:]
    elif r < 0.19:    # ARP: passed unclassified
        fr = frames.DST_MAC + frames.SRC_MAC + struct.pack("!H", 0x0806) + bytes(28)
    return fr


def compiled_policy(rng: random.Random, gen: int = 0, previous=None):
    while True:
        hp = random_policy(rng, rng.choice([4, 10, 25]))
        try:
            return hp, compile_hook(hp, Hook.TC_INGRESS, limits=LIMITS, ifindex=lambda _n: 1, gen=gen,
                                    previous=previous)
        except PolicyError:
            continue    # too many shapes/entries for this random draw: draw again


def load_or_swap(engines, rng: random.Random, n: int):
    """Even rounds: load one policy. Odd rounds: load A (gen 0), swap to B (gen 1), swap to C (gen 0) and
    test C: stale entries of A (bg_cls, bg_pfx_top, bg_pfx) in C's generation slot would show."""
    hp, compiled = compiled_policy(rng)
    for e in engines:
        e.load_policy(compiled, limits=LIMITS)
    if n % 2:
        for gen in (1, 0):
            hp, compiled = compiled_policy(rng, gen, previous=compiled)
            for e in engines:
                e.swap(compiled)
    return hp, compiled


def expected_rule(ref: Reference, frame: bytes, ct: int | None) -> int | None:
    parsed = frames.parse_frame(frame)
    if parsed.arp:
        return None
    return ref.lookup(replace(parsed.packet, ct=ct).key())


@pytest.mark.parametrize("seed", [int(os.environ.get("BG_DIFF_SEED", "0"))])
def test_kernel_matches_reference(seed):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    rng = random.Random(seed)
    mismatches, total, tc_refused = [], 0, 0
    for n in range(POLICIES):
        tc = Engine.load("tc-ingress", test_mark=True, ct=False,
                         max_entries={"bg_rules": 4096, "bg_counters": 4096, "bg_rate_rule": 4096,
                                      "bg_log_rate": 4096})
        xdp = Engine.load("xdp", ct=False, max_entries={"bg_rules": 4096, "bg_counters": 4096,
                                                         "bg_rate_rule": 4096, "bg_log_rate": 4096})
        try:
            hp, compiled = load_or_swap((tc, xdp), rng, n)
            ref = Reference.of(compiled)
            ctx = bytearray(SKB_SIZE)
            for i in range(TC_FRAMES + XDP_FRAMES):
                p = random_packet(rng, hp)
                fr = adversarial_frame(rng, p)
                total += 1
                r = None
                if i < TC_FRAMES:
                    struct.pack_into("=I", ctx, 8, p.ct or 0)
                    try:
                        r = run_prog(tc.program, fr, ctx=bytes(ctx))
                    except BpfgateError:   # the skb test run refuses a truncated IP header: XDP takes it
                        tc_refused += 1
                if r is not None:
                    got = struct.unpack_from("=I", r.ctx_out, 8)[0] - 1
                    want = expected_rule(ref, fr, p.ct)
                    want = -1 if want is None else want
                    ok = got == want and r.retval == (2 if want >= 0 and compiled.rules[want].action == L.ACT_DROP
                                                      else TC_PASS)
                else:
                    r = run_prog(xdp.program, fr)
                    want = expected_rule(ref, fr, None)
                    got = r.retval
                    ok = got == (2 if want is None else XDP_RET[compiled.rules[want].action])
                if not ok:
                    mismatches.append((fr.hex(), p, got, want))
        finally:
            tc.close()
            xdp.close()
    assert total >= POLICIES * (TC_FRAMES + XDP_FRAMES) and tc_refused < total // 20
    assert not mismatches, f"{len(mismatches)} mismatches of {total}; first: {mismatches[:3]}"


def spread_cidr_policy(rng: random.Random, n: int) -> HookPolicy:
    """CIDRs of every length spread over both address spaces (stage 0's sparse case: sub-range bits and
    probes), some crowded into one /16 (bucket fitting), both fields, first match wins."""
    nets = set()
    while len(nets) < n:
        v6 = rng.random() < 0.5
        width = 128 if v6 else 32
        plen = rng.randint(8, width)
        addr = rng.getrandbits(width)
        if rng.random() < 0.3:   # crowd one /16 per family
            addr = (0xFD00 if v6 else 0xC612) << (width - 16) | addr >> 16
        nets.add(ipaddress.ip_network((addr >> (width - plen) << (width - plen), plen)))
    rules = [Rule(name=f"c{i}", action=rng.choice(["drop", "pass"]), **{rng.choice(["src", "dst"]): str(net)})
             for i, net in enumerate(sorted(nets, key=lambda x: rng.random()))]
    return HookPolicy(default="deny", rules=tuple(rules))


def test_kernel_stage0_matches_rules_on_spread_cidrs():
    """4000 mixed-length CIDR rules on src and dst, both families: the kernel's verdict for packets from
    inside random rule prefixes (and random addresses) is the first matching rule's, as written."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    rng = random.Random(int(os.environ.get("BG_DIFF_SEED", "0")) + 1)
    hp = spread_cidr_policy(rng, 4000)
    compiled = compile_hook(hp, Hook.TC_INGRESS, limits=LIMITS, ifindex=lambda _n: 1)
    assert compiled.conf().trees == 0b1111   # the crowded /16s leave some lengths raw: a few more shapes
    assert any(lens for t in compiled.classes.trees.values() for _c, _s, lens in t.top.values())
    # the raw IPv6 lengths past /32 take shapes with the 56-byte key (bg_cls), the rest the 32-byte one
    assert {bool(s.id & L.SHAPE_SHORT) for s in compiled.conf().shapes} == {True, False}
    nets = [n for r in hp.rules for n in (r.src or r.dst)]
    bad = []
    with Engine.load("tc-ingress", test_mark=True, ct=False) as tc:
        tc.load_policy(compiled, limits=LIMITS)
        ref = Reference.of(compiled)
        for i in range(20_000):
            net = rng.choice(nets)
            width, addr_t = net.max_prefixlen, type(net.network_address)
            inside = int(net.network_address) | rng.getrandbits(width - net.prefixlen)
            a = addr_t(inside if rng.random() < 0.8 else rng.getrandbits(width))
            b = addr_t(rng.getrandbits(width))
            src, dst = (a, b) if rng.random() < 0.5 else (b, a)
            p = Packet(family=a.version, src=src, dst=dst, proto=17, sport=1, dport=2)
            r = run_prog(tc.program, frames.build(p), ctx=bytes(SKB_SIZE))
            got = struct.unpack_from("=I", r.ctx_out, 8)[0] - 1
            want = ref.classify(p).name
            if i < 1000:   # and what the rules say, on a share (naive() walks 4000 rules per packet)
                assert naive(hp, p).name == want, p
            if compiled.names.get(got) != want:
                bad.append((p, compiled.names.get(got), want))
    assert not bad, f"{len(bad)} of 20000 wrong; first: {bad[:3]}"


def _set_policy(rng: random.Random, gen: int = 0, previous=None):
    while True:
        hp = random_set_policy(rng, rng.choice([4, 10, 20]))
        try:
            return hp, compile_hook(hp, Hook.TC_INGRESS, limits=LIMITS, ifindex=lambda _n: 1, gen=gen,
                                    previous=previous)
        except PolicyError:
            continue


def _tc_mismatches(tc, ref: Reference, hp: HookPolicy, rng: random.Random, n: int) -> list:
    bad = []
    for _ in range(n):
        p = random_packet(rng, hp)
        fr = frames.build(p, payload=bytes(rng.choice([0, 4])))
        try:
            r = run_prog(tc.program, fr, ctx=bytes(SKB_SIZE))
        except BpfgateError:
            continue
        got = struct.unpack_from("=I", r.ctx_out, 8)[0] - 1
        want = expected_rule(ref, fr, None)
        if got != (-1 if want is None else want):
            bad.append((p, got, want))
    return bad


def test_kernel_matches_reference_with_sets():
    """Random policies naming sets (address sets of both families with nested and overlapping elements,
    negated references, port sets): the kernel's rule for each frame is the reference's, after a load and
    after swaps A (gen 0) -> B (gen 1) -> C (gen 0)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    rng = random.Random(int(os.environ.get("BG_DIFF_SEED", "0")) + 7)
    bad = []
    for n in range(6):
        with Engine.load("tc-ingress", test_mark=True, ct=False) as tc:
            hp, compiled = _set_policy(rng)
            tc.load_policy(compiled, limits=LIMITS)
            if n % 2:
                for gen in (1, 0):
                    hp, compiled = _set_policy(rng, gen, previous=compiled)
                    tc.swap(compiled)
            bad += _tc_mismatches(tc, Reference.of(compiled), hp, rng, 8000)
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


def test_kernel_matches_reference_after_live_set_edits():
    """Random live adds and deletes of set elements (nested, overlapping, /16 and shorter, both families) on a
    loaded engine: after each batch the kernel's rule for each frame is the reference's (the edited tables)."""
    from policy_gen import _net

    from bpfgate.policy.prefixes import ELEMENT_OK

    if os.geteuid() != 0:
        pytest.skip("needs root")
    rng = random.Random(int(os.environ.get("BG_DIFF_SEED", "0")) + 9)
    bad = []
    for _ in range(3):
        with Engine.load("tc-ingress", test_mark=True, ct=False) as tc:
            hp, compiled = _set_policy(rng)
            tc.load_policy(compiled, limits=LIMITS)
            for _batch in range(4):
                for _ in range(15):
                    name = rng.choice("ab")
                    st = tc.live.c.sets[name]
                    if st.keys and rng.random() < 0.4:
                        e = rng.choice(st.elements)
                        tc.edit_set(name, [str(e)], add=False)
                        continue
                    net = _net(rng, rng.random() < 0.4)
                    if ELEMENT_OK[(net.max_prefixlen, net.prefixlen)] and net not in st:
                        tc.edit_set(name, [str(net)], add=True)
                live = tc.live
                edited = hp.model_copy(update={"sets": {n: s.definition() for n, s in live.c.sets.items()}})
                ref = Reference(live.conf, live.c.cls, live.c.rules, live.c.names, live.c.classes)
                for _ in range(200):   # the edited tables mean what the edited sets say
                    p = random_packet(rng, edited)
                    assert ref.classify(p).name == naive(edited, p).name, p
                bad += _tc_mismatches(tc, ref, edited, rng, 1500)
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"


# ---- the other families that use the shared parser (parse.h): same random and adversarial frames ------

FAMILY_FRAMES = 4000


def family_frames(seed: int):
    """(frame, twin's parse) pairs: random packets of random policies, adversarial variants."""
    rng = random.Random(seed)
    hp = random_policy(rng, 25)
    for i in range(FAMILY_FRAMES):
        if i % 500 == 0:
            hp = random_policy(rng, 25)
        p = random_packet(rng, hp)
        if p.proto == 6 and rng.random() < 0.5:   # plenty of SYNs for the SYN families
            p = replace(p, tcp_flags=rng.choice([0x02, 0x02, 0x12, 0xC2]))
        fr = adversarial_frame(rng, p)
        yield fr, frames.parse_frame(fr)


def test_syn_counter_matches_the_parser_twin():
    """bg_syn_xdp counts a frame iff the twin finds a SYN (without ACK, whole TCP header), under the
    source address the twin reads."""
    from collections import Counter

    from bpfgate.inspect.syn import SynCounter

    if os.geteuid() != 0:
        pytest.skip("needs root")
    want_src, bad = Counter(), []
    with SynCounter() as syn:
        def total() -> int:
            return sum(t.syns for t in syn.totals().values())
        before = total()
        for fr, parsed in family_frames(int(os.environ.get("BG_DIFF_SEED", "0")) + 2):
            assert run_prog(syn.prog, fr).retval == 2                    # XDP_PASS: counting never drops
            now = total()
            if now - before != int(parsed.is_syn(fr)):
                bad.append(fr.hex())
            before = now
            if parsed.is_syn(fr):
                want_src[(parsed.packet.family, str(parsed.packet.src))] += 1
        got_src = Counter({(s.family, s.source): s.syns for s in syn.sources()})
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"
    assert sum(want_src.values()) > 200 and got_src == want_src


def test_attempt_log_matches_the_parser_twin():
    """bg_attempts_tc (every port watched) logs a frame iff the twin finds a SYN, under its destination port."""
    from bpfgate.inspect.attempts import AttemptLog

    if os.geteuid() != 0:
        pytest.skip("needs root")
    bad, seen, refused = [], 0, 0
    with AttemptLog([0]) as log:
        counts = log.obj.map("attempt_counts")
        for fr, parsed in family_frames(int(os.environ.get("BG_DIFF_SEED", "0")) + 3):
            counts.clear()
            try:
                run_prog(log.prog, fr, ctx=bytes(SKB_SIZE))
            except BpfgateError:   # the skb test run refuses a truncated IP header
                refused += 1
                continue
            got = {port: n for (_ifindex, port), n in log.counts().items()}
            want = {parsed.packet.dport: 1} if parsed.is_syn(fr) else {}
            seen += bool(want)
            if got != want:
                bad.append((fr.hex(), got, want))
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"
    assert seen > 200 and refused < FAMILY_FRAMES // 10


def expected_flow(fr: bytes, parsed) -> tuple | None:
    """The conntrack key (family, proto, src, sport, dst, dport) and L3 bytes flows.bpf.c must count
    (ct_track.h), or None when the packet is not tracked (not IP, protocol unknown, no L4 header to tell
    a TCP/UDP/SCTP/ICMP flow: cut short or a non-first fragment)."""
    p = parsed.packet
    if p.proto is None:
        return None
    sport = dport = 0
    if p.sport is not None:
        sport, dport = p.sport, p.dport
    elif p.icmp_type is not None:
        if p.icmp_type in (0, 8, 128, 129):
            sport = dport = parsed.icmp_id
    elif p.proto in (6, 17, 132, 1, 58):
        return None
    return (p.family, p.proto, p.src, sport, p.dst, dport), len(fr) - parsed.l3


def test_flow_keys_match_the_parser_twin():
    """bg_flow_ingress tracks each frame under the conntrack key (and L3 length) the twin gives, or counts
    it as not tracked."""
    from bpfgate.inspect.flows import STAT_UNPARSED, Flow
    from bpfgate.kernel.objects import BpfObject

    if os.geteuid() != 0:
        pytest.skip("needs root")
    bad, accounted, refused = [], 0, 0
    with BpfObject.open("flows") as obj:
        obj.load()
        table, stats, prog = obj.map("bg_ct"), obj.map("flow_stats"), obj.program("bg_flow_ingress")
        for fr, parsed in family_frames(int(os.environ.get("BG_DIFF_SEED", "0")) + 4):
            table.clear()
            unparsed = sum(stats[STAT_UNPARSED])
            try:
                run_prog(prog, fr, ctx=bytes(SKB_SIZE))
            except BpfgateError:
                refused += 1
                continue
            flows = [Flow.from_kernel(k, v, {}) for k, v in table.items()]
            ip = ipaddress.ip_address
            got = [((f.family, f.proto, ip(f.src), f.sport, ip(f.dst), f.dport), f.bytes) for f in flows]
            want = expected_flow(fr, parsed)
            accounted += want is not None
            if got != ([want] if want else []) or (want is None) != (sum(stats[STAT_UNPARSED]) == unparsed + 1):
                bad.append((fr.hex(), got, want))
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"
    assert accounted > FAMILY_FRAMES // 2 and refused < FAMILY_FRAMES // 10


CAPTURE_FILTERS = [dict(proto="tcp", port=80), dict(proto="udp", host="10.0.0.0/8"), dict(port=53),
                   dict(host="fd00::/16"), dict(proto="icmp"), dict(port=443, host="198.18.0.0/15")]


def capture_expected(filt, fr: bytes, parsed) -> bool:
    """capture.bpf.c's filter over the twin's fields."""
    p = parsed.packet
    if p.proto is None:
        return False
    later = p.fragment == "later"
    if not later and parsed.l4_hdr_len(fr) is None:
        return False
    if filt.proto is not None and p.proto != filt.proto:
        return False
    if filt.port is not None and (later or p.proto not in (6, 17) or filt.port not in (p.sport, p.dport)):
        return False
    if filt.host is not None and (p.family != filt.host.version or (p.src not in filt.host and p.dst not in filt.host)):
        return False
    return True


@pytest.mark.parametrize("spec", CAPTURE_FILTERS, ids=lambda s: " ".join(f"{k}={v}" for k, v in s.items()))
def test_capture_filter_matches_the_parser_twin(spec):
    """bg_cap_ingress copies a frame iff its filter holds on the twin's fields."""
    from bpfgate.inspect.capture import STAT_EVENTS, CaptureFilter
    from bpfgate.kernel.maps import possible_cpus
    from bpfgate.kernel.objects import BpfObject

    if os.geteuid() != 0:
        pytest.skip("needs root")
    filt = CaptureFilter.parse(**spec)
    bad, matched, refused = [], 0, 0
    obj = BpfObject.open("capture", rodata={"cfg_snaplen": 64, **filt.rodata()})
    with obj:
        obj.set_max_entries("capture_scratch", possible_cpus())
        obj.set_max_entries("capture_events", 1 << 23)
        obj.load()
        stats, prog = obj.map("bg_stats"), obj.program("bg_cap_ingress")
        for i, (fr, parsed) in enumerate(family_frames(int(os.environ.get("BG_DIFF_SEED", "0")) + 5)):
            if i >= FAMILY_FRAMES // 2:
                break
            before = sum(stats[STAT_EVENTS])
            try:
                run_prog(prog, fr, ctx=bytes(SKB_SIZE))
            except BpfgateError:
                refused += 1
                continue
            want = capture_expected(filt, fr, parsed)
            matched += want
            if (sum(stats[STAT_EVENTS]) - before == 1) != want:
                bad.append((fr.hex(), want))
    assert not bad, f"{len(bad)} mismatches; first: {bad[:3]}"
    assert matched > 5
