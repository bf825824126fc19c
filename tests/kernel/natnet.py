"""Helpers of the NAT tests: the VIPs, and the receiving stacks' checksum-error counters (nstat)."""

from __future__ import annotations

VIP4 = "198.18.200.1"   # routed to the NAT, assigned nowhere
VIP6 = "fd00:200::1"
CSUM_COUNTERS = ("TcpInCsumErrors", "UdpInCsumErrors", "IcmpInCsumErrors", "Udp6InCsumErrors",
                 "Icmp6InCsumErrors", "UdpLiteInCsumErrors", "IpExtInCsumErrors")


def csum_errors(host) -> frozenset:
    """(counter, value) of every checksum-error counter of the host's stack (nstat -az: absolute values)."""
    out = host.run(["nstat", "-asz", "--json"], check=True).stdout
    import json

    data = json.loads(out)
    vals = data.get("kernel", data)
    return frozenset((k, int(v)) for k, v in vals.items() if k in CSUM_COUNTERS)
