"""A parsed packet as the data plane's parser sees it, and its classifier key.

Fields are None where the parser did not get them (not present, truncated, or not applicable). The
normalisation in `effective()` is the parser contract of the issue, applied in one place:
- a non-first fragment has no L4 header: no ports, TCP flags or ICMP type/code;
- a field is only read when the layer below says it is there (ports only for TCP/UDP/SCTP, flags only for
  TCP, ICMP type/code only for ICMP/ICMPv6; nothing above L3 without an L3 header);
- a truncated header yields None for every field it would have carried.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Literal

from . import layout as L
from .model import ICMP_PROTOCOLS, PORT_PROTOCOLS

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Packet:
    family: int | None = None            # 4, 6, or None (not IP / L3 header truncated)
    src: Address | None = None
    dst: Address | None = None
    proto: int | None = None             # None: unknown (IPv6 extension walk did not end, truncated)
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    vlan: int | None = None              # outer VLAN id
    ct: int | None = None                # model.CT_STATES value, None if not looked up
    fragment: Literal["none", "first", "later"] = "none"
    length: int = 64

    def effective(self) -> "Packet":
        p = self
        if p.family not in (4, 6) or p.src is None or p.dst is None or p.src.version != p.family \
                or p.dst.version != p.family:
            p = replace(p, family=None, src=None, dst=None, proto=None)
        if p.proto is None or p.fragment == "later":
            p = replace(p, sport=None, dport=None, tcp_flags=None, icmp_type=None, icmp_code=None)
        if p.proto not in PORT_PROTOCOLS or p.sport is None or p.dport is None:
            p = replace(p, sport=None, dport=None)
        if p.proto != 6:
            p = replace(p, tcp_flags=None)
        if p.proto not in ICMP_PROTOCOLS or p.icmp_type is None or p.icmp_code is None:
            p = replace(p, icmp_type=None, icmp_code=None)
        return p

    def key(self) -> bytes:
        """The packed bg_cls_key the data plane builds for this packet (shape and gen zero)."""
        p = self.effective()
        have = 0
        src = dst = bytes(16)
        if p.family is not None:
            have |= L.HAVE_L3
            src, dst = p.src.packed.ljust(16, b"\0"), p.dst.packed.ljust(16, b"\0")
        if p.proto is not None:
            have |= L.HAVE_PROTO
        if p.sport is not None:
            have |= L.HAVE_PORTS
        if p.tcp_flags is not None:
            have |= L.HAVE_TCPFLAGS
        if p.icmp_type is not None:
            have |= L.HAVE_ICMP
        if p.vlan is not None:
            have |= L.HAVE_VLAN
        if p.ct is not None:
            have |= L.HAVE_CT
        return L.KEY.pack(0, 0, have, p.family or 0, p.proto or 0, p.tcp_flags or 0, p.icmp_type or 0,
                          p.icmp_code or 0, p.ct or 0, p.vlan or 0, p.sport or 0, p.dport or 0, src, dst, 0, 0)
