"""Flow accounting (bpf/flows.bpf.c, bpfgate.inspect.flows) against real traffic between two throwaway
namespaces: counters equal what the sockets sent plus the headers we can compute, flow ends are reported
once, idle flows expire with a report, LRU evictions are counted, the CLI prints the flows."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import threading
import time

import pytest

from bpfgate.errors import NotFound, NotSupported
from bpfgate.inspect.flows import FlowMonitor, pin_dir, top_flows
from bpfgate.kernel import libbpf as L
from bpfgate.kernel import links, netlink, netns, tc
from bpfgate.kernel.objects import Program
from clirun import run_cli  # noqa: E402  (tests/kernel helper)
from features import require  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _flows_load_here():
    require("flows")  # a kernel older than 5.12 refuses flow accounting (doctor says why)

UDP_HDR = {4: 20 + 8, 6: 40 + 8}  # IP + UDP header bytes per datagram
TCP_HDR = {4: (20 + 20, 20 + 60), 6: (40 + 20, 40 + 60)}  # IP + TCP header, without / with max options
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
DEADLINE = 10.0  # seconds: every wait in these tests is bounded by this


def _bound(host, family: int, addr: str, kind: int) -> socket.socket:
    with host.entered():
        s = socket.socket(FAMILY[family], kind)
    s.bind((addr, 0))
    s.settimeout(DEADLINE)
    return s


def _tcx_prog_names(netns_name: str, dev: str) -> list[str]:
    """Programs attached to `dev` by TCX, both directions (BPF_PROG_QUERY)."""
    ifindex = netlink.ifindex(dev, netns_name)
    names = []
    for at in (links.BPF_TCX_INGRESS, links.BPF_TCX_EGRESS):
        ids, cnt, flags = (ctypes.c_uint32 * 64)(), ctypes.c_uint32(64), ctypes.c_uint32(0)
        with netns.entered(netns_name):
            if L.bpf_prog_query(ifindex, at, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)) != 0:
                continue
        for pid in ids[: cnt.value]:
            prog = Program.from_id(pid)
            names.append(prog.name)
            prog.close()
    return names


def _wait_for(pred, what: str):
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _udp_exchange(pair, family: int, sizes: list[int]) -> tuple[int, int]:
    """Client sends one datagram per size; the server echoes each. Returns (client port, server port)."""
    client, server, c_if, s_if = pair
    srv = _bound(server, family, s_if.addr(family), socket.SOCK_DGRAM)
    cli = _bound(client, family, c_if.addr(family), socket.SOCK_DGRAM)
    try:
        dst = srv.getsockname()[:2]
        for n in sizes:
            cli.sendto(bytes(n), dst)
            data, peer = srv.recvfrom(65535)
            assert len(data) == n
            srv.sendto(data, peer)
            assert len(cli.recv(65535)) == n
        return cli.getsockname()[1], dst[1]
    finally:
        srv.close()
        cli.close()


@pytest.mark.parametrize("family", [4, 6])
def test_udp_counts_are_exact(pair, family):
    client, _, c_if, s_if = pair
    sizes = [1 + 97 * i for i in range(15)]  # 1 .. 1359 bytes: below the MTU, no fragments
    with FlowMonitor(c_if.name, netns_name=client.netns) as mon:
        cport, sport = _udp_exchange(pair, family, sizes)
        flows = [f for f in mon.flows() if f.proto == 17 and {f.sport, f.dport} == {cport, sport}]
    assert len(flows) == 1, flows   # one conntrack entry per connection, counters per direction
    f = flows[0]
    expect_bytes = sum(sizes) + len(sizes) * UDP_HDR[family]
    assert (f.src, f.sport, f.dst, f.dport) == (c_if.addr(family), cport, s_if.addr(family), sport)
    assert f.direction == "egress" and f.family == family and f.interface == c_if.name
    assert (f.packets_orig, f.bytes_orig, f.packets_reply, f.bytes_reply) == \
        (len(sizes), expect_bytes, len(sizes), expect_bytes)
    assert (f.packets, f.bytes) == (2 * len(sizes), 2 * expect_bytes)
    assert f.first_ns <= f.last_ns and f.tcp_flags == 0 and f.ended is None


def _segments(sock: socket.socket) -> tuple[int, int]:
    """(tcpi_segs_out, tcpi_segs_in) from TCP_INFO: what the kernel's TCP itself counted, GSO included."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("=II", info, 136)  # offsets fixed by the uapi struct tcp_info


def _bytes_retrans(sock: socket.socket) -> int:
    """tcpi_bytes_retrans: payload sent again (a loaded machine retransmits; those bytes cross twice)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("=Q", info, 208)[0] if len(info) >= 216 else 0


def _tcp_transfer(pair, family: int, payload: int, retrans: list | None = None) -> tuple[int, int, tuple[int, int]]:
    """Client sends `payload` bytes and closes; the server reads to EOF, then closes.
    Returns (client port, server port, the client socket's (segments out, segments in)); appends the
    client's retransmitted payload bytes to `retrans` if given."""
    client, server, c_if, s_if = pair
    lst = _bound(server, family, s_if.addr(family), socket.SOCK_STREAM)
    lst.listen(1)
    got = []

    def serve():
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(DEADLINE)
            n = 0
            while chunk := conn.recv(1 << 16):
                n += len(chunk)
            got.append(n)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    cli = _bound(client, family, c_if.addr(family), socket.SOCK_STREAM)
    try:
        cli.connect(lst.getsockname()[:2])
        cli.sendall(b"x" * payload)
        cli.shutdown(socket.SHUT_WR)
        assert cli.recv(1) == b""  # the server's FIN: both sides closed
        t.join(DEADLINE)
        assert got == [payload]
        if retrans is not None:
            retrans.append(_bytes_retrans(cli))
        return cli.getsockname()[1], lst.getsockname()[1], _segments(cli)
    finally:
        cli.close()
        lst.close()


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_bytes_within_header_overhead_and_flow_end_once(pair, family):
    client, _, c_if, _ = pair
    payload = 3_000_000  # large enough for GSO: the program expands super-packets into wire segments
    with FlowMonitor(c_if.name, netns_name=client.netns) as mon:
        retrans: list[int] = []
        cport, sport, (segs_out, segs_in) = _tcp_transfer(pair, family, payload, retrans)
        ends = []
        _wait_for(lambda: ends.extend(mon.poll_ended(100)) or [e for e in ends if e.flow.proto == 6],
                  "a flow-end record")
        time.sleep(0.2)
        ends.extend(mon.poll_ended(100))  # nothing more may come: the connection is reported once
        flows = [f for f in mon.flows() if f.proto == 6 and f.sport in (cport, sport)]
        stats = mon.stats()
    ends = [e for e in ends if e.flow.proto == 6 and {e.flow.sport, e.flow.dport} == {cport, sport}]
    assert len(ends) == 1 and ends[0].reason == "fin" and ends[0].flow.direction == "egress"
    lo, hi = TCP_HDR[family]
    assert len(flows) == 1
    f = flows[0]   # orig: client -> server, the payload; reply: server -> client, ACKs only
    # exact: wire segments as TCP counted them, though the stack hands TC 64 KiB GSO packets
    assert (f.packets_orig, f.packets_reply) == (segs_out, segs_in)
    assert payload + f.packets_orig * lo <= f.bytes_orig <= payload + retrans[0] + f.packets_orig * hi
    assert f.packets_orig >= payload // 65536  # at least one wire packet per 64 KiB
    assert (f.tcp_flags & 0x13) == 0x13 and f.ended == "fin"  # SYN, ACK, FIN seen
    assert f.packets_reply * lo <= f.bytes_reply <= f.packets_reply * hi
    end = ends[0].flow
    assert payload + end.packets_orig * lo <= end.bytes_orig <= f.bytes_orig  # counters at FIN time
    assert stats.ended >= 1 and stats.events_lost == 0


def test_idle_flows_expire_once_with_a_report(pair):
    client, _, c_if, _ = pair
    with FlowMonitor(c_if.name, netns_name=client.netns, idle_timeout=0.3) as mon:
        cport, sport = _udp_exchange(pair, 4, [10, 20, 30])
        time.sleep(0.5)
        ended = [e for e in mon.poll_ended() if e.flow.proto == 17 and e.flow.sport in (cport, sport)]
        again = [e for e in mon.poll_ended() if e.flow.proto == 17 and e.flow.sport in (cport, sport)]
        left = [f for f in mon.flows() if f.proto == 17 and f.sport in (cport, sport)]
        stats = mon.stats()
    assert [(e.reason, e.flow.direction, e.flow.packets_orig, e.flow.packets_reply) for e in ended] == \
        [("idle", "egress", 3, 3)]
    assert again == [] and left == []
    assert stats.expired >= 1 and stats.evicted == 0


def test_lru_evictions_are_counted(pair):
    client, server, c_if, s_if = pair
    with FlowMonitor(c_if.name, netns_name=client.netns, direction="egress", max_flows=64) as mon:
        srv = _bound(server, 4, s_if.ip4, socket.SOCK_DGRAM)
        try:
            for port in range(40000, 40300):  # 300 source ports: 300 flows into a 64-entry table
                with client.entered():
                    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                cli.bind((c_if.ip4, port))
                cli.sendto(b"x", srv.getsockname())
                cli.close()
        finally:
            srv.close()
        stats = mon.stats()
    assert stats.created >= 300
    assert stats.live <= 64
    assert stats.evicted == stats.created - stats.live > 0


def test_clsact_fallback_leaves_nothing(pair):
    client, _, c_if, _ = pair
    with FlowMonitor(c_if.name, netns_name=client.netns, method="tc") as mon:
        names = {f.prog_name for d in ("ingress", "egress") for f in tc.list_filters(c_if.name, d, client.netns)}
        assert names == {"bg_flow_ingress", "bg_flow_egress"}
        _udp_exchange(pair, 4, [100])
        assert any(f.proto == 17 for f in mon.flows())
    assert not tc.has_clsact(c_if.name, client.netns)


def test_unknown_interface_is_one_typed_error(pair):
    client = pair[0]
    with pytest.raises(NotFound):
        FlowMonitor("nosuchif0", netns_name=client.netns)


def test_top_flows_sorting(pair):
    client, _, c_if, _ = pair
    with FlowMonitor(c_if.name, netns_name=client.netns) as mon:
        _udp_exchange(pair, 4, [1000])
        _udp_exchange(pair, 4, [10])
        flows = mon.flows()
    by_bytes = top_flows(flows, "bytes", 1)
    assert len(by_bytes) == 1 and by_bytes[0].bytes == max(f.bytes for f in flows)
    assert top_flows(flows, "last")[0].last_ns == max(f.last_ns for f in flows)


@pytest.mark.smoke
def test_cli_flows_json(pair):
    client, server, c_if, s_if = pair
    srv = _bound(server, 4, s_if.ip4, socket.SOCK_DGRAM)
    cli = _bound(client, 4, c_if.ip4, socket.SOCK_DGRAM)
    dport = srv.getsockname()[1]
    stop = threading.Event()

    def send():  # bounded: at most 4000 datagrams, one per 25 ms, until the CLI is done
        for _ in range(4000):
            if stop.wait(0.025):
                return
            cli.sendto(b"y" * 50, srv.getsockname())

    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        r = run_cli(["flows", "--dev", c_if.name, "--netns", client.netns, "--duration", "1.5", "--json",
                     "--sort", "packets"])
    finally:
        stop.set()
        t.join(DEADLINE)
        srv.close()
        cli.close()
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    udp = [f for f in doc["flows"] if f["proto"] == "udp" and f["dport"] == dport]
    assert udp and udp[0]["packets"] > 0 and udp[0]["bytes"] == udp[0]["packets"] * (50 + 28)
    assert udp[0]["direction"] == "egress" and udp[0]["src"] == c_if.ip4
    assert set(doc["stats"]) >= {"live", "created", "evicted", "events_lost"}


def test_cli_unknown_interface_one_line(pair):
    r = run_cli(["flows", "--dev", "nosuchif0", "--netns", pair[0].netns, "--duration", "0.1"])
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_keep_without_tcx_is_refused_naming_tcx_and_leaves_nothing(pair):
    """Classic tc filters (kernels before 6.6 have nothing else) cannot be kept: the refusal names TCX and
    the version, and the filters go with the monitor."""
    client, _, c_if, _ = pair
    with FlowMonitor(c_if.name, netns_name=client.netns, method="tc") as mon:
        with pytest.raises(NotSupported) as ei:
            mon.keep()
    assert "TCX" in str(ei.value) and "6.6" in str(ei.value) and "\n" not in str(ei.value)
    assert not os.path.exists(pin_dir(c_if.name, client.netns))
    assert tc.list_filters(c_if.name, "ingress", client.netns) == []
    if not _tcx_here():  # the CLI refuses before attaching, in one line
        r = run_cli(["flows", "--dev", c_if.name, "--netns", client.netns, "--keep"])
        assert r.returncode == 3 and "TCX" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _tcx_here() -> bool:
    from bpfgate import doctor

    return doctor.check("tcx").ok


def test_keep_leaves_accounting_running_until_stop(pair):
    require("tcx")  # --keep pins TCX links; without TCX it is refused (test_keep_without_tcx_is_refused)
    client, _, c_if, _ = pair
    base = ["--dev", c_if.name, "--netns", client.netns]
    try:
        r = run_cli(["flows", *base, "--keep"])
        assert r.returncode == 0, r.stderr
        assert os.path.isdir(pin_dir(c_if.name, client.netns))
        assert sorted(_tcx_prog_names(client.netns, c_if.name)) == ["bg_flow_egress", "bg_flow_ingress"]
        cport, sport = _udp_exchange(pair, 4, [100, 200])  # after the process that attached has exited
        r = run_cli(["flows", *base, "--json"])
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        udp = [f for f in doc["flows"] if f["proto"] == "udp" and f["sport"] in (cport, sport)]
        assert doc["kept"] and len(udp) == 1 and udp[0]["direction"] == "egress"
        assert udp[0]["bytes_orig"] == 300 + 2 * 28 and udp[0]["packets_reply"] == 2
        with FlowMonitor(c_if.name, netns_name=client.netns, pinned=True, idle_timeout=0) as mon:
            expired = [e for e in mon.poll_ended() if e.flow.proto == 17 and e.flow.sport in (cport, sport)]
        assert len(expired) == 1
        with FlowMonitor(c_if.name, netns_name=client.netns, pinned=True) as mon:
            stats = mon.stats()  # another reader: the deletions above are not mistaken for evictions
        assert stats.evicted == 0 and stats.created >= 1   # one entry per connection
        r = run_cli(["flows", *base, "--keep"])
        assert r.returncode != 0 and "already running" in r.stderr
    finally:
        r = run_cli(["flows", *base, "--stop"])
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(pin_dir(c_if.name, client.netns))
    assert _tcx_prog_names(client.netns, c_if.name) == []  # the links went with their pins
    r = run_cli(["flows", *base, "--stop"])
    assert r.returncode != 0 and "none is running" in r.stderr


# ---- the shared parser (bpf/include/parse.h) and tracker on crafted frames, through BPF_PROG_TEST_RUN -------

def _eth(etype: int, payload: bytes, vlans: tuple[tuple[int, int], ...] = ()) -> bytes:
    hdr = b"\x04" * 6 + b"\x02" * 6
    for tpid, vid in vlans:
        hdr += struct.pack("!HH", tpid, vid)
    return hdr + struct.pack("!H", etype) + payload


def _ip4(proto: int, l4: bytes, *, options: bytes = b"", frag: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 1, frag, 64, proto, 0,
                      socket.inet_aton("198.18.0.1"), socket.inet_aton("198.18.0.2"))
    return hdr + options + l4


def _ip6(nxt: int, rest: bytes) -> bytes:
    return struct.pack("!IHBB", 0x60000000, len(rest), nxt, 64) + socket.inet_pton(socket.AF_INET6, "fd00::1") + \
        socket.inet_pton(socket.AF_INET6, "fd00::2") + rest


UDP = struct.pack("!HHHH", 1000, 2000, 18, 0) + b"u" * 10
TCP = struct.pack("!HHIIBBHHH", 3000, 443, 1, 0, 0x50, 0x02, 1024, 0, 0)
HBH_TO_FRAG = bytes([44, 0]) + b"\x01\x04" + bytes(4)  # hop-by-hop, 8 bytes, next: fragment


def _frag6(offset: int) -> bytes:
    return bytes([17, 0]) + struct.pack("!HI", (offset << 3) | 1, 0x1234)


PARSER_CASES = {
    # name: (frame, L2 length, (family, proto, sport, dport))
    "ipv4 options + tcp": (_eth(0x0800, _ip4(6, TCP, options=b"\x01" * 8)), 14, (4, 6, 3000, 443)),
    "vlan + ipv4 udp": (_eth(0x0800, _ip4(17, UDP), ((0x8100, 7),)), 18, (4, 17, 1000, 2000)),
    "qinq + ipv4 udp": (_eth(0x0800, _ip4(17, UDP), ((0x88A8, 1), (0x8100, 2))), 22, (4, 17, 1000, 2000)),
    "ipv6 hop-by-hop + first fragment": (_eth(0x86DD, _ip6(0, HBH_TO_FRAG + _frag6(0) + UDP)), 14, (6, 17, 1000, 2000)),
    "icmp echo": (_eth(0x0800, _ip4(1, struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1))), 14, (4, 1, 0x4242, 0x4242)),
    "icmpv6 echo": (_eth(0x86DD, _ip6(58, struct.pack("!BBHHH", 128, 0, 0, 0x77, 1))), 14, (6, 58, 0x77, 0x77)),
    "icmp unreachable": (_eth(0x0800, _ip4(1, struct.pack("!BBHHH", 3, 1, 0, 0, 0))), 14, (4, 1, 0, 0)),
}


@pytest.fixture(scope="module")
def flows_obj():
    from bpfgate.kernel.objects import BpfObject

    with BpfObject.open("flows") as obj:
        yield obj.load()


@pytest.mark.parametrize("case", list(PARSER_CASES))
def test_parser_finds_the_5_tuple(flows_obj, case):
    from bpfgate.inspect.flows import Flow, read_table
    from bpfgate.kernel.testrun import test_run

    frame, l2, (family, proto, sport, dport) = PARSER_CASES[case]
    table = flows_obj.map("bg_ct")
    table.clear()
    assert test_run(flows_obj.program("bg_flow_egress"), frame, repeat=3).retval == 0xFFFFFFFF  # TC_ACT_UNSPEC
    flows = [Flow.from_kernel(k, v, {}) for k, v in read_table(table)]
    assert len(flows) == 1
    f = flows[0]
    src, dst = ("198.18.0.1", "198.18.0.2") if family == 4 else ("fd00::1", "fd00::2")
    assert (f.family, f.proto, f.src, f.sport, f.dst, f.dport) == (family, proto, src, sport, dst, dport)
    assert (f.direction, f.packets_orig, f.bytes_orig, f.packets_reply) == ("egress", 3, 3 * (len(frame) - l2), 0)


@pytest.mark.parametrize("frame", [_eth(0x0806, bytes(28)), _eth(0x0800, _ip4(6, bytes(3))),
                                   _eth(0x86DD, _ip6(0, b"\x11")), _eth(0x0800, _ip4(17, UDP, frag=100)),
                                   _eth(0x86DD, _ip6(44, _frag6(100) + UDP))],
                         ids=["arp", "tcp cut before its ports", "truncated ipv6 extension", "ipv4 later fragment",
                              "ipv6 later fragment"])
def test_parser_skips_what_it_cannot_account(flows_obj, frame):
    from bpfgate.inspect.flows import STAT_UNPARSED
    from bpfgate.kernel.testrun import test_run

    table, stats = flows_obj.map("bg_ct"), flows_obj.map("flow_stats")
    table.clear()
    before = sum(stats[STAT_UNPARSED])
    test_run(flows_obj.program("bg_flow_ingress"), frame, repeat=2)
    assert len(table) == 0 and sum(stats[STAT_UNPARSED]) == before + 2


def test_flow_ends_in_the_event_stream(pair):
    from bpfgate.inspect.events import EventStream

    client, _, c_if, _ = pair
    with FlowMonitor(c_if.name, netns_name=client.netns) as mon:
        with EventStream([mon.event_source()]) as stream:
            cport, sport, _ = _tcp_transfer(pair, 6, 10_000)
            got = []
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline and not any(e["type"] == "flow_end" for e in got):
                got += [stream.describe(r) for r in stream.iter(timeout=0.2)]
    ends = [e for e in got if e["type"] == "flow_end" and {e["sport"], e["dport"]} == {cport, sport}]
    assert [e["direction"] for e in ends] == ["egress"]   # one record per connection
    assert all(e["reason"] == "fin" and e["interface"] == c_if.name and e["family"] == 6 for e in ends)
    assert ends[0]["bytes_orig"] > 10_000


# ---- one tracker: flow accounting on an interface where a policy engine tracks ----------------------------

@pytest.mark.parametrize("hook", ["tc-ingress", "xdp"])
def test_flows_read_the_engines_table_and_count_each_packet_once(pair, engines, hook):
    """An engine with conntrack at `hook` (plus its egress tracker) and flow accounting on the same
    interface: one table, one entry per connection, each packet counted once (not by both families)."""
    from bpfgate.policy.model import HookPolicy

    client, server, c_if, s_if = pair
    sizes = [10, 200, 1000]
    eng = engines(s_if.name, hook, HookPolicy(default="allow"), netns_name=server.netns,
                  **({"mode": "generic"} if hook == "xdp" else {}))
    with FlowMonitor(s_if.name, netns_name=server.netns) as mon:
        assert mon.shared
        cport, sport = _udp_exchange(pair, 4, sizes)
        flows = [f for f in mon.flows() if f.proto == 17 and {f.sport, f.dport} == {cport, sport}]
        stats = mon.stats()
    want = len(sizes), sum(sizes) + len(sizes) * UDP_HDR[4]
    assert len(flows) == 1, flows
    f = flows[0]
    assert (f.src, f.sport, f.direction) == (c_if.ip4, cport, "ingress")   # the engine created it at ingress
    assert (f.packets_orig, f.bytes_orig) == want and (f.packets_reply, f.bytes_reply) == want
    ct = [c for c in eng.conntrack() if c.proto == 17 and c.sport == cport]
    assert [(c.packets_orig, c.bytes_orig, c.packets_reply, c.bytes_reply) for c in ct] == [want + want]
    assert stats.created == 0   # the engine side created the entry; flows only read and reported
    # the engine's table outlives the flow accounting that read it
    assert [c.sport for c in eng.conntrack() if c.proto == 17 and c.sport == cport] == [cport]
