"""Topologies and traffic shared by the kernel tests and `bpfgate demo --scenario`: the MetalLB asymmetric-
return topology, UDP backends that answer with their port (which backend a load-balanced flow reached), many
UDP flows at once, and the checksum-error counters of a host's stack.

    t = metallb(sb)                      # client -- router ==sec== server(VIP on lo) ==pri== gw -- upstream
    udp_port_echo(server, (9001, 9002))  # each port answers a datagram with its own number
    socks = udp_sockets(client, 600)     # one flow each (bound, non-blocking)
    got = udp_round(socks, VIP, 53)      # the port that answered each flow (None: no answer from VIP:53)
"""

from __future__ import annotations

import select
import socket
import sys
import time
from dataclasses import dataclass

from .timing import scaled
from .topology import Host, Sandbox

# ---- the MetalLB topology ---------------------------------------------------------------------------------

METALLB_VIP = {4: "198.18.250.1", 6: "fd00:fa::1"}   # the service address, on the server's lo
METALLB_PORT = 8000


@dataclass
class MetalLB:
    """client --- router ==(secondary)== sec0 [server, VIP on lo] pri0 ==(primary)== gw --- upstream

    The router reaches the VIP through the server's secondary interface; the server's default route leaves
    by its primary interface to a gateway that knows no route back to the client: without steering the
    client's connection to the VIP fails. The server's own connections (to `upstream`) follow the default
    route."""

    client: Host
    router: Host
    server: Host
    gw: Host
    upstream: Host
    router_on_sec: dict[int, str]   # the router's address on the secondary link: the next hop back
    upstream_addr: dict[int, str]
    server_pri: dict[int, str]      # the server's primary addresses (its own connections' source)
    vip: dict[int, str]
    port: int
    primary: str = "pri0"
    secondary: str = "sec0"

    def url(self, family: int, host: str | None = None) -> str:
        addr = host or self.vip[family]
        return f"http://[{addr}]:{self.port}/" if ":" in addr else f"http://{addr}:{self.port}/"

    def reaches_vip(self, family: int, timeout: float = 2.0) -> bool:
        return self.client.http_get(self.url(family), timeout=timeout).ok

    def server_reaches_upstream(self, family: int, timeout: float = 3.0) -> bool:
        return self.server.http_get(self.url(family, self.upstream_addr[family]), timeout=timeout).ok


def metallb(sb: Sandbox) -> MetalLB:
    """Build the MetalLB topology in `sb`, with HTTP servers on the server (VIP) and upstream."""
    client, router, server = sb.host("client"), sb.router("router"), sb.host("server")
    gw, upstream = sb.router("gw"), sb.host("upstream")
    front = sb.link(client, router)
    sec = sb.link(router, server, ifnames=(None, "sec0"))
    pri = sb.link(server, gw, ifnames=("pri0", None))
    back = sb.link(gw, upstream)
    client.default_route(front)
    upstream.default_route(back)
    server.default_route(pri)       # the primary network: replies to the client would leave here
    lo = server.ifindex("lo")
    for fam, plen in ((4, 32), (6, 128)):
        server.ipr.addr("add", index=lo, address=METALLB_VIP[fam], prefixlen=plen)
        router.route(f"{METALLB_VIP[fam]}/{plen}", sec.end(server))
    for key in ("all", "default", "sec0", "pri0"):   # the reply path differs from the request's
        server.sysctl(f"net.ipv4.conf.{key}.rp_filter", 0)
    server.http_server(METALLB_PORT)
    upstream.http_server(METALLB_PORT)
    srv_sec = sec.end(server)
    return MetalLB(client, router, server, gw, upstream,
                   router_on_sec={4: srv_sec.peer.ip4, 6: srv_sec.peer.ip6},
                   upstream_addr={4: back.end(upstream).ip4, 6: back.end(upstream).ip6},
                   server_pri={4: pri.end(server).ip4, 6: pri.end(server).ip6},
                   vip=dict(METALLB_VIP), port=METALLB_PORT)


# ---- UDP flows to backends that say which one they are ----------------------------------------------------

_PORT_ECHO = """
import select, socket, sys
socks = []
for p in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", int(p))); socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(100)
        s.sendto(str(s.getsockname()[1]).encode(), peer)
"""


def udp_port_echo(host: Host, ports) -> None:
    """UDP servers on `ports` of `host` (both families) answering each datagram with their port number."""
    host.spawn([sys.executable, "-c", _PORT_ECHO, *map(str, ports)]).wait_for_output("ready")


def udp_sockets(host: Host, n: int, family: int = 4) -> list[socket.socket]:
    """`n` bound non-blocking UDP sockets in `host`: `n` flows (the caller closes them)."""
    out = []
    with host.entered():
        for _ in range(n):
            s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
            s.bind(("", 0))
            s.setblocking(False)
            out.append(s)
    return out


def udp_round(socks: list[socket.socket], addr: str, port: int, timeout: float = 10.0) -> list[int | None]:
    """One datagram per flow to addr:port (again for flows unanswered after a while: a burst overflows the
    veth's backlog); per flow, the number an answer FROM addr:port carried (None: none in `timeout`)."""
    for s in socks:   # late answers of the round before
        while True:
            try:
                s.recv(100)
            except BlockingIOError:
                break
    got: dict[int, int] = {}
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    poll = select.poll()   # select() stops at fd 1024
    for s in socks:
        poll.register(s, select.POLLIN)
    deadline = time.monotonic() + scaled(timeout)
    while len(got) < len(socks) and time.monotonic() < deadline:
        for i in [i for i in range(len(socks)) if i not in got][:200]:
            socks[i].sendto(b"?", (addr, port))
        for fd, _ in poll.poll(300):
            s = socks[by_fd[fd]]
            data, src = s.recvfrom(100)
            if src[0] == addr and src[1] == port:   # translated back: else not an answer of the VIP
                got[by_fd[fd]] = int(data)
                poll.unregister(fd)
    return [got.get(i) for i in range(len(socks))]


# ---- the receiving stack's checksum-error counters ---------------------------------------------------------

CSUM_COUNTERS = ("TcpInCsumErrors", "UdpInCsumErrors", "IcmpInCsumErrors", "Udp6InCsumErrors",
                 "Icmp6InCsumErrors", "UdpLiteInCsumErrors", "IpExtInCsumErrors")


def csum_errors(host: Host) -> frozenset:
    """(counter, value) of every checksum-error counter of the host's stack (nstat -az: absolute values)."""
    import json

    out = host.run(["nstat", "-asz", "--json"], check=True).stdout
    data = json.loads(out)
    vals = data.get("kernel", data)
    return frozenset((k, int(v)) for k, v in vals.items() if k in CSUM_COUNTERS)
