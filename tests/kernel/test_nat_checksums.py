"""The checksum matrix of DNAT, each cell a test: {TX checksum offload on, off on the sending veths} x
{IPv4, IPv6} x {TCP, UDP, UDP with a zero checksum (IPv4), an ICMP error quoting a translated flow}.

client -- router -- server; the router's client-facing interface DNATs a VIP to the server. Every cell:
the session completes through the translation (HTTP 200; a UDP reply from the VIP; ECONNREFUSED from the
translated port unreachable), tshark reads every translated packet's checksums as correct, and the
receiving stacks' checksum-error counters (nstat) do not move.

With offload on, TCP/UDP packets stay CHECKSUM_PARTIAL from socket to socket (no device between veths
completes them): their field holds the pseudo-header sum, which tshark reports as wrong whatever we do. For
those the test checks the field equals the pseudo-header sum of the translated addresses (what the
pseudo-header update must produce); IP header and ICMP checksums are complete either way and tshark's.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

import pytest

from bpfgate import nat
from natnet import VIP4, VIP6, Capture, csum_errors, partial_sum_ok, set_tx_csum, tshark_rows  # noqa: E402

pytestmark = pytest.mark.kernel

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
if sys.argv[2] == "1":
    s.setsockopt(socket.SOL_SOCKET, 11, 1)   # SO_NO_CHECK: send UDP/IPv4 without a checksum
s.bind(("::", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"echo:" + data, peer)
"""

CELLS = [(f, k) for f in (4, 6) for k in ("tcp", "udp", "udp0", "icmp") if not (f == 6 and k == "udp0")]


@pytest.mark.parametrize("offload", ["offload-on", "offload-off"])
@pytest.mark.parametrize("family, kind", CELLS, ids=[f"ipv{f}-{k}" for f, k in CELLS])
def test_dnat_checksums(sandbox, family, kind, offload):
    net = sandbox.routed()
    client, router, server = net.client, net.router, net.server
    ci, ri, si = net.left.end(client), net.left.end(router), net.right.end(server)
    for host, iface in ((client, ci), (server, si)):
        set_tx_csum(host, iface.name, offload == "offload-on")
    vip = VIP4 if family == 4 else VIP6
    saddr = si.addr(family)
    proto, port, to_port = ("tcp", 80, 8080) if kind == "tcp" else ("udp", 5300, 5301 if kind != "icmp" else 5399)
    if kind == "tcp":
        server.http_server(8080)
    elif kind != "icmp":
        server.spawn([sys.executable, "-c", ECHO, "5301", "1" if kind == "udp0" else "0"]).wait_for_output("ready")
    ep = lambda a, p: f"[{a}]:{p}" if family == 6 else f"{a}:{p}"   # noqa: E731
    gw = nat.Gateway.open(ri.name, router.netns)
    try:
        gw.add_rule(nat.dnat("m", proto, ep(vip, port), ep(saddr, to_port)))
        before = (csum_errors(client), csum_errors(server))
        at_server = Capture(server, si.name, os.path.join(sandbox.workdir, "server.pcap"))
        at_client = Capture(client, ci.name, os.path.join(sandbox.workdir, "client.pcap"))
        try:
            _session(client, family, kind, vip, port)
        finally:
            srv, cli = at_server.stop(), at_client.stop()
        assert (csum_errors(client), csum_errors(server)) == before
        st = gw.stats()
        assert st["rewrite_fail"] == 0 and (st["icmp_xlate"] >= 1 if kind == "icmp" else st["xlate_out"] >= 1)
    finally:
        gw.detach()
    # translated requests as the server got them, translated replies / errors as the client got them
    a_src, a_dst = ("ip.src", "ip.dst") if family == 4 else ("ipv6.src", "ipv6.dst")
    p = "tcp" if kind == "tcp" else "udp"
    to_server = [r for r in tshark_rows(srv) if _first(r, a_dst) == saddr and _first(r, f"{p}.dstport") == str(to_port)]
    to_client = [r for r in tshark_rows(cli) if _first(r, a_src) == vip]
    assert to_server and to_client, f"no translated packet captured: {tshark_rows(srv)} {tshark_rows(cli)}"
    if kind == "icmp":   # the port unreachable, from the VIP, quoting the client's datagram to the VIP
        err = [r for r in to_client if _first(r, "icmp.type" if family == 4 else "icmpv6.type")]
        assert len(err) == 1 and err[0][a_dst].split(",")[1] == vip and _first(err[0], "udp.dstport") == str(port), err
    for path, rows in ((srv, to_server), (cli, to_client)):
        for r in rows:
            _check(path, r, family, kind, offload)


def _session(client, family: int, kind: str, vip: str, port: int) -> None:
    if kind == "tcp":
        url = f"http://{vip}:{port}/" if family == 4 else f"http://[{vip}]:{port}/"
        r = client.http_get(url)
        assert r.status == 200, r
        return
    with client.entered():
        s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        if kind == "udp0":
            s.setsockopt(socket.SOL_SOCKET, 11, 1)
        s.settimeout(3)
        s.connect((vip, port))   # a reply is delivered only if it comes from vip:port
        s.send(b"ping")
        if kind == "icmp":
            with pytest.raises(ConnectionRefusedError):   # the translated port unreachable reached the socket
                s.recv(100)
            return
        assert s.recv(100) == b"echo:ping"
    finally:
        s.close()


def _first(r: dict, field: str) -> str:
    """The outer header's value of a field (tshark lists the quoted header's after it)."""
    return r.get(field, "").split(",")[0]


def _check(path: str, r: dict, family: int, kind: str, offload: str) -> None:
    where = f"frame {r['frame.number']} of {path}"
    for f in ("ip.checksum.status", "icmp.checksum.status", "icmpv6.checksum.status"):   # complete either way
        assert "0" not in r.get(f, "").split(","), f"{where}: {f} {r[f]}"
    l4 = "tcp.checksum.status" if kind == "tcp" else "udp.checksum.status"
    if kind == "udp0":
        assert _first(r, "udp.checksum") in ("0x0000", "0"), f"{where}: {r}"   # no checksum stays none
    elif offload == "offload-off":
        assert set(r[l4].split(",")) == {"1"}, f"{where}: {l4} {r[l4]}"   # incl. the quoted datagram's
    elif kind != "icmp" and _first(r, l4) != "1":
        assert partial_sum_ok(path, int(r["frame.number"])), f"{where}: not the pseudo-header sum"
