"""`bpfgate top` with real traffic in throwaway namespaces: --once renders the flows, --json has rates,
and the live view on a pseudo-terminal survives a resize and quits cleanly on q and on Ctrl-C."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time

import pytest
from rich.console import Console

from bpfgate.inspect.flows import FlowMonitor
from bpfgate.inspect.top import Top, run_live
from bpfgate.sandbox.timing import scaled
from clirun import CLI, run_cli  # noqa: E402  (tests/kernel helper)
from features import require  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _flows_load_here():
    require("flows")  # top reads flow accounting: a kernel older than 5.12 refuses it (doctor says why)

DEADLINE = 10.0


@pytest.fixture
def traffic(sandbox):
    """client -> server UDP, one datagram per 20 ms while the test runs (at most 6000: bounded)."""
    client, server = sandbox.host("client"), sandbox.host("server")
    link = sandbox.link(client, server)
    c_if, s_if = link.end(client), link.end(server)
    family = socket.AF_INET
    with server.entered():
        srv = socket.socket(family, socket.SOCK_DGRAM)
    srv.bind((s_if.ip4, 0))
    with client.entered():
        cli = socket.socket(family, socket.SOCK_DGRAM)
    cli.bind((c_if.ip4, 0))
    cli6 = None
    with client.entered():
        cli6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    cli6.bind((c_if.ip6, 0))
    stop = threading.Event()

    def send():
        for _ in range(6000):
            if stop.wait(0.02):
                return
            cli.sendto(b"t" * 100, srv.getsockname())
            cli6.sendto(b"6" * 10, (s_if.ip6, 9))

    t = threading.Thread(target=send, daemon=True)
    t.start()
    yield client, c_if, f"{c_if.ip4}:{cli.getsockname()[1]}", f"{s_if.ip4}:{srv.getsockname()[1]}", \
        f"[{c_if.ip6}]:{cli6.getsockname()[1]}"
    stop.set()
    t.join(DEADLINE)
    for s in (srv, cli, cli6):
        s.close()


def test_once_renders_the_flows(traffic):
    client, c_if, src, dst, src6 = traffic
    r = run_cli(["top", "--dev", c_if.name, "--netns", client.netns, "--once", "--interval", "1", "--syn"],
                env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    line = next((ln for ln in r.stdout.splitlines() if src in ln and dst in ln), None)
    assert line is not None, r.stdout
    assert "udp" in line and " eg " in line
    assert src6 in r.stdout  # IPv6 endpoints are text, not Rich markup
    assert "flows live" in r.stdout
    assert "SYN total 0" in r.stdout  # the optional panel (XDP on the same interface): UDP only, no SYN


def test_json_snapshot_has_rates(traffic):
    client, c_if, src, dst, _ = traffic
    r = run_cli(["top", "--dev", c_if.name, "--netns", client.netns, "--json", "--interval", "1"])
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    flows = [f for f in snap["flows"] if f"{f['src']}:{f['sport']}" == src and f"{f['dst']}:{f['dport']}" == dst]
    assert len(flows) == 1
    f = flows[0]
    assert f["packets_per_s"] > 0 and f["bytes_per_s"] == pytest.approx(f["packets_per_s"] * 128, rel=0.01)
    assert snap["stats"]["live"] == snap["total_flows"] >= 1


def test_render_on_tiny_and_wide_consoles(traffic):
    """A frame fits whatever the width (what a terminal resize does between frames)."""
    client, c_if, src, dst, _ = traffic
    with FlowMonitor(c_if.name, netns_name=client.netns) as mon:
        top = Top(mon, n=5)
        for width in (12, 40, 250):
            out = io.StringIO()
            run_live(top, 0.2, Console(file=out, force_terminal=True, width=width), max_frames=2)
            assert out.getvalue()
        wide = Console(file=io.StringIO(), width=250, record=True)
        wide.print(top.render(top.snapshot()))
        text = wide.export_text()
        assert src in text and dst in text


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(master: int, needle: bytes, timeout: float) -> bytes:
    buf, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline and needle not in buf:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                buf += os.read(master, 65536)
            except OSError:
                break
    return buf


def _drain(master: int, proc: subprocess.Popen, timeout: float) -> bytes:
    buf, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                chunk = b""
            buf += chunk
            if not chunk and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    return buf


@pytest.mark.parametrize("how", ["q", "ctrl-c"])
def test_live_view_on_a_terminal_resizes_and_quits_cleanly(traffic, how):
    client, c_if, src, dst, _ = traffic
    master, slave = pty.openpty()
    _set_size(slave, 30, 160)
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(CLI + ["top", "--dev", c_if.name, "--netns", client.netns, "--interval", "0.3"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")})
    try:
        out = _read_until(master, dst.encode(), 90)
        assert dst.encode() in out, out.decode(errors="replace")
        _set_size(slave, 20, 50)  # the terminal shrinks: the kernel sends SIGWINCH
        os.kill(proc.pid, signal.SIGWINCH)
        out += _read_until(master, b"bpfgate top", 5)
        time.sleep(0.7)
        if how == "q":
            os.write(master, b"q")
        else:
            os.kill(proc.pid, signal.SIGINT)
        out += _drain(master, proc, 20)
        rc = proc.wait(scaled(20))
        after = termios.tcgetattr(slave)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(scaled(10))
        os.close(master)
        os.close(slave)
    text = out.decode(errors="replace")
    assert rc == 0, text
    assert "Traceback" not in text
    assert after[3] == before[3]  # local modes (echo, canonical) restored
