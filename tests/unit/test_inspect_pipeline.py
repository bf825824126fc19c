"""Event pipeline without a kernel: record layouts from the objects' BTF, the JSON form of each kind,
time conversion, address and flag formatting, the kind registry, and CLI checks that run before any
attach (no root needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from bpfgate.cli.events_cmd import human_line
from bpfgate.errors import BpfgateError
from bpfgate.inspect.events import (KINDS, Clock, Context, EventKind, addr_bytes, addr_str, iso8601,
                                    register_kind, tcp_flags_str)
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.objects import packaged_path


@pytest.fixture(scope="module")
def btf_attempts():
    return Btf.from_elf(str(packaged_path("attempts")))


@pytest.fixture(scope="module")
def btf_syn():
    return Btf.from_elf(str(packaged_path("syn")))


class FixedClock(Clock):
    def __init__(self, offset_ns: int):
        self.offset_ns = offset_ns

    def resync(self) -> None:
        pass


def test_record_layouts_from_btf(btf_attempts, btf_syn):
    import ctypes

    att = btf_attempts.struct("bg_attempt_event")
    flood = btf_syn.struct("bg_syn_flood_event")
    for rt in (att, flood):
        assert type(rt()).hdr.offset == 0  # the header every record starts with (dispatch on its type)
    assert ctypes.sizeof(att) == 64 and ctypes.sizeof(flood) == 64
    assert att.__name__ == KINDS[21].struct and flood.__name__ == KINDS[20].struct


def test_attempt_json_form(btf_attempts):
    rt = btf_attempts.struct("bg_attempt_event")
    rec = rt()
    rec.hdr.type, rec.hdr.ts_ns, rec.hdr.cpu = 21, 5_000_000_000, 1
    rec.ifindex, rec.family, rec.tcp_flags, rec.sport, rec.dport, rec.pkt_len = 7, 6, 0x02 | 0x40 | 0x80, 40000, 443, 94
    rec.saddr[:] = list(socket.inet_pton(socket.AF_INET6, "fd00::1"))
    rec.daddr[:] = list(socket.inet_pton(socket.AF_INET6, "fd00::2"))
    ctx = Context(FixedClock(1_700_000_000_000_000_000), {7: "eth0"})
    assert KINDS[21].fields(rec, ctx) == {
        "interface": "eth0", "ifindex": 7, "family": 6, "src": "fd00::1", "sport": 40000, "dst": "fd00::2",
        "dport": 443, "flags": "SYN|ECE|CWR", "len": 94}


def test_flood_json_form(btf_syn):
    rec = btf_syn.struct("bg_syn_flood_event")()
    rec.ifindex, rec.window_syns, rec.rate = 3, 101, 100
    rec.src.family = 4
    rec.src.addr[:4] = list(socket.inet_aton("198.18.0.9"))
    clock = FixedClock(1_700_000_000_000_000_000)
    f = KINDS[20].fields(rec, Context(clock, {}))
    assert f == {"interface": None, "ifindex": 3, "family": 4, "src": "198.18.0.9", "window_syns": 101,
                 "rate": 100, "blocked": False, "block_until": None}
    rec.block_until_ns = 2_500_000_000
    f = KINDS[20].fields(rec, Context(clock, {}))
    assert f["blocked"] is True and f["block_until"] == "2023-11-14T22:13:22.500000Z"


def test_time_conversion():
    assert iso8601(0) == "1970-01-01T00:00:00.000000Z"
    assert iso8601(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    c = Clock()
    mono = time.monotonic_ns()
    assert c.wall_ns(mono) - mono == c.offset_ns
    assert abs(c.epoch(mono) - time.time()) < 60  # the same instant on both clocks (generous: not a timing test)
    assert c.iso(mono).endswith("Z")


def test_addresses_and_flags():
    assert addr_bytes("198.18.0.1") == (4, bytes([198, 18, 0, 1]) + bytes(12))
    fam, raw = addr_bytes("fd00::7")
    assert fam == 6 and addr_str(6, raw) == "fd00::7"
    assert addr_str(4, bytes([198, 18, 0, 1]) + bytes(12)) == "198.18.0.1"
    for bad in ("", "198.18.0", "example.com", "fd00::1::2"):
        with pytest.raises(ValueError):
            addr_bytes(bad)
    assert tcp_flags_str(0x12) == "SYN|ACK" and tcp_flags_str(0) == ""


def test_kind_registry_refuses_a_taken_type():
    with pytest.raises(BpfgateError):
        register_kind(EventKind(21, "other", "bg_other", lambda r, c: {}))
    assert register_kind(KINDS[21]) is KINDS[21]  # registering the same kind again is harmless


def test_human_lines():
    base = {"time": "2026-01-02T03:04:05.123456Z", "source": "attempts"}
    line = human_line({**base, "type": "conn_attempt", "interface": "eth0", "ifindex": 2, "src": "fd00::1",
                       "sport": 1, "dst": "fd00::2", "dport": 22, "flags": "SYN"})
    assert line == "03:04:05.123456 attempt  eth0  [fd00::1]:1 -> [fd00::2]:22  SYN"
    line = human_line({**base, "type": "events_lost", "lost": 3, "lost_total": 9})
    assert "LOST" in line and "3 events" in line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bpfgate.cli.main", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args,msg", [
    (("syn", "--dev", "x0", "--block", "3"), "bpfgate syn: --block needs --rate"),
    (("metrics", "--dev", "x0", "--listen", "localhost:80"), "expected ADDRESS:PORT"),
    (("metrics", "--dev", "x0", "--listen", "127.0.0.1:70000"), "port 70000 out of range"),
])
def test_cli_bad_input_is_one_line(args, msg):
    r = _cli(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpfgate: error:") and msg in lines[0], r.stderr


@pytest.mark.parametrize("cmd", ["events", "syn", "metrics"])
def test_cli_help(cmd):
    r = _cli(cmd, "--help")
    assert r.returncode == 0 and "--dev" in r.stdout and "--netns" in r.stdout
    if cmd != "metrics":
        assert "--json" in r.stdout


def test_ring_size_validation():
    from bpfgate.inspect.events import ring_size

    assert ring_size(4096) == 4096 and ring_size(1 << 24) == 1 << 24
    for bad in (0, -5, 1000, 4097, 6144):
        with pytest.raises(BpfgateError):
            ring_size(bad)
