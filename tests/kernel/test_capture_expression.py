"""`bpfgate capture EXPRESSION` (the tcpdump subset, bpfgate.inspect.capture_expr, compiled to the capture
program's terms) with real traffic between two throwaway namespaces: an unfiltered capture and one capture
per expression run at once on the same traffic (UDP, TCP, ICMP over IPv4 and IPv6, the ARP and neighbour
discovery that comes with it); each expression's pcap holds exactly the packets tcpdump (libpcap) selects
from the unfiltered one with the same expression."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from collections import Counter

import pytest

from bpfgate import doctor
from bpfgate.inspect.capture import Capture, CaptureFilter
from bpfgate.inspect.pcap import PcapWriter
from bpfgate.sandbox.timing import scaled
from clirun import CLI  # noqa: E402  (tests/kernel helper)

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not shutil.which("tcpdump"), reason="tcpdump not installed (scripts/run installs it)")]

RING = 1 << 18


def read_pcap(data: bytes) -> list[bytes]:
    """The frames of a pcap file (either byte order, micro- or nanosecond)."""
    magic = data[:4]
    order = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(order + "I", data[off + 8: off + 12])[0]
        out.append(data[off + 16: off + 16 + incl])
        off += 16 + incl
    return out


def tcpdump_selects(path, expression: str) -> list[bytes]:
    r = subprocess.run(["tcpdump", "-Z", "root", "-r", str(path), "-w", "-", expression], capture_output=True,
                       timeout=scaled(60))
    assert r.returncode == 0, r.stderr.decode()
    return read_pcap(r.stdout)


def traffic(pair) -> None:
    """UDP and TCP over both families, ICMP echo over both; first contact: ARP and neighbour discovery."""
    client, server, c_if, s_if = pair
    for family, fam in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        with server.entered():
            srv = socket.socket(fam, socket.SOCK_DGRAM)
            lsn = socket.socket(fam, socket.SOCK_STREAM)
        with client.entered():
            cli = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            srv.bind((s_if.addr(family), 5353))
            srv.settimeout(5)
            lsn.bind((s_if.addr(family), 8443))
            lsn.listen()
            cli.bind((c_if.addr(family), 0))
            for i in range(3):
                cli.sendto(b"u%d" % i, (s_if.addr(family), 5353))
                srv.recv(100)
            cli.sendto(b"other", (s_if.addr(family), 7000))   # no one listens: an ICMP port unreachable back
            assert client.tcp_connect(s_if.addr(family), 8443)
            assert client.ping(s_if.addr(family), count=2)
        finally:
            for s in (srv, lsn, cli):
                s.close()


EXPRESSIONS = [
    "udp port 5353",
    "host {s4}",                                   # with the ARP that names it
    "ip6 and not icmp6",
    "src net 198.18.0.0/15 and (tcp or icmp)",
    "portrange 7000-8443 or icmp",
    "dst host {s6} or {c6}",                       # a bare value takes the qualifiers before it
    "not ip and not ip6",
    "tcp dst port 8443 or udp src port 5353",
    "src and dst net 198.18.0.0/15",
    "icmp or icmp6",
    "udp or tcp and port 8443",                    # and/or bind equally, left to right
    "! ( udp || tcp ) && ip",
]


def test_each_expression_captures_what_tcpdump_selects(pair, tmp_path):
    if not doctor.feature_available("tcx"):   # clsact: one capture filter per hook of an interface
        pytest.skip("captures side by side on one interface need TCX links (Linux >= 6.6)")
    client, _, c_if, s_if = pair
    names = {"s4": s_if.ip4, "s6": s_if.ip6, "c6": c_if.ip6}
    exprs = [e.format(**names) for e in EXPRESSIONS]
    caps: list[Capture] = []
    try:
        for filt in [CaptureFilter()] + [CaptureFilter.parse(expression=e) for e in exprs]:
            caps.append(Capture(c_if.name, filt, netns_name=client.netns, ring_size=RING))
        start = time.monotonic_ns()   # from here every capture is attached: the window compared
        traffic(pair)
        time.sleep(0.3)
        got: list[list] = [[] for _ in caps]
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.5:     # bounded: until every ring buffer is quiet
            for i, cap in enumerate(caps):
                more = cap.packets(20)
                if more:
                    got[i].extend(more)
                    quiet_since = time.monotonic()
        end = time.monotonic_ns()
        assert all(cap.lost == 0 for cap in caps)
    finally:
        for cap in caps:
            cap.close()
    # the link's own packets (neighbour discovery, MLD reports) come at any time: only what every capture saw
    got = [[p for p in packets if start <= p.mono_ns <= end] for packets in got]
    ref = tmp_path / "all.pcap"
    with open(ref, "wb") as f, PcapWriter(f) as w:
        for p in got[0]:
            w.write(p.wall_ns, p.data, p.pkt_len)
    frames = [p.data for p in got[0]]
    assert any(f[12:14] == b"\x08\x06" for f in frames), "no ARP in the traffic"
    for expr, packets in zip(exprs, got[1:]):
        want = tcpdump_selects(ref, expr)
        assert 0 < len(want) < len(frames) or expr == "not ip and not ip6", expr   # each one selects
        assert Counter(p.data for p in packets) == Counter(want), expr


def test_cli_expression_writes_only_what_it_selects(pair, tmp_path):
    client, _, c_if, s_if = pair
    path = tmp_path / "cli.pcap"
    proc = subprocess.Popen(CLI + ["capture", "--dev", c_if.name, "--netns", client.netns, "-w", str(path),
                                   "--duration", str(scaled(20)), "--count", "2", "icmp", "and", "dst", "host",
                                   s_if.ip4], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + scaled(60)
        while time.monotonic() < deadline and proc.poll() is None:
            client.ping(s_if.ip4, timeout=0.5)                 # until the capture is up and has its two
        _, err = proc.communicate(timeout=scaled(30))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(scaled(10))
    assert proc.returncode == 0, err
    assert "capturing icmp and dst host" in err and "2 packets written" in err
    frames = read_pcap(path.read_bytes())
    assert len(frames) == 2
    assert all(f[23] == 1 and socket.inet_ntoa(f[30:34]) == s_if.ip4 for f in frames)


@pytest.mark.parametrize("expr, says", [
    ("vlan 10", "'vlan' (VLAN tests) is outside the subset"),
    ("tcp[13] & 2 != 0", "byte offsets ('tcp[13]')"),
    ("host example.com", "resolves no names"),
    ("port 80 and (udp", "missing ')'"),
    ("tcp udp", "unexpected 'udp'"),
])
def test_cli_expression_outside_the_subset_is_one_line_exit_2(pair, expr, says):
    client, _, c_if, _ = pair
    r = subprocess.run(CLI + ["capture", "--dev", c_if.name, "--netns", client.netns, "--json", *expr.split()],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[0].startswith("bpfgate: error: capture filter: ")
