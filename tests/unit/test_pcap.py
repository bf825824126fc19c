"""pcap/pcapng writers: read back by an independent parser (dpkt) and, where installed, by tshark."""

from __future__ import annotations

import shutil
import socket
import subprocess

import dpkt
import pytest

from bpfgate.errors import BpfgateError, NotFound
from bpfgate.inspect.pcap import open_writer

T0 = 1_795_000_000_123_456_789  # ns since the epoch: exercises the nanosecond fields


def frame(sport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=53, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"), p=17, data=udp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def write(path, pcapng: bool, snaplen: int = 64) -> list[bytes]:
    frames = [frame(1000 + i, bytes([i]) * (10 + 30 * i)) for i in range(5)]
    with open_writer(str(path), pcapng=pcapng, snaplen=snaplen, ifname="veth9") as w:
        for i, f in enumerate(frames):
            w.write(T0 + i, f[:snaplen], len(f), comment=f"verdict=drop rule=r{i}" if i % 2 else None,
                    direction=("ingress", "egress")[i % 2])
        assert w.count == 5
    return frames


def test_pcap_reads_back_with_dpkt(tmp_path):
    path = tmp_path / "a.pcap"
    frames = write(path, pcapng=False)
    with open(path, "rb") as f:
        r = dpkt.pcap.Reader(f)
        assert r.snaplen == 64 and r.datalink() == dpkt.pcap.DLT_EN10MB
        got = list(r)
    assert len(got) == 5
    for i, ((ts, data), orig) in enumerate(zip(got, frames)):
        assert data == orig[:64]
        assert abs(float(ts) - (T0 + i) / 1e9) < 1e-6


def test_pcapng_reads_back_with_dpkt(tmp_path):
    path = tmp_path / "a.pcapng"
    frames = write(path, pcapng=True)
    with open(path, "rb") as f:
        got = list(dpkt.pcapng.Reader(f))
    assert [d for _, d in got] == [f[:64] for f in frames]


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
@pytest.mark.parametrize("pcapng", [False, True])
def test_tshark_reads_both_formats(tmp_path, pcapng):
    path = tmp_path / "b.cap"
    frames = write(path, pcapng=pcapng)
    fields = ["frame.len", "frame.cap_len", "frame.time_epoch", "udp.srcport", "frame.comment",
              "frame.packet_flags_direction"]
    r = subprocess.run(["tshark", "-r", str(path), "-T", "fields", *sum((["-e", f] for f in fields), [])],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == 5
    for i, row in enumerate(rows):
        length, caplen, epoch, sport, comment, flags = row
        assert int(length) == len(frames[i]) and int(caplen) == min(64, len(frames[i]))
        assert epoch == f"{(T0 + i) // 10**9}.{(T0 + i) % 10**9:09d}"
        assert int(sport) == 1000 + i
        if pcapng:
            assert comment == (f"verdict=drop rule=r{i}" if i % 2 else "")
            assert int(flags, 16) == (1 if i % 2 == 0 else 2)  # inbound / outbound


def test_unwritable_path_is_one_typed_error(tmp_path):
    with pytest.raises(NotFound):
        open_writer(str(tmp_path / "no" / "such" / "dir.pcap"))
    with pytest.raises(BpfgateError):
        open_writer(str(tmp_path))  # a directory
