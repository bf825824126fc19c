"""Capture (bpf/capture.bpf.c, bpfgate.inspect.capture, `bpfgate capture`) with real traffic between two
throwaway namespaces, read back by tshark: same packets as sent (count, ports, payload bytes), snaplen
respected, filters exclude what they should, Ctrl-C leaves a complete file and nothing attached."""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from bpfgate.attach import order
from bpfgate.inspect.capture import Capture, CaptureFilter, capture_to_file
from bpfgate.kernel import libbpf as L
from bpfgate.kernel import links, netlink, netns, tc
from bpfgate.kernel.objects import Program
from bpfgate.sandbox.timing import scaled
from clirun import CLI, run_cli  # noqa: E402  (tests/kernel helper)

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed (scripts/run installs it)")]

FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
DEADLINE = scaled(10.0)  # waits that end on success (a capture starting, datagrams arriving)


def _udp_socks(pair, family: int):
    client, server, c_if, s_if = pair
    with server.entered():
        srv = socket.socket(FAMILY[family], socket.SOCK_DGRAM)
    srv.bind((s_if.addr(family), 0))
    srv.settimeout(DEADLINE)
    with client.entered():
        cli = socket.socket(FAMILY[family], socket.SOCK_DGRAM)
    cli.bind((c_if.addr(family), 0))
    return cli, srv


def _send(cli, srv, payloads: list[bytes]) -> None:
    for p in payloads:
        cli.sendto(p, srv.getsockname()[:2])
        assert srv.recv(65535) == p  # it really crossed the link


def tshark(path, *fields: str, udp_ports: tuple = ()) -> list[list[str]]:
    """`udp_ports`: payloads of these ports read as plain data (an ephemeral port may be one tshark dissects
    as some protocol, and then there is no data.data)."""
    decode = sum((["-d", f"udp.port=={p},data"] for p in udp_ports), [])
    r = subprocess.run(["tshark", "-r", str(path), *decode, "-T", "fields", *sum((["-e", f] for f in fields), [])],
                       capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    return [line.split("\t") for line in r.stdout.splitlines()]


def _capture_in_thread(path, c_if, client, filt, **kw):
    """capture_to_file in a thread; returns (thread, result list, ready event)."""
    ready, out = threading.Event(), []

    def run():
        out.append(capture_to_file(str(path), c_if.name, filt, netns_name=client.netns, on_ready=ready.set, **kw))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(DEADLINE), "capture did not start"
    return t, out


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("pcapng", [False, True])
def test_tshark_sees_exactly_what_was_sent(pair, tmp_path, family, pcapng):
    client, _, c_if, _ = pair
    cli, srv = _udp_socks(pair, family)
    payloads = [bytes([i]) * (20 + 111 * i) for i in range(8)]
    path = tmp_path / "cap.pcap"
    ports = (cli.getsockname()[1], srv.getsockname()[1])
    try:
        filt = CaptureFilter.parse("udp", srv.getsockname()[1])
        t, out = _capture_in_thread(path, c_if, client, filt, count=len(payloads), duration=DEADLINE,
                                    direction="egress", pcapng=pcapng)
        _send(cli, srv, payloads)
        t.join(DEADLINE + 5)
        assert not t.is_alive()
    finally:
        cli.close()
        srv.close()
    assert out[0].written == len(payloads) and out[0].lost == 0
    rows = tshark(path, "udp.srcport", "udp.dstport", "data.data", "frame.len", "frame.cap_len", "frame.comment",
                  udp_ports=ports)
    assert len(rows) == len(payloads)
    hdr = 14 + (20 if family == 4 else 40) + 8
    for row, p in zip(rows, payloads):
        sport, dport, data, flen, caplen, comment = row
        assert (int(sport), int(dport)) == ports
        assert bytes.fromhex(data) == p
        assert int(flen) == int(caplen) == hdr + len(p)
        assert comment == ("bpfgate hook=tc dir=egress verdict=unknown" if pcapng else "")


def test_snaplen_is_respected(pair, tmp_path):
    client, _, c_if, _ = pair
    cli, srv = _udp_socks(pair, 4)
    path = tmp_path / "snap.pcap"
    try:
        filt = CaptureFilter.parse("udp", srv.getsockname()[1])
        t, out = _capture_in_thread(path, c_if, client, filt, count=3, duration=DEADLINE, snaplen=60,
                                    direction="egress")
        _send(cli, srv, [b"z" * 1000] * 3)
        t.join(DEADLINE + 5)
    finally:
        cli.close()
        srv.close()
    rows = tshark(path, "frame.len", "frame.cap_len")
    assert rows == [["1042", "60"]] * 3


def test_filters_select_in_the_kernel(pair):
    client, _, c_if, s_if = pair
    cli, srv = _udp_socks(pair, 4)
    port = srv.getsockname()[1]
    try:
        cases = [(CaptureFilter.parse("udp", port + 1), 0),               # other port
                 (CaptureFilter.parse("tcp"), 0),                          # other protocol
                 (CaptureFilter.parse(host="198.19.255.0/24"), 0),         # other network
                 (CaptureFilter.parse(host=f"{s_if.ip4}/32"), 2),          # the server: requests only (egress)
                 (CaptureFilter.parse("udp", port, f"{c_if.ip4}/24"), 2)]  # everything matches
        for filt, expected in cases:
            with Capture(c_if.name, filt, netns_name=client.netns, direction="egress") as cap:
                _send(cli, srv, [b"a", b"b"])
                got = []
                deadline = time.monotonic() + 1.0  # bounded: the ring buffer is read until quiet
                while time.monotonic() < deadline and len(got) <= expected:
                    got.extend(p for p in cap.packets(100) if p.data[23:24] == b"\x11")
                assert len(got) == expected, filt
                assert cap.lost == 0
    finally:
        cli.close()
        srv.close()


def _tcx_progs(netns_name: str, dev: str) -> list[str]:
    """Names of the programs attached to `dev` by TCX (BPF_PROG_QUERY) or as tc filters."""
    ifindex = netlink.ifindex(dev, netns_name)
    names = [f.prog_name for d in ("ingress", "egress") for f in tc.list_filters(ifindex, d, netns_name)]
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


@pytest.mark.smoke
def test_cli_ctrl_c_leaves_complete_file_and_nothing_attached(pair, tmp_path):
    client, _, c_if, _ = pair
    cli, srv = _udp_socks(pair, 4)
    ports = (cli.getsockname()[1], srv.getsockname()[1])
    path = tmp_path / "cli.pcapng"
    proc = subprocess.Popen(CLI + ["capture", "--dev", c_if.name, "--netns", client.netns, "--proto", "udp",
                                   "--port", str(srv.getsockname()[1]), "--pcapng", "-w", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # "capturing ..." is printed once both directions are attached (a loaded machine starts Python slowly)
        ready, _, _ = select.select([proc.stderr], [], [], scaled(90))
        assert ready and proc.stderr.readline().startswith("capturing "), "capture never attached"
        assert any(n.startswith("bg_cap") for n in _tcx_progs(client.netns, c_if.name))
        _send(cli, srv, [b"hello"] * 5)
        proc.send_signal(signal.SIGINT)  # at once: what the hook saw is drained from the ring buffer on Ctrl-C
        _, err = proc.communicate(timeout=scaled(30))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(scaled(10))
        cli.close()
        srv.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "5 packets written" in err
    rows = tshark(path, "data.data", udp_ports=ports)
    assert rows == [[b"hello".hex()]] * 5
    assert not any(n.startswith("bg_cap") for n in _tcx_progs(client.netns, c_if.name))


def test_cli_json_lines_carry_verdict(pair):
    client, _, c_if, _ = pair
    cli, srv = _udp_socks(pair, 6)
    stop = threading.Event()

    def send():  # bounded: at most 4000 datagrams, until the CLI is done
        for _ in range(4000):
            if stop.wait(0.025):
                return
            cli.sendto(b"q" * 7, srv.getsockname()[:2])

    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        r = run_cli(["capture", "--dev", c_if.name, "--netns", client.netns, "--proto", "udp",
                     "--host", f"{srv.getsockname()[0]}/128", "--count", "3", "--duration", "60", "--json"])
    finally:
        stop.set()
        t.join(DEADLINE)
        cli.close()
        srv.close()
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    pkts = [x for x in lines if x["type"] == "packet"]
    assert len(pkts) == 3 and lines[-1]["type"] == "summary" and lines[-1]["written"] == 3
    for p in pkts:
        assert p["verdict"] == "unknown" and p["hook"] == "tc" and p["direction"] == "egress"
        assert p["family"] == 6 and p["proto"] == 17 and p["len"] == 14 + 40 + 8 + 7


@pytest.mark.parametrize("args, needle", [
    (["-w", "/nonexistent-dir/x.pcap"], "open capture file"),
    (["--rule", "ssh", "-w", "x.pcap"], "policy engine"),
    (["--proto", "bogus", "--json"], "unknown protocol"),
    (["--host", "not-an-address", "--json"], "not an address"),
    (["--json"], "no such"),  # the interface below does not exist
])
def test_cli_errors_are_one_line_and_attach_nothing(pair, tmp_path, args, needle):
    client, _, c_if, _ = pair
    dev = "nosuchif0" if needle == "no such" else c_if.name
    r = run_cli(["capture", "--dev", dev, "--netns", client.netns, *args], cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr.lower()
    assert not any(n.startswith("bg_cap") for n in _tcx_progs(client.netns, c_if.name))
    assert not os.path.exists(tmp_path / "x.pcap")


def test_packets_the_gate_drops_are_captured(pair):
    """The drop-port gate (clsact filter) drops SYNs to a port; the capture, first in line, still has them.
    The gate sits where bpfgate's gate (the policy engine) does: on a kernel without TCX the capture is a
    clsact filter too, first only by its priority (a foreign filter at priority 1 would run before it)."""
    from bpfgate.kernel.objects import BpfObject

    client, _, c_if, s_if = pair
    port = 5555
    with BpfObject.open("dropper") as gate:
        gate.load()
        gate.map("drop_ports")[{"port": port}] = {"packets": 0, "bytes": 0}
        tc.ensure_clsact(c_if.name, client.netns)
        tc.add_filter(c_if.name, "egress", gate.program("bg_dropper").fd, handle=1, priority=order.DEFAULT.priority,
                      netns=client.netns)  # the qdisc goes with the sandbox's namespace
        with Capture(c_if.name, CaptureFilter.parse("tcp", port), netns_name=client.netns, direction="egress") as cap:
            with client.entered():
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1.5)  # the SYN and one retransmission, both dropped
            with pytest.raises(OSError):
                s.connect((s_if.ip4, port))
            s.close()
            got = []
            deadline = time.monotonic() + DEADLINE
            dropped = 0
            while time.monotonic() < deadline:
                got.extend(cap.packets(100))
                dropped = sum(v.packets for v in gate.map("drop_ports")[{"port": port}])
                if dropped and len(got) >= dropped:
                    break
    assert dropped >= 1 and len(got) == dropped  # every packet the gate dropped is in the capture
    for p in got:
        assert p.data[47] & 0x02 and p.verdict == "unknown" and p.direction == "egress"  # SYN (14 + 20 + 13)


def test_a_reader_that_falls_behind_sees_its_loss_counted(pair):
    """A ring buffer too small for what matched: every packet is either delivered or counted as lost."""
    client, _, c_if, _ = pair
    cli, srv = _udp_socks(pair, 4)
    sent = 300
    try:
        with Capture(c_if.name, CaptureFilter.parse("udp", srv.getsockname()[1]), netns_name=client.netns,
                     direction="egress", ring_size=16384) as cap:
            for _ in range(sent):  # ~1 KB records into 16 KiB, nobody reading
                cli.sendto(b"L" * 1000, srv.getsockname())
            got = []
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline and len(got) + cap.lost < sent:
                got.extend(cap.packets(100))
            lost, matched = cap.lost, cap.matched
    finally:
        cli.close()
        srv.close()
    assert lost > 0 and len(got) > 0
    assert len(got) + lost == matched == sent
