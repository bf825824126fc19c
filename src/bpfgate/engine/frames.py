"""Ethernet frames for the tests and benchmarks: build() a frame from a policy Packet (with the adversarial
variants of the differential tests) and parse() a frame as bpf/include/parse.h, the parser of every
program family, does.

parse(build(p)) == p.effective() (ct aside) for every well-formed frame; parse() of a truncated or odd
frame is what the kernel parser must find in it (same bounds, same `have` rules). parse_frame() also says
where the headers are, for the families that read more than the classifier's fields (syn, flows).
The limits below are parse.h's enum bg_parse_limit / bg_v6_ext (tests/unit/test_engine_frames.py reads
them from the objects' BTF).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from bpfgate.policy.packet import Packet

ETH_IP, ETH_IP6, ETH_8021Q, ETH_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
VLAN_MAX = 2                                # enum bg_parse_limit
V6_EXT_MAX = 6
V6_HOPOPTS, V6_ROUTING, V6_FRAGMENT, V6_AH, V6_DSTOPTS = 0, 43, 44, 51, 60   # enum bg_v6_ext
V6_EXT = (V6_HOPOPTS, V6_ROUTING, V6_FRAGMENT, V6_AH, V6_DSTOPTS)
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
            elif ext == V6_AH:   # 12 bytes: (hdrlen 1 + 2) * 4, SPI, sequence
                body = struct.pack("!BBHII", nh, 1, 0, 0x100, 1) + body
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
    """ARP frames (after the VLAN tags) pass the engine unclassified (bg_pkt.arp)."""
    return parse_frame(frame).arp


@dataclass(frozen=True)
class Parsed:
    """parse.h's struct bg_pkt: the packet's fields and where its headers start (offsets into the frame)."""

    packet: Packet
    l3: int | None = None        # IPv4/IPv6 header
    l4: int | None = None        # L4 header, when the walk reached it (not a non-first fragment)
    icmp_id: int = 0             # ICMP bytes 4..5 when in the frame
    arp: bool = False

    def l4_hdr_len(self, frame: bytes) -> int | None:
        """bg_pkt_l4_hdr_len: the L4 header's length when its fixed part is in the frame, else None."""
        p = self.packet
        if self.l4 is None or p.proto is None:
            return None
        need = {6: 20, 17: 8, 1: 8, 58: 8}.get(p.proto, 0)
        if self.l4 + need > len(frame):
            return None
        return (frame[self.l4 + 12] >> 4) * 4 if p.proto == 6 else need

    def is_syn(self, frame: bytes) -> bool:
        """bg_pkt_is_syn: SYN without ACK, the whole fixed TCP header in the frame."""
        p = self.packet
        return p.proto == 6 and p.tcp_flags is not None and self.l4_hdr_len(frame) is not None \
            and p.tcp_flags & 0x12 == 0x02


def parse(frame: bytes) -> Packet:
    """What parse.h finds in frame (ct None; set it from the test's ct source)."""
    return parse_frame(frame).packet


def parse_frame(frame: bytes, *, vlan: int | None = None) -> Parsed:
    """bg_parse(): vlan is an outer tag the device took off the frame (TC's skb->vlan_tci)."""
    f = dict(family=None, src=None, dst=None, proto=None, sport=None, dport=None, tcp_flags=None,
             icmp_type=None, icmp_code=None, vlan=vlan, fragment="none", length=len(frame))
    end = len(frame)
    if end < 14:
        return Parsed(Packet(**f))
    etype = struct.unpack_from("!H", frame, 12)[0]
    cur = 14
    for _ in range(VLAN_MAX):
        if etype not in (ETH_8021Q, ETH_8021AD):
            break
        if cur + 4 > end:
            return Parsed(Packet(**f))
        tci, etype = struct.unpack_from("!HH", frame, cur)
        if f["vlan"] is None:
            f["vlan"] = tci & 0xFFF
        cur += 4
    later = False
    if etype == ETH_IP:
        if cur + 20 > end or frame[cur] >> 4 != 4 or frame[cur] & 0xF < 5:
            return Parsed(Packet(**f))
        hlen = (frame[cur] & 0xF) * 4
        if cur + hlen > end:
            return Parsed(Packet(**f))
        f.update(family=4, proto=frame[cur + 9], src=ipaddress.IPv4Address(frame[cur + 12:cur + 16]),
                 dst=ipaddress.IPv4Address(frame[cur + 16:cur + 20]))
        later = struct.unpack_from("!H", frame, cur + 6)[0] & 0x1FFF != 0
        l4 = cur + hlen
    elif etype == ETH_IP6:
        if cur + 40 > end or frame[cur] >> 4 != 6:
            return Parsed(Packet(**f))
        f.update(family=6, src=ipaddress.IPv6Address(frame[cur + 8:cur + 24]),
                 dst=ipaddress.IPv6Address(frame[cur + 24:cur + 40]))
        nh, l4 = frame[cur + 6], cur + 40
        for _ in range(V6_EXT_MAX):
            if nh not in V6_EXT:
                break
            if l4 + 8 > end:
                return Parsed(Packet(**f), l3=cur)
            if nh == V6_FRAGMENT:
                nh, l4 = frame[l4], l4 + 8
                if struct.unpack_from("!H", frame, l4 - 6)[0] & 0xFFF8:
                    later = True    # what follows is payload: the walk ends
                    break
                continue
            size = (frame[l4 + 1] + 2) * 4 if nh == V6_AH else (frame[l4 + 1] + 1) * 8
            nh, l4 = frame[l4], l4 + size
        if not later and nh in V6_EXT:
            return Parsed(Packet(**f), l3=cur)
        f["proto"] = nh
    else:
        return Parsed(Packet(**f), arp=etype == 0x0806)
    f["fragment"] = "later" if later else "none"
    proto = f["proto"]
    if later:
        return Parsed(Packet(**f), l3=cur)
    icmp_id = 0
    if proto in (6, 17, 132) and l4 + 4 <= end:
        f["sport"], f["dport"] = struct.unpack_from("!HH", frame, l4)
        if proto == 6 and l4 + 14 <= end:
            f["tcp_flags"] = frame[l4 + 13]
    elif proto in (1, 58) and l4 + 2 <= end:
        f["icmp_type"], f["icmp_code"] = frame[l4], frame[l4 + 1]
        if l4 + 6 <= end:
            icmp_id = struct.unpack_from("!H", frame, l4 + 4)[0]
    return Parsed(Packet(**f), l3=cur, l4=l4, icmp_id=icmp_id)
