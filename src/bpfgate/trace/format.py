"""The JSON form of tcp and drop records, and the one-line text form (BCC-like columns).

Records travel through bpfgate.inspect.events (one event pipeline for every producer): the kinds are
registered there, so every JSON object also has the common keys type/time/epoch/mono_ns/cpu/source.

tcp keys: event (connect|accept|close|connect_failed|retransmit|reset_rx|reset_tx), pid (owner, null
when unknown), comm, cgroup_id, owner (how the owner is known: connect|listener|close, null), ip (4|6),
laddr, lport, raddr, rport (local end first, as `ss` shows), netns (inode), sk (flow id), state,
old_state, and per event: duration_ms (connect/accept: handshake; close, connect_failed: lifetime),
tx_bytes/rx_bytes (close: payload, retransmissions not counted twice), cause + error (connect_failed),
reason (reset_tx).
drop keys: reason, reason_code, ip, protocol, saddr, sport, daddr, dport, ifindex, netns, len, pid,
location (kernel function that dropped), by (bpfgate program a TC drop is attributed to, with the policy
engine's rule when an engine dropped it, else null).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from bpfgate import contract
from bpfgate.inspect.events import EventKind, register_kind
from bpfgate.trace import names

AF_INET, AF_INET6 = 2, 10
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
C = contract.constants("trace_tcp")
# where a socket's owner was taken (enum bg_owner_flags) -> the JSON "owner"
OWNER = C.names("bg_owner_flags", {"BG_OWNER_ACTIVE": "connect", "BG_OWNER_PASSIVE": "listener",
                                   "BG_OWNER_CLOSER": "close"})
_CLOSER = C.BG_OWNER_CLOSER
TCP_TYPE, DROP_TYPE = C.BG_EV_TCP, C.BG_EV_DROP

_kallsyms = names.Kallsyms()


_V4_MAPPED = bytes(10) + b"\xff\xff"


def address(family: int, raw: Any) -> tuple[int | None, str | None]:
    """(4|6, text) of a 16-byte address field; IPv4-mapped IPv6 (a v6 socket talking v4) shows as v4.
    inet_ntop rather than ipaddress: this runs per event, and is 3x faster."""
    b = bytes(raw)
    if family == AF_INET or (family == AF_INET6 and b[:12] == _V4_MAPPED):
        return 4, socket.inet_ntop(socket.AF_INET, b[:4] if family == AF_INET else b[12:16])
    if family == AF_INET6:
        return 6, socket.inet_ntop(socket.AF_INET6, b[:16])
    return None, None


def _owner(flags: int) -> str:
    # close() wins, it is the latest and surest; both connect and listener: not known which, so close
    return "close" if flags & _CLOSER else OWNER.get(flags, "close")


def _ms(ns: int) -> float | None:
    return round(ns / 1e6, 3) if ns else None


def tcp_fields(rec: Any, ctx: Any = None) -> dict:
    kind = names.TCP_KINDS.get(rec.kind, str(rec.kind))
    ip, laddr = address(rec.family, rec.saddr)
    _, raddr = address(rec.family, rec.daddr)
    known = rec.pid != 0
    d = {
        "event": kind,
        "pid": rec.pid if known else None,
        "comm": bytes(rec.comm).split(b"\0", 1)[0].decode(errors="replace") if known else None,
        "cgroup_id": rec.cgroup_id or None,
        "owner": _owner(rec.owner_flags) if known else None,
        "ip": ip, "laddr": laddr, "lport": rec.sport, "raddr": raddr, "rport": rec.dport,
        "netns": rec.netns, "sk": f"{rec.sk:#x}" if rec.sk else None,
        "state": names.tcp_state(rec.new_state) if rec.new_state else None,
        "old_state": names.tcp_state(rec.old_state) if rec.old_state else None,
    }
    if kind in ("connect", "accept", "close", "connect_failed"):
        d["duration_ms"] = _ms(rec.duration_ns)
    if kind == "close":
        d["tx_bytes"], d["rx_bytes"] = rec.bytes_sent, rec.bytes_received
    elif kind == "connect_failed":
        d["cause"], d["error"] = names.connect_cause(rec.error), errno.errorcode.get(rec.error, rec.error)
    elif kind == "reset_tx":
        d["reason"] = names.rst_reason(rec.error)
    elif kind == "retransmit" and rec.error:
        d["error"] = errno.errorcode.get(rec.error, rec.error)
    return d


def drop_fields(rec: Any, ctx: Any = None) -> dict:
    ip, saddr = address(rec.family, rec.saddr)
    _, daddr = address(rec.family, rec.daddr)
    from bpfgate.trace import attribution

    d = {
        "reason": names.drop_reason(rec.reason), "reason_code": rec.reason,
        "ip": ip, "protocol": PROTOCOLS.get(rec.protocol, rec.protocol) if ip else None,
        "saddr": saddr, "sport": rec.sport or None, "daddr": daddr, "dport": rec.dport or None,
        "ifindex": rec.ifindex or None, "netns": rec.netns or None, "len": rec.len,
        "pid": rec.pid or None, "location": _kallsyms.symbol(rec.location),
    }
    d["by"] = attribution.attribute({**d, "engine_rule": rec.engine_rule})
    return d


register_kind(EventKind(TCP_TYPE, "tcp", "bg_tcp_event", tcp_fields))
register_kind(EventKind(DROP_TYPE, "drop", "bg_drop_event", drop_fields))


# ---- text lines ------------------------------------------------------------------------------------------

TCP_HEADER = (f"{'TIME':<15} {'EVENT':<14} {'PID':>7} {'COMM':<15} {'IP':>2} {'LADDR':<22} {'LPORT':>5} "
              f"{'RADDR':<22} {'RPORT':>5} {'TX_B':>9} {'RX_B':>9} {'MS':>9}  DETAIL")
DROP_HEADER = (f"{'TIME':<15} {'REASON':<22} {'PROTO':<6} {'SADDR':<22} {'SPORT':>5} {'DADDR':<22} "
               f"{'DPORT':>5} {'IFINDEX':>7} {'PID':>7}  LOCATION / BY")


def _t(ev: dict) -> str:
    return ev.get("time", "")[11:26]


def _v(x: Any) -> str:
    return "-" if x is None else str(x)


def tcp_line(ev: dict) -> str:
    detail = []
    if ev["event"] == "connect_failed":
        detail.append(f"cause={ev['cause']} ({ev['error']})")
    if ev.get("reason"):
        detail.append(f"reason={ev['reason']}")
    state = ev["old_state"] if ev["event"] == "close" else ev["state"]  # close: the state it ended from
    if state and ev["event"] in ("close", "retransmit", "reset_rx", "reset_tx"):
        detail.append(f"state={state}")
    return (f"{_t(ev):<15} {ev['event']:<14} {_v(ev['pid']):>7} {_v(ev['comm']):<15.15} {_v(ev['ip']):>2} "
            f"{_v(ev['laddr']):<22} {ev['lport']:>5} {_v(ev['raddr']):<22} {ev['rport']:>5} "
            f"{_v(ev.get('tx_bytes')):>9} {_v(ev.get('rx_bytes')):>9} {_v(ev.get('duration_ms')):>9}  "
            + " ".join(detail))


def drop_line(ev: dict) -> str:
    where = ev.get("location") or "-"
    if ev.get("by"):
        by = ev["by"]
        where += f"  by {by['program']} (id {by['prog_id']}, tc {by['direction']}"
        where += f", rule {by['rule']})" if by.get("rule") else ")"
    return (f"{_t(ev):<15} {ev['reason']:<22.22} {_v(ev['protocol']):<6} {_v(ev['saddr']):<22} "
            f"{_v(ev['sport']):>5} {_v(ev['daddr']):<22} {_v(ev['dport']):>5} {_v(ev['ifindex']):>7} "
            f"{_v(ev['pid']):>7}  {where}")
