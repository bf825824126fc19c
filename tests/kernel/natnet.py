"""Helpers of the NAT tests: the VIPs, the receiving stacks' checksum-error counters (nstat), and the NAT's
Prometheus metrics as a scrape renders them."""

from __future__ import annotations

from bpfgate.sandbox.scenes import CSUM_COUNTERS, csum_errors  # noqa: F401  (imported by the tests from here)

VIP4 = "198.18.200.1"   # routed to the NAT, assigned nowhere
VIP6 = "fd00:200::1"


def nat_metrics(netns: str | None) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted label items) -> value of the namespace's NAT metrics, parsed from the text a
    scrape of `bpfgate metrics` returns."""
    from prometheus_client.parser import text_string_to_metric_families

    from bpfgate.inspect.metrics import Exporter
    from bpfgate.nat import NatCollector

    with Exporter() as exp:
        exp.add(NatCollector(netns))
        text = exp.render()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


# ---- checksum offload, captures, checksum verdicts -------------------------------------------------------

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM = 0x16, 0x17


def _ethtool(host, ifname: str, cmd: int, data: int = 0) -> int:
    import ctypes
    import fcntl
    import socket
    import struct

    ev = (ctypes.c_uint32 * 2)(cmd, data)
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(ev)).ljust(40, b"\0")
    with host.entered():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
    finally:
        s.close()
    return ev[1]


def set_tx_csum(host, ifname: str, on: bool) -> None:
    """`ethtool -K IF tx on|off`: with it on, the stack leaves TCP/UDP checksums to the device
    (CHECKSUM_PARTIAL: the field holds the pseudo-header sum); off, it computes them in full."""
    _ethtool(host, ifname, ETHTOOL_STXCSUM, int(on))
    assert _ethtool(host, ifname, ETHTOOL_GTXCSUM) == int(on)


class Capture:
    """tcpdump on one interface of a host, into a pcap file, until stop()."""

    def __init__(self, host, ifname: str, path: str):
        self.path = path
        self.proc = host.spawn(["tcpdump", "-n", "-U", "--immediate-mode", "-s", "0", "-i", ifname, "-w", path,
                                "tcp or udp or icmp or icmp6"])
        self.proc.wait_for_output("listening on")

    def stop(self) -> str:
        import time

        time.sleep(0.2)   # the last packets reach the file (-U: written per packet)
        self.proc.stop()
        return self.path


STATUS = ("ip.checksum.status", "tcp.checksum.status", "udp.checksum.status", "icmp.checksum.status",
          "icmpv6.checksum.status")


def tshark_rows(path: str) -> list[dict]:
    """Every packet with its addresses, ports and tshark's checksum verdicts (0 bad, 1 good, 2 unverified)."""
    import subprocess

    fields = ("frame.number", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport",
              "udp.srcport", "udp.dstport", "udp.checksum", "icmp.type", "icmpv6.type", *STATUS)
    argv = ["tshark", "-n", "-r", path, "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
            "-o", "udp.check_checksum:TRUE", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
            "-E", "aggregator=,"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(fields, line.split("\t"))) for line in out.splitlines() if line.strip()]


def partial_sum_ok(path: str, frame: int) -> bool:
    """A CHECKSUM_PARTIAL packet (TX offload on: nothing ever completes it between veths) carries the
    pseudo-header sum of its addresses, protocol and length in its TCP/UDP checksum field: true when it
    does, i.e. the translation updated the pseudo-header part right."""
    import struct

    import dpkt

    with open(path, "rb") as f:
        for n, (_, buf) in enumerate(dpkt.pcap.Reader(f), 1):
            if n != frame:
                continue
            ip = buf[14:]
            if ip[0] >> 4 == 4:
                hl, proto = (ip[0] & 15) * 4, ip[9]
                l4len = struct.unpack("!H", ip[2:4])[0] - hl
                pseudo = ip[12:20] + struct.pack("!BBH", 0, proto, l4len)
            else:
                hl, proto = 40, ip[6]
                l4len = struct.unpack("!H", ip[4:6])[0]
                pseudo = ip[8:40] + struct.pack("!IxxxB", l4len, proto)
            off = hl + (16 if proto == 6 else 6)
            field = struct.unpack("!H", ip[off:off + 2])[0]
            s = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
            while s >> 16:
                s = (s & 0xFFFF) + (s >> 16)
            return field == s
    raise AssertionError(f"no frame {frame} in {path}")
