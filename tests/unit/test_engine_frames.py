"""frames.parse (the Python twin of bpf/include/parse.h) reads back what frames.build wrote, and agrees
with the parser contract (Packet.effective) on well-formed frames; truncation only ever removes fields."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from policy_gen import random_packet, random_policy

from bpfgate.engine import frames
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.objects import packaged_path
from bpfgate.policy.packet import Packet


def test_round_trip_matches_contract():
    rng = random.Random(7)
    hp = random_policy(rng, 20)
    n = 0
    for _ in range(3000):
        p = random_packet(rng, hp)
        if p.family is None or p.proto is None:
            continue    # built as non-IP / IPv6 'no next header': covered by the kernel differential test
        if (p.proto in (6, 17, 132) and None in (p.sport, p.dport)) or (p.proto == 6 and p.tcp_flags is None) \
                or (p.proto in (1, 58) and None in (p.icmp_type, p.icmp_code)):
            continue    # a None L4 field means 'truncated' in Packet; build() writes zeros instead
        vlans = (p.vlan,) if p.vlan is not None else ()
        ext = (44,) if p.family == 6 and p.fragment != "none" else ()
        got = frames.parse(frames.build(p, vlans=vlans, v6_ext=ext, ip_options=rng.choice([0, 2])))
        want = replace(p.effective(), ct=None)
        assert got.key() == want.key(), (p, got)
        n += 1
    assert n > 1000


def test_truncation_only_removes_fields():
    rng = random.Random(8)
    hp = random_policy(rng, 10)
    for _ in range(500):
        p = random_packet(rng, hp)
        fr = frames.build(p)
        full = frames.parse(fr)
        for cut in range(14, len(fr)):
            part = frames.parse(fr[:cut])
            for f in ("family", "src", "dst", "proto", "sport", "dport", "tcp_flags", "icmp_type", "icmp_code"):
                assert getattr(part, f) in (None, getattr(full, f))


def test_extension_walk_bound_and_arp():
    p = random_packet(random.Random(1), random_policy(random.Random(1), 1))
    p = replace(p, family=6, src=__import__("ipaddress").ip_address("fd00::1"),
                dst=__import__("ipaddress").ip_address("fd00::2"), proto=6, sport=1, dport=2, fragment="none")
    assert frames.parse(frames.build(p, v6_ext=(0,) * 6)).proto == 6
    assert frames.parse(frames.build(p, v6_ext=(0,) * 7)).proto is None
    arp = frames.DST_MAC + frames.SRC_MAC + b"\x08\x06" + bytes(28)
    assert frames.is_arp(arp) and not frames.is_arp(frames.build(p))


PARSING_FAMILIES = ("engine", "syn", "attempts", "flows", "capture")


@pytest.mark.parametrize("obj", PARSING_FAMILIES)
def test_limits_are_the_kernel_parsers(obj):
    """Every object that parses packets carries parse.h's limits in its BTF; the Python twin has the same."""
    path = packaged_path(obj)
    if not path.exists():
        pytest.skip(f"{obj} object not built (make -C bpf)")
    btf = Btf.from_elf(str(path))
    assert btf.enum("bg_parse_limit") == {"BG_PARSE_VLAN_MAX": frames.VLAN_MAX,
                                          "BG_PARSE_V6_EXT_MAX": frames.V6_EXT_MAX}
    assert sorted(btf.enum("bg_v6_ext").values()) == sorted(frames.V6_EXT)


def test_walk_stops_at_a_later_fragment_and_steps_over_ah():
    """After a non-first fragment's header comes payload: its next header is the protocol, no L4 fields.
    AH is (hdrlen + 2) * 4 bytes long, and the walk reaches the ports behind it."""
    import ipaddress

    p = Packet(family=6, src=ipaddress.ip_address("fd00::1"), dst=ipaddress.ip_address("fd00::2"), proto=17,
               sport=7, dport=9, fragment="later")
    got = frames.parse(frames.build(p, v6_ext=(0, 44, 60)))
    assert (got.proto, got.fragment, got.sport) == (60, "later", None)
    ah = frames.parse(frames.build(replace(p, fragment="none"), v6_ext=(51, 60, 51)))
    assert (ah.proto, ah.sport, ah.dport) == (17, 7, 9)
