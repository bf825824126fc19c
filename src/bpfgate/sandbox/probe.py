"""Traffic probes run from inside a host's namespace by the calling thread: TCP connect, HTTP GET, ping.

Python sockets rather than curl/ping processes: no process start (~1 ms per probe instead of ~10),
no proxy variables, and `ping` is not installed everywhere. Every probe is bounded by its timeout.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bpfgate.kernel import netns


def _family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def tcp_connect(ns: str | None, addr: str, port: int, timeout: float) -> bool:
    with netns.entered(ns):
        s = socket.socket(_family(addr), socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@dataclass
class HttpResult:
    status: int | None  # None when no HTTP answer came back
    body: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 400


def url_host(url: str) -> str:
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"only http://<address>[:port]/... URLs are supported, got {url!r}")
    ipaddress.ip_address(u.hostname)  # literal addresses only: no DNS from inside a sandbox
    return u.hostname


def http_get(ns: str | None, url: str, timeout: float) -> HttpResult:
    url_host(url)
    u = urlsplit(url)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    # the connection's socket is created on connect(), so the whole exchange runs in the namespace
    with netns.entered(ns):
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            return HttpResult(resp.status, resp.read())
        except (OSError, http.client.HTTPException) as e:
            return HttpResult(None, error=f"{type(e).__name__}: {e}".rstrip(": "))
        finally:
            conn.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(ns: str | None, addr: str, timeout: float, count: int = 1) -> int:
    """Send `count` ICMP echo requests (raw socket, needs root); return how many were answered."""
    v6 = _family(addr) == socket.AF_INET6
    with netns.entered(ns):
        if v6:  # the kernel fills in ICMPv6 checksums on raw sockets
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = (os.getpid() ^ id(s)) & 0xFFFF
    req_type, rep_type = (128, 129) if v6 else (8, 0)
    answered = 0
    try:
        for seq in range(1, count + 1):
            payload = b"bpfgate-sandbox"
            hdr = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
            if not v6:
                hdr = struct.pack("!BBHHH", req_type, 0, _checksum(hdr + payload), ident, seq)
            deadline = time.monotonic() + timeout
            s.sendto(hdr + payload, (addr, 0))
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([s], [], [], left)[0]:
                    break
                pkt, _ = s.recvfrom(2048)
                icmp = pkt if v6 else pkt[(pkt[0] & 0x0F) * 4:]  # IPv4 raw sockets include the IP header
                if len(icmp) >= 8 and icmp[0] == rep_type and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                    answered += 1
                    break
    except OSError:
        pass  # unreachable network and the like: counts as unanswered
    finally:
        s.close()
    return answered
