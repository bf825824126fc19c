"""SYN counter and flood detection at XDP with real frames: raw frames injected on the client's veth
(AF_PACKET: SYNs, SYN-ACKs, ACKs, RSTs, UDP, VLAN-tagged, fragments, IPv6 with extension headers) and
real TCP connections, counted on the server's veth; a flooding source blocked, then released; and the
shared parser (parse.h) checked against its Python twin (bpfgate.engine.frames) on generated frames."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import dpkt
import pytest
from features import require  # noqa: E402  (tests/kernel helper)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfgate.engine import frames as twin
from bpfgate.inspect.events import EventStream
from bpfgate.inspect.syn import SynCounter
from bpfgate.kernel import netlink, netns
from bpfgate.kernel.testrun import test_run as run_prog  # (a name pytest would collect as a test)
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

WAIT = scaled(10.0)  # seconds: upper bound for the kernel to process what we sent (never a performance assert)
SYN, ACK, RST, FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_RST, dpkt.tcp.TH_FIN


@pytest.fixture(autouse=True)
def _syn_program():
    require("syn")  # syn.o needs atomic fetch instructions (5.12): older kernels refuse it, in one line


@dataclass
class Net:
    client: object
    server: object
    link: object

    @property
    def cif(self):  # client's interface
        return self.link.a

    @property
    def sif(self):  # server's interface (where the programs attach)
        return self.link.b


@pytest.fixture
def net(sandbox):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    return Net(c, s, sandbox.link(c, s))


def mac_of(host, ifname: str) -> bytes:
    info = json.loads(host.run(["ip", "-j", "link", "show", "dev", ifname], check=True).stdout)
    return bytes.fromhex(info[0]["address"].replace(":", ""))


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int, *, smac: bytes, dmac: bytes,
              vlan: int | None = None, ip_frag_offset: int = 0, v6_ext: bool = False) -> bytes:
    """An Ethernet frame carrying one TCP segment (checksums computed by dpkt)."""
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=12345, win=64240)
    if ":" in dst:
        ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                          nxt=dpkt.ip.IP_PROTO_TCP, hlim=64, data=tcp, plen=len(bytes(tcp)))
        payload = bytes(ip)
        if v6_ext:  # a destination-options header (8 bytes of PadN) in front of TCP
            hdr = bytearray(payload[:40])
            hdr[6] = 60
            ext = bytes([dpkt.ip.IP_PROTO_TCP, 0, 1, 4, 0, 0, 0, 0])
            hdr[4:6] = (len(payload) - 40 + 8).to_bytes(2, "big")
            payload = bytes(hdr) + ext + payload[40:]
        etype = dpkt.ethernet.ETH_TYPE_IP6
    else:
        ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, ttl=64,
                        data=tcp, offset=ip_frag_offset * 8)
        payload = bytes(ip)
        etype = dpkt.ethernet.ETH_TYPE_IP
    if vlan is not None:
        return dmac + smac + b"\x81\x00" + vlan.to_bytes(2, "big") + etype.to_bytes(2, "big") + payload
    return dmac + smac + etype.to_bytes(2, "big") + payload


def udp_frame(src: str, dst: str, *, smac: bytes, dmac: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=5353, dport=9, data=b"x")
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP, data=udp)
    return dmac + smac + b"\x08\x00" + bytes(ip)


class Injector:
    """Send raw frames out of the client's veth (they arrive on the server's veth, through its XDP)."""

    def __init__(self, net: Net):
        with netns.entered(net.client.netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind((net.cif.name, 0))
        self.smac, self.dmac = mac_of(net.client, net.cif.name), mac_of(net.server, net.sif.name)

    def tcp(self, src, dst, flags, n=1, dport=7, **kw) -> None:
        for i in range(n):
            self.sock.send(tcp_frame(src, dst, 20000 + i, dport, flags, smac=self.smac, dmac=self.dmac, **kw))

    def udp(self, src, dst, n=1) -> None:
        for _ in range(n):
            self.sock.send(udp_frame(src, dst, smac=self.smac, dmac=self.dmac))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def inject(net):
    inj = Injector(net)
    yield inj
    inj.close()


def listen(host, port: int) -> socket.socket:
    """A dual-stack listener inside `host` (the socket keeps its namespace)."""
    with netns.entered(host.netns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(128)
    return s


def connect(host, addr: str, port: int, timeout: float = 3.0) -> tuple[str, int] | None:
    """One TCP connection from `host`; its (source address, port) if it was established, else None."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns.entered(host.netns):
        s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect((addr, port))
        return s.getsockname()[:2]
    except OSError:
        return None
    finally:
        s.close()


def wait_for(pred, timeout: float = WAIT, step: float = 0.02):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > end:
            return v
        time.sleep(step)


def collect(stream: EventStream, n: int, timeout: float = WAIT) -> list[dict]:
    """Events until at least `n` arrived (or timeout), plus whatever comes in a short grace period."""
    out: list[dict] = []
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        stream.poll(50)
        out += [stream.describe(r) for r in stream.drain()]
    stream.poll(200)
    return out + [stream.describe(r) for r in stream.drain()]


def test_syn_counts_equal_syns_sent(net, inject):
    """Exact: every SYN without ACK counted once per source, nothing else counted, both families."""
    srv = listen(net.server, 8080)
    spoofed = net.cif.net4[77].exploded  # an address of the sandbox link's subnet that no host has
    with SynCounter() as syn:
        ifindex = syn.attach(net.sif.name, net.server.netns)
        inject.tcp(net.cif.ip4, net.sif.ip4, SYN, n=37)
        inject.tcp(spoofed, net.sif.ip4, SYN, n=23)
        inject.tcp(net.cif.ip6, net.sif.ip6, SYN, n=11)
        inject.tcp(net.cif.ip6, net.sif.ip6, SYN, n=4, v6_ext=True)
        inject.tcp(spoofed, net.sif.ip4, SYN, n=3, vlan=10)
        # not SYNs: answers, data, resets, UDP, a non-first fragment that happens to hold "SYN" bytes
        inject.tcp(spoofed, net.sif.ip4, SYN | ACK, n=13)
        inject.tcp(spoofed, net.sif.ip4, ACK, n=9)
        inject.tcp(spoofed, net.sif.ip4, RST, n=5)
        inject.tcp(spoofed, net.sif.ip4, FIN | ACK, n=2)
        inject.tcp(spoofed, net.sif.ip4, SYN, n=6, ip_frag_offset=100)
        inject.udp(spoofed, net.sif.ip4, n=4)
        made = [connect(net.client, net.sif.ip4, 8080) for _ in range(5)]
        made += [connect(net.client, net.sif.ip6, 8080) for _ in range(2)]
        assert all(made)

        expect = {(4, net.cif.ip4): 37 + 5, (4, spoofed): 23 + 3, (6, net.cif.ip6): 11 + 4 + 2}
        total = sum(expect.values())
        assert wait_for(lambda: syn.totals()[ifindex].syns >= total), syn.totals()
        time.sleep(0.2)  # anything late would show up as an excess
        assert syn.totals() == {ifindex: type(syn.totals()[ifindex])(total, 0)}
        by_src = {(s.family, s.source): s.syns for s in syn.sources()}
        assert by_src == expect
        top = syn.top(2)
        assert [(t.source, t.syns) for t in top] == [(net.cif.ip4, 42), (spoofed, 26)]
        assert all(t.ifindex == ifindex for t in top)
    srv.close()


def test_flood_raises_event_blocks_and_expires(net, inject):
    """A source over the rate: one syn_flood event, its SYNs dropped at XDP (a real connect fails),
    other sources unaffected, and after the block time the same connect works again."""
    srv = listen(net.server, 8080)
    rate, block_s = 20, 4.0
    flood_src = net.cif.ip4
    with SynCounter(rate=rate, block=block_s) as syn:
        ifindex = syn.attach(net.sif.name, net.server.netns)
        with EventStream([syn.event_source()]) as stream:
            inject.tcp(flood_src, net.sif.ip4, SYN, n=60, dport=7)
            events = collect(stream, 1)
            assert len(events) == 1, events
            ev = events[0]
            assert ev["type"] == "syn_flood" and ev["src"] == flood_src and ev["family"] == 4
            assert ev["interface"] == net.sif.name and ev["ifindex"] == ifindex
            assert ev["rate"] == rate and ev["window_syns"] == rate + 1
            assert ev["blocked"] is True and ev["block_until"]
            blocks = syn.blocks()
            assert [b.source for b in blocks] == [flood_src]
            until = blocks[0].until_ns

            assert wait_for(lambda: syn.totals()[ifindex].syns == 60)
            tot = syn.totals()[ifindex]
            assert tot.blocked == 60 - (rate + 1)  # the rest of the burst dropped

            # during the block: the flooder's own connection attempt is dropped, IPv6 (another source) is not
            attempt_start = time.monotonic_ns()
            got = connect(net.client, net.sif.ip4, 8080, timeout=1.0)
            if time.monotonic_ns() < until:  # (a stalled machine could outlive the block: then no claim)
                assert got is None
                assert syn.totals()[ifindex].blocked > tot.blocked
            assert attempt_start < until
            assert connect(net.client, net.sif.ip6, 8080) is not None

            # after expiry: released by the datapath itself, no sweep needed
            time.sleep(max(0.0, (until - time.monotonic_ns()) / 1e9) + 0.1)
            assert connect(net.client, net.sif.ip4, 8080, timeout=scaled(5.0)) is not None
            assert syn.blocks() == []
            stream.poll(0)
            later = [stream.describe(r) for r in stream.drain()]
            assert all(e["src"] != flood_src or e["blocked"] for e in later)
            assert stream.lost == 0
    srv.close()


def test_flood_report_only_never_drops(net, inject):
    with SynCounter(rate=5) as syn:
        ifindex = syn.attach(net.sif.name, net.server.netns)
        with EventStream([syn.event_source()]) as stream:
            inject.tcp(net.cif.ip4, net.sif.ip4, SYN, n=30)
            assert wait_for(lambda: syn.totals()[ifindex].syns == 30)
            stream.poll(100)
            evs = [stream.describe(r) for r in stream.drain()]
            assert [e["blocked"] for e in evs] == [False]
            assert syn.totals()[ifindex].blocked == 0 and syn.blocks() == []


def test_block_list_edit_and_sweep(net, inject):
    """The block list is a plain map: entries added from Python drop at once; expired ones are swept."""
    spoofed = net.cif.net4[99].exploded
    with SynCounter() as syn:
        ifindex = syn.attach(net.sif.name, net.server.netns)
        syn.block(spoofed, 600)
        syn.block("fd00::dead", -1)  # already expired
        inject.tcp(spoofed, net.sif.ip4, SYN, n=7)
        assert wait_for(lambda: syn.totals()[ifindex].blocked == 7)
        assert syn.sweep() == ["fd00::dead"]
        assert syn.unblock(spoofed) and syn.blocks() == []
        inject.tcp(spoofed, net.sif.ip4, SYN, n=2)
        assert wait_for(lambda: syn.totals()[ifindex].syns == 9)
        assert syn.totals()[ifindex].blocked == 7


def _xdp_ids(net) -> int:
    st = netlink.xdp_query(net.sif.name, net.server.netns)
    return sum(st.ids().values())


def test_cli_syn_json_counts_and_detaches_on_sigterm(net, inject):
    argv = [sys.executable, "-m", "bpfgate.cli.main", "syn", "--dev", net.sif.name, "--netns", net.server.netns,
            "--json", "--interval", "0.2", "--top", "3"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: _xdp_ids(net) != 0 or p.poll() is not None), "never attached"
        assert p.poll() is None, p.stderr.read()
        inject.tcp(net.cif.ip4, net.sif.ip4, SYN, n=12)
        seen = []  # snapshots until one shows all 12 (bounded), so SIGTERM lands mid-run
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and not (seen and seen[-1]["interfaces"][0]["syns"] == 12):
            if select.select([p.stdout], [], [], 0.5)[0]:
                seen.append(json.loads(p.stdout.readline()))
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=WAIT)
        out = "".join(json.dumps(x) + "\n" for x in seen) + out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    stats = [json.loads(line) for line in out.splitlines()]
    assert all(s["type"] == "syn_stats" for s in stats)
    final = stats[-1]
    assert final["interfaces"] == [{"interface": net.sif.name, "ifindex": final["interfaces"][0]["ifindex"],
                                    "syns": 12, "syn_rate": final["interfaces"][0]["syn_rate"], "blocked": 0}]
    assert final["top"][0]["source"] == net.cif.ip4 and final["top"][0]["syns"] == 12
    assert _xdp_ids(net) == 0  # nothing left attached


def test_cli_unknown_interface_is_one_line(net):
    r = subprocess.run([sys.executable, "-m", "bpfgate.cli.main", "syn", "--dev", "nosuch0", "--netns",
                        net.server.netns, "--duration", "1"], capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpfgate: error:") and "no such interface" in lines[0]


@pytest.mark.parametrize("interval", ["0.2", "3"])
def test_cli_syn_flood_block_then_release_events(net, inject, interval):
    """`bpfgate syn --rate --block --json`: a syn_flood event (blocked), then syn_unblock for the same
    source once the block expired, and the snapshot counts what the block dropped. Also when the block
    starts and ends between two ticks (interval 3 s, block 1 s; an emulated guest's 0.2 s ticks are
    seconds apart)."""
    spoofed = net.cif.net4[55].exploded
    argv = [sys.executable, "-m", "bpfgate.cli.main", "syn", "--dev", net.sif.name, "--netns", net.server.netns,
            "--json", "--interval", interval, "--rate", "3", "--block", "1"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    try:
        assert wait_for(lambda: _xdp_ids(net) != 0 or p.poll() is not None), "never attached"
        inject.tcp(spoofed, net.sif.ip4, SYN, n=10)
        deadline = time.monotonic() + 3 * WAIT
        while time.monotonic() < deadline and p.poll() is None:
            if select.select([p.stdout], [], [], 0.5)[0]:
                lines.append(json.loads(p.stdout.readline()))
                if lines[-1]["type"] == "syn_unblock":
                    break
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=WAIT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err
    lines += [json.loads(x) for x in out.splitlines()]
    floods = [x for x in lines if x["type"] == "syn_flood"]
    unblocks = [x for x in lines if x["type"] == "syn_unblock"]
    assert len(floods) == 1 and floods[0]["src"] == spoofed and floods[0]["blocked"] is True
    assert [u["source"] for u in unblocks] == [spoofed]
    assert lines.index(floods[0]) < lines.index(unblocks[0])
    final = lines[-1]
    assert final["type"] == "syn_stats" and final["blocked_sources"] == []
    assert final["interfaces"][0]["syns"] == 10 and final["interfaces"][0]["blocked"] == 10 - 4


# ---- the parser against a Python reference, on generated frames (BPF_PROG_TEST_RUN) ------------------

V6_EXT = twin.V6_EXT


def reference_is_syn(frame: bytes) -> bool:
    """What syn.bpf.c must decide: the shared parser's twin finds a TCP SYN without ACK, whole TCP header."""
    return twin.parse_frame(frame).is_syn(frame)


@st.composite
def frames(draw) -> bytes:
    tcp = bytes(12) + bytes([draw(st.integers(0, 15)) << 4, draw(st.sampled_from([0x02, 0x12, 0x10, 0x04, 0xC2,
                                                                                draw(st.integers(0, 255))]))]) + bytes(6)
    proto_l4 = draw(st.sampled_from([6, 6, 6, 17]))
    if draw(st.booleans()):
        ihl = draw(st.sampled_from([5, 5, 6, 15, draw(st.integers(0, 15))]))
        frag = draw(st.sampled_from([0, 0, 0x2000, 1, 0x1FFF]))
        ip = bytes([0x40 | ihl, 0]) + bytes(4) + frag.to_bytes(2, "big") + bytes([64, proto_l4]) + bytes(10)
        l3 = ip + bytes(max(0, ihl * 4 - 20)) + tcp
        etype = b"\x08\x00"
    else:
        exts, nh = b"", proto_l4
        for ext in reversed(draw(st.lists(st.sampled_from(V6_EXT), max_size=5))):
            if ext == 44:
                body = bytes([nh, 0]) + draw(st.sampled_from([0, 0, 8, 1])).to_bytes(2, "big") + bytes(4)
            elif ext == 51:
                body = bytes([nh, 1]) + bytes(10)
            else:
                n = draw(st.integers(0, 2))
                body = bytes([nh, n]) + bytes(6 + 8 * n)
            exts, nh = body + exts, ext
        l3 = bytes([0x60, 0, 0, 0, 0, 0, nh, 64]) + bytes(32) + exts + tcp
        etype = b"\x86\xdd"
    tags = b"".join(draw(st.sampled_from([b"\x81\x00", b"\x88\xa8"])) + b"\x00\x0a"
                    for _ in range(draw(st.integers(0, 3))))
    frame = b"\x02" * 12 + tags + etype + l3
    cut = draw(st.sampled_from([len(frame), len(frame), len(frame), draw(st.integers(14, len(frame)))]))
    return frame[:max(cut, 14)]


@pytest.fixture(scope="module")
def syn_for_parser():
    with SynCounter() as syn:
        yield syn


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames())
def test_parser_matches_reference(syn_for_parser, frame):
    syn = syn_for_parser

    def total() -> int:
        return sum(t.syns for t in syn.totals().values())

    before = total()
    assert run_prog(syn.prog, frame).retval == 2  # XDP_PASS: counting never drops
    assert total() - before == int(reference_is_syn(frame)), frame.hex()
