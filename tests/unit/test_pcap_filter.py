"""Capture filter parsing and its load-time constants, the JSON packet summary, and the capture/flow
record layouts as the packaged objects' BTF declares them (no root needed)."""

from __future__ import annotations

import ctypes
import socket
import struct

import dpkt
import pytest

from bpfgate.errors import BpfgateError
from bpfgate.inspect.capture import CaptureFilter, summarize
from bpfgate.kernel.objects import BpfObject, packaged_path


def test_empty_filter_captures_everything():
    f = CaptureFilter.parse()
    assert f.rodata() == {"cfg_ip_only": 0}
    assert f.describe() == "all packets"


def test_ipv4_host_is_mapped_with_its_mask():
    f = CaptureFilter.parse("TCP", 443, "198.18.7.9/16")
    r = f.rodata()
    assert r["cfg_ip_only"] == 1 and r["cfg_proto"] == 6 and r["cfg_port"] == 443
    assert r["cfg_host_family"] == 4 and r["cfg_host_on"] == 1
    addr = struct.pack("=4I", *r["cfg_host"])
    mask = struct.pack("=4I", *r["cfg_mask"])
    assert addr == bytes(10) + b"\xff\xff" + bytes([198, 18, 0, 0])  # host bits cleared (strict=False)
    assert mask == b"\xff" * 12 + b"\xff\xff\x00\x00"
    assert f.describe() == "tcp and port 443 and host 198.18.0.0/16"


def test_ipv6_host():
    r = CaptureFilter.parse(host="fd00:1::/32").rodata()
    assert struct.pack("=4I", *r["cfg_host"]) == socket.inet_pton(socket.AF_INET6, "fd00:1::")
    assert struct.pack("=4I", *r["cfg_mask"]) == b"\xff" * 4 + bytes(12)


@pytest.mark.parametrize("kw, needle", [
    ({"proto": "bogus"}, "unknown protocol"),
    ({"proto": "300"}, "unknown protocol"),
    ({"port": 0}, "out of range"),
    ({"port": 70000}, "out of range"),
    ({"proto": "icmp", "port": 80}, "tcp or udp"),
    ({"host": "not-an-address"}, "not an address"),
])
def test_bad_filters_are_typed_errors(kw, needle):
    with pytest.raises(BpfgateError, match=needle):
        CaptureFilter.parse(**kw)


def test_summarize_frames():
    udp = dpkt.udp.UDP(sport=1111, dport=53, data=b"x")
    ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, "fd00::1"), dst=socket.inet_pton(socket.AF_INET6, "fd00::2"),
                       nxt=17, hlim=64, data=udp)
    frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x86DD, data=ip6))
    assert summarize(frame) == {"family": 6, "proto": 17, "src": "fd00::1", "dst": "fd00::2", "sport": 1111, "dport": 53}
    assert summarize(b"\x00" * 12 + b"\x08\x06" + b"\x00" * 28) == {"ethertype": "0x0806"}
    assert summarize(b"short") == {}


@pytest.mark.skipif(not packaged_path("flows").exists(), reason="BPF objects not built (make -C bpf)")
def test_record_layouts_from_btf():
    """conntrack.h / flows.h / capture.h as Python reads them: flows keep their counters in the tracker's entries."""
    with BpfObject.open("flows") as obj:
        key, val = obj.btf.struct("bg_ct_key"), obj.btf.struct("bg_ct_value")
        end = obj.btf.struct("bg_flow_end_event")
        assert ctypes.sizeof(key) == 40 and ctypes.sizeof(val) == 112
        assert [n for n, *_ in key._fields_ if not n.startswith("_")] == \
            ["family", "proto", "sport", "dport", "pad", "src", "dst"]
        assert ctypes.sizeof(obj.btf.struct("bg_ct_ext")) == 40   # the room reserved for NAT, LB, steering
        assert ctypes.sizeof(end) == 16 + 40 + 112
    with BpfObject.open("capture") as obj:
        cap = obj.btf.struct("bg_capture_event")
        assert ctypes.sizeof(cap) == 40
        names = {n for n, *_ in cap._fields_}
        assert {"ifindex", "pkt_len", "cap_len", "rule_id", "dir", "hook", "verdict"} <= names
