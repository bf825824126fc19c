"""trace records -> JSON form and text lines, on records laid out from the objects' own BTF (no root)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from bpfgate.kernel.btf import Btf
from bpfgate.trace import attribution, format as fmt, names

OBJECTS = Path(__file__).resolve().parents[2] / "src" / "bpfgate" / "objects"


@pytest.fixture(scope="module")
def tcp_t():
    return Btf.from_elf(str(OBJECTS / "trace_tcp.o")).struct("bg_tcp_event")


@pytest.fixture(scope="module")
def drop_t():
    return Btf.from_elf(str(OBJECTS / "trace_drops.o")).struct("bg_drop_event")


def _addr(rec_field, text: str) -> None:
    fam = socket.AF_INET6 if ":" in text else socket.AF_INET
    raw = socket.inet_pton(fam, text)
    for i, b in enumerate(raw):
        rec_field[i] = b


def _tcp(tcp_t, **kw):
    rec = tcp_t()
    rec.hdr.type = fmt.TCP_TYPE
    rec.family = kw.pop("family", 2)
    _addr(rec.saddr, kw.pop("saddr", "198.18.0.1"))
    _addr(rec.daddr, kw.pop("daddr", "198.18.0.2"))
    for k, v in kw.items():
        if k == "comm":
            rec.comm[: len(v)] = list(v)
        else:
            setattr(rec, k, v)
    return rec


def test_close_has_bytes_duration_owner(tcp_t):
    rec = _tcp(tcp_t, kind=3, pid=42, comm=b"curl", sport=40000, dport=80, old_state=9, new_state=7,
               duration_ns=1_500_000, bytes_sent=10, bytes_received=20, owner_flags=1, sk=0xFFFF8880DEAD0000)
    d = fmt.tcp_fields(rec)
    assert (d["event"], d["pid"], d["comm"], d["owner"]) == ("close", 42, "curl", "connect")
    assert (d["ip"], d["laddr"], d["lport"], d["raddr"], d["rport"]) == (4, "198.18.0.1", 40000, "198.18.0.2", 80)
    assert (d["tx_bytes"], d["rx_bytes"], d["duration_ms"]) == (10, 20, 1.5)
    assert (d["old_state"], d["state"], d["sk"]) == ("LAST_ACK", "CLOSE", "0xffff8880dead0000")
    line = fmt.tcp_line({**d, "time": "2026-01-01T10:00:00.123456Z"})
    assert "close" in line and "curl" in line and "state=LAST_ACK" in line


def test_unknown_owner_is_null_not_zero(tcp_t):
    d = fmt.tcp_fields(_tcp(tcp_t, kind=5, comm=b"junk", new_state=1, old_state=1))
    assert d["pid"] is None and d["comm"] is None and d["owner"] is None and d["event"] == "retransmit"
    assert "duration_ms" not in d and "tx_bytes" not in d


@pytest.mark.parametrize("err, cause", [(errno.ECONNREFUSED, "refused"), (errno.ETIMEDOUT, "timeout"),
                                        (errno.EHOSTUNREACH, "unreachable"), (errno.ENETUNREACH, "unreachable"),
                                        (0, "aborted"), (errno.EACCES, "EACCES")])
def test_connect_failed_cause(tcp_t, err, cause):
    d = fmt.tcp_fields(_tcp(tcp_t, kind=4, pid=1, error=err, old_state=2, new_state=7))
    assert d["cause"] == cause and d["event"] == "connect_failed"


def test_ipv6_and_v4_mapped(tcp_t):
    d = fmt.tcp_fields(_tcp(tcp_t, kind=1, family=10, saddr="fd00::1", daddr="fd00::2"))
    assert (d["ip"], d["laddr"], d["raddr"]) == (6, "fd00::1", "fd00::2")
    d = fmt.tcp_fields(_tcp(tcp_t, kind=2, family=10, saddr="::ffff:198.18.0.2", daddr="::ffff:198.18.0.1"))
    assert (d["ip"], d["laddr"], d["raddr"]) == (4, "198.18.0.2", "198.18.0.1")


def test_owner_taken_at_close_wins(tcp_t):
    assert fmt.tcp_fields(_tcp(tcp_t, kind=3, pid=7, owner_flags=2 | 4))["owner"] == "close"
    assert fmt.tcp_fields(_tcp(tcp_t, kind=2, pid=7, owner_flags=2))["owner"] == "listener"


def test_reset_tx_reason_and_no_state(tcp_t, monkeypatch):
    monkeypatch.setattr(names, "rst_reasons", lambda: {1: "NO_SOCKET"})
    d = fmt.tcp_fields(_tcp(tcp_t, kind=7, error=1))
    assert d["reason"] == "NO_SOCKET" and d["state"] is None and d["sk"] is None
    assert "state=" not in fmt.tcp_line({**d, "time": ""})


def test_drop_fields_and_attribution_hook(drop_t, monkeypatch):
    monkeypatch.setattr(names, "drop_reasons", lambda: {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 73: "TC_INGRESS"})
    monkeypatch.setattr(attribution, "_program_at", lambda ns, idx, d: {"program": "bg_dropper", "prog_id": 9,
                                                                        "direction": d, "priority": 1, "handle": 1})
    monkeypatch.setattr(attribution, "_cache", {})
    monkeypatch.setattr(attribution, "_resolvers", [])
    rec = drop_t()
    rec.hdr.type = fmt.DROP_TYPE
    rec.family, rec.protocol, rec.reason, rec.ifindex, rec.netns, rec.sport, rec.dport = 2, 6, 73, 5, 123, 1, 8082
    _addr(rec.saddr, "198.18.0.1")
    _addr(rec.daddr, "198.18.0.2")
    d = fmt.drop_fields(rec)
    assert (d["reason"], d["protocol"], d["saddr"], d["dport"]) == ("TC_INGRESS", "tcp", "198.18.0.1", 8082)
    assert d["by"] == {"program": "bg_dropper", "prog_id": 9, "direction": "ingress", "priority": 1,
                       "handle": 1, "rule": None}
    # the policy engine's hook names the rule
    attribution.register_rule_resolver(lambda ev, prog: f"deny-{ev['dport']}" if prog["prog_id"] == 9 else None)
    assert fmt.drop_fields(rec)["by"]["rule"] == "deny-8082"
    assert "by bg_dropper (id 9, tc ingress, rule deny-8082)" in fmt.drop_line({**fmt.drop_fields(rec), "time": ""})
    rec.reason = 3  # not a TC drop: never attributed
    assert fmt.drop_fields(rec)["by"] is None


def test_drop_without_ip_header(drop_t, monkeypatch):
    monkeypatch.setattr(names, "drop_reasons", lambda: {})
    rec = drop_t()
    rec.reason = (5 << 16) | 3
    d = fmt.drop_fields(rec)
    assert d["ip"] is None and d["protocol"] is None and d["reason"] == "SUBSYS_5:3"
    fmt.drop_line({**d, "time": ""})
