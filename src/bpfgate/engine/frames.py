"""Ethernet frames for the engine's tests and benchmarks: build() a frame from a policy Packet (with the
adversarial variants of the differential test) and parse() a frame as bpf/include/parse.h does.

parse(build(p)) == p.effective() (ct aside) for every well-formed frame; parse() of a truncated or odd
frame is what the kernel parser must find in it (same bounds, same `have` rules).
"""

from __future__ import annotations

import ipaddress
import struct

from bpfgate.policy.packet import Packet

ETH_IP, ETH_IP6, ETH_8021Q, ETH_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
V6_EXT = (0, 43, 44, 60)
V6_EXT_MAX = 6
SRC_MAC, DST_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def _l4(p: Packet) -> bytes:
    proto = p.proto
    if proto in (6, 17, 132):
        ports = struct.pack("!HH", p.sport or 0, p.dport or 0)
        if proto == 6:
            return ports + struct.pack("!IIBBHHH", 1, 0, 0x50, p.tcp_flags or 0, 65535, 0, 0)
        if proto == 17:
            return ports + struct.pack("!HH", 8, 0)
        return ports + bytes(8)
    if proto in (1, 58):
        return struct.pack("!BBHHH", p.icmp_type or 0, p.icmp_code or 0, 0, 0x1234, 1)
    return bytes(8)


def build(p: Packet, *, vlans: tuple[int, ...] = (), ip_options: int = 0, v6_ext: tuple[int, ...] = (),
          payload: bytes = b"") -> bytes:
    """A frame carrying p. vlans: tag ids (outer first; p.vlan is ignored); ip_options: IPv4 option words;
    v6_ext: IPv6 extension header types before L4 (44 = fragment header). p.fragment sets the offset."""
    if p.family not in (4, 6):   # not IP (local experimental ethertype): classified with no L3
        return DST_MAC + SRC_MAC + struct.pack("!H", 0x88B5) + bytes(28)
    proto = p.proto if p.proto is not None else 59
    later = p.fragment == "later"
    l4 = _l4(p) + payload
    if p.family == 6:
        body, nh = l4, proto
        for ext in reversed(v6_ext):
            if ext == 44:
                off = (185 << 3) if later else 0
                more = 1 if p.fragment == "first" else 0
                body = struct.pack("!BBHI", nh, 0, off | more, 7) + body
            else:
                body = struct.pack("!BB", nh, 0) + bytes(6) + body
            nh = ext
        l3 = struct.pack("!IHBB", 6 << 28, len(body), nh, 64) + p.src.packed + p.dst.packed + body
        etype = ETH_IP6
    else:
        ihl = 5 + ip_options
        frag = (185 if later else 0) | (0x2000 if p.fragment == "first" else 0)
        hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 1, frag, 64, proto, 0,
                          (p.src or ipaddress.IPv4Address(0)).packed, (p.dst or ipaddress.IPv4Address(0)).packed)
        l3 = hdr + b"\x01" * (4 * ip_options) + l4
        etype = ETH_IP
    tags = b""
    types = [ETH_8021AD if i == 0 and len(vlans) > 1 else ETH_8021Q for i in range(len(vlans))]
    for i, vid in enumerate(vlans):
        tags += struct.pack("!HH", types[i], vid & 0xFFF)
    return DST_MAC + SRC_MAC + tags + struct.pack("!H", etype) + l3


def is_arp(frame: bytes) -> bool:
    """ARP frames (after up to two VLAN tags) pass the engine unclassified (parse.h `arp`)."""
    etype, cur = (struct.unpack_from("!H", frame, 12)[0], 14) if len(frame) >= 14 else (0, 14)
    for _ in range(2):
        if etype not in (ETH_8021Q, ETH_8021AD) or cur + 4 > len(frame):
            break
        etype = struct.unpack_from("!H", frame, cur + 2)[0]
        cur += 4
    return etype == 0x0806


def parse(frame: bytes) -> Packet:
    """What parse.h finds in frame (ct None; set it from the test's ct source)."""
    f = dict(family=None, src=None, dst=None, proto=None, sport=None, dport=None, tcp_flags=None,
             icmp_type=None, icmp_code=None, vlan=None, fragment="none", length=len(frame))
    end = len(frame)
    if end < 14:
        return Packet(**f)
    etype = struct.unpack_from("!H", frame, 12)[0]
    cur = 14
    for _ in range(2):
        if etype not in (ETH_8021Q, ETH_8021AD):
            break
        if cur + 4 > end:
            return Packet(**f)
        tci, etype = struct.unpack_from("!HH", frame, cur)
        if f["vlan"] is None:
            f["vlan"] = tci & 0xFFF
        cur += 4
    later = False
    if etype == ETH_IP:
        if cur + 20 > end or frame[cur] >> 4 != 4 or frame[cur] & 0xF < 5:
            return Packet(**f)
        hlen = (frame[cur] & 0xF) * 4
        if cur + hlen > end:
            return Packet(**f)
        f.update(family=4, proto=frame[cur + 9], src=ipaddress.IPv4Address(frame[cur + 12:cur + 16]),
                 dst=ipaddress.IPv4Address(frame[cur + 16:cur + 20]))
        later = struct.unpack_from("!H", frame, cur + 6)[0] & 0x1FFF != 0
        l4 = cur + hlen
    elif etype == ETH_IP6:
        if cur + 40 > end or frame[cur] >> 4 != 6:
            return Packet(**f)
        f.update(family=6, src=ipaddress.IPv6Address(frame[cur + 8:cur + 24]),
                 dst=ipaddress.IPv6Address(frame[cur + 24:cur + 40]))
        nh, l4 = frame[cur + 6], cur + 40
        for _ in range(V6_EXT_MAX):
            if nh not in V6_EXT:
                break
            if l4 + 8 > end:
                return Packet(**f)
            if nh == 44:
                later = later or struct.unpack_from("!H", frame, l4 + 2)[0] & 0xFFF8 != 0
                nxt = l4 + 8
            else:
                nxt = l4 + (frame[l4 + 1] + 1) * 8
            nh, l4 = frame[l4], nxt
        if nh in V6_EXT:
            return Packet(**f)
        f["proto"] = nh
    else:
        return Packet(**f)
    f["fragment"] = "later" if later else "none"
    proto = f["proto"]
    if later:
        return Packet(**f)
    if proto in (6, 17, 132) and l4 + 4 <= end:
        f["sport"], f["dport"] = struct.unpack_from("!HH", frame, l4)
        if proto == 6 and l4 + 14 <= end:
            f["tcp_flags"] = frame[l4 + 13]
    elif proto in (1, 58) and l4 + 2 <= end:
        f["icmp_type"], f["icmp_code"] = frame[l4], frame[l4 + 1]
    return Packet(**f)
