"""The event pipeline with real programs and real traffic: exact loss accounting when the consumer is
too slow (tiny ring buffer, no polling), two programs merged into one stream, asyncio, wall-clock
times, and `bpfgate events --json` (stable keys, detaches on SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
from features import require  # noqa: E402  (tests/kernel helper)

from bpfgate import doctor
from bpfgate.inspect.attempts import AttemptLog
from bpfgate.inspect.events import EventStream
from bpfgate.inspect.syn import SynCounter
from bpfgate.kernel import netns
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

WAIT = scaled(10.0)
COMMON = ["type", "time", "epoch", "mono_ns", "cpu", "source"]
ATTEMPT_KEYS = COMMON + ["interface", "ifindex", "family", "src", "sport", "dst", "dport", "flags", "len"]
FLOOD_KEYS = COMMON + ["interface", "ifindex", "family", "src", "window_syns", "rate", "blocked", "block_until"]


@pytest.fixture
def net(sandbox):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    return c, s, sandbox.link(c, s)


def refused(host, addr: str, port: int) -> bool:
    """One connection attempt to a closed port: exactly one SYN, answered by a RST (no retransmission)."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns.entered(host.netns):
        s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(3.0)
        s.connect((addr, port))
        return False
    except ConnectionRefusedError:
        return True
    finally:
        s.close()


def test_loss_is_counted_exactly_when_the_consumer_is_too_slow(net):
    client, server, link = net
    n = 300
    # one page of ring buffer holds ~50 attempt records; nobody polls while the SYNs arrive
    with AttemptLog([7070], ring_size=4096) as log, EventStream([log.event_source()]) as stream:
        ifindex = log.attach(link.b.name, server.netns)
        assert all(refused(client, link.b.ip4, 7070) for _ in range(n))
        deadline = time.monotonic() + WAIT
        while log.counts().get((ifindex, 7070), 0) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.counts() == {(ifindex, 7070): n}  # the counters are exact whatever the ring did

        stream.poll(100)
        got = stream.drain()
        assert 0 < len(got) < n
        assert stream.lost == n - len(got)  # nothing silently missing: received + lost == sent
        assert stream.submitted == len(got) == stream.received
        report = stream.loss_events()
        assert len(report) == 1 and report[0]["type"] == "events_lost"
        assert report[0]["lost"] == report[0]["lost_total"] == n - len(got) and report[0]["source"] == "attempts"
        assert stream.loss_events() == []  # reported once, then only new loss

        # the stream recovers: with room again, a new attempt arrives and loss stays where it was
        assert refused(client, link.b.ip6, 7070)
        deadline = time.monotonic() + WAIT
        more: list = []
        while not more and time.monotonic() < deadline:
            stream.poll(50)
            more = stream.drain()
        assert len(more) == 1 and stream.describe(more[0])["family"] == 6
        assert stream.lost == n - len(got)


def test_two_programs_one_stream_with_stable_keys_and_wall_clock(net):
    require("syn")  # syn.o needs atomic fetch instructions (5.12): older kernels refuse it
    client, server, link = net
    with SynCounter(rate=3) as syn, AttemptLog([7070]) as log, \
            EventStream([syn.event_source(), log.event_source()]) as stream:
        syn.attach(link.b.name, server.netns)
        log.attach(link.b.name, server.netns)
        before = time.time()
        assert all(refused(client, link.b.ip4, 7070) for _ in range(6))  # 6 attempts, > 3 SYN/s: a flood
        events: list[dict] = []
        deadline = time.monotonic() + WAIT
        while len(events) < 7 and time.monotonic() < deadline:
            stream.poll(50)
            events += [stream.describe(r) for r in stream.drain()]
        after = time.time()
        kinds = sorted(e["type"] for e in events)
        assert kinds == ["conn_attempt"] * 6 + ["syn_flood"]
        for e in events:
            assert list(e) == (ATTEMPT_KEYS if e["type"] == "conn_attempt" else FLOOD_KEYS)
            # CLOCK_MONOTONIC converted to wall clock: inside the window we measured (1 s slack for rounding)
            assert before - 1 <= e["epoch"] <= after + 1
            assert e["time"].endswith("Z") and e["time"][:19] == time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                               time.gmtime(e["epoch"]))
            json.dumps(e)
        flood = next(e for e in events if e["type"] == "syn_flood")
        assert flood["source"] == "syn" and flood["blocked"] is False and flood["window_syns"] == 4
        attempts = [e for e in events if e["type"] == "conn_attempt"]
        assert all(e["source"] == "attempts" and e["src"] == link.a.ip4 for e in attempts)
        assert [e["mono_ns"] for e in attempts] == sorted(e["mono_ns"] for e in attempts)


def test_asyncio_stream(net):
    client, server, link = net

    async def main(stream: EventStream) -> list:
        got = []

        async def consume():
            async for rec in stream.aiter():
                got.append(stream.describe(rec))
                if len(got) == 3:
                    return

        task = asyncio.create_task(consume())
        for _ in range(3):
            await asyncio.to_thread(refused, client, link.b.ip4, 7070)
        await asyncio.wait_for(task, WAIT)
        return got

    with AttemptLog([7070]) as log, EventStream([log.event_source()]) as stream:
        log.attach(link.b.name, server.netns)
        got = asyncio.run(main(stream))
    assert [e["dport"] for e in got] == [7070] * 3


def _prog_ids(name: str) -> set[int]:
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30, check=True)
    return {p["id"] for p in json.loads(r.stdout or "[]") if p.get("name") == name}


def _held_prog_ids(pid: int) -> set[int]:
    """Programs process `pid` holds an fd of (exact, whatever else runs on the machine)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids.update(int(ln.split()[1]) for ln in f if ln.startswith("prog_id:"))
        except OSError:
            continue  # closed meanwhile
    return ids


def _syn_missing() -> bool:
    """Doctor's answer: this kernel cannot load the SYN-flood program (syn.o: atomic fetch, 5.12)."""
    return doctor.check("syn").status == doctor.MISSING


def _attached_on(host, dev: str) -> str:
    """What is attached at `dev` (XDP and tc filters both ways), as ip and tc print it."""
    link = host.run(["ip", "-d", "link", "show", "dev", dev], check=True).stdout
    filters = "".join(host.run(["tc", "filter", "show", "dev", dev, d]).stdout   # no clsact: nothing
                      for d in ("ingress", "egress"))
    return ("xdp" if "xdp" in link else "") + filters


@pytest.mark.smoke
def test_cli_events_json_lines_and_sigterm_detaches(net):
    """With --syn-rate where this kernel has the SYN-flood program; without it elsewhere (the attempts
    stream alone: test_cli_events_syn_rate_refused_in_one_line_without_syn checks the refusal)."""
    client, server, link = net
    syn = not _syn_missing()
    names = ("bg_attempts_tc", "bg_syn_xdp") if syn else ("bg_attempts_tc",)
    argv = [sys.executable, "-m", "bpfgate.cli.main", "events", "--dev", link.b.name, "--netns", server.netns,
            "--port", "7070", *(["--syn-rate", "1000"] if syn else []), "--json"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + WAIT * 3
        # attempts until the command (still loading/attaching) reports one: bounded by a scaled time
        while time.monotonic() < deadline and p.poll() is None:
            refused(client, link.b.ip4, 7070)
            if select.select([p.stdout], [], [], 0.1)[0]:
                line = p.stdout.readline()
                break
        if not line:   # the command ended (its stdout closes before it is reaped): say how
            try:
                p.wait(WAIT)
            except subprocess.TimeoutExpired:
                pass
        assert line, p.stderr.read() if p.poll() is not None else "no event"
        ev = json.loads(line)
        assert list(ev) == ATTEMPT_KEYS and ev["dport"] == 7070 and ev["interface"] == link.b.name
        ours = _held_prog_ids(p.pid)
        assert all(ours & _prog_ids(name) for name in names)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=WAIT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert all(json.loads(x)["type"] == "conn_attempt" for x in out.splitlines())
    # programs exist only while something holds them: gone means no link, filter or XDP left attached
    # (freed after an RCU grace period: wait, bounded)
    held = lambda: ours & set().union(*(_prog_ids(name) for name in names))  # noqa: E731
    deadline = time.monotonic() + WAIT
    while held() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not held()  # ids are never reused soon
    assert server.run(["ip", "-j", "link", "show", "dev", link.b.name], check=True).stdout.count("xdp") == 0


def test_cli_events_syn_rate_refused_in_one_line_without_syn(net):
    """Where doctor finds no SYN-flood program (Linux < 5.12: no atomic fetch instructions), --syn-rate is
    refused: one line naming what the kernel lacks and the Linux that has it, exit 3, nothing attached
    (the attempts program it attached first is gone with it)."""
    if not _syn_missing():
        pytest.skip("this kernel loads syn.o: --syn-rate works (test_cli_events_json_lines_and_sigterm_detaches)")
    client, server, link = net
    r = subprocess.run([sys.executable, "-m", "bpfgate.cli.main", "events", "--dev", link.b.name, "--netns",
                        server.netns, "--port", "7070", "--syn-rate", "1000", "--json"],
                       capture_output=True, text=True, timeout=WAIT * 6)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpfgate: error: ") and "needs Linux >= " in lines[0], r.stderr
    assert r.stdout == ""
    assert _attached_on(server, link.b.name) == ""


def test_cli_events_rejects_block_without_rate(net):
    client, server, link = net
    r = subprocess.run([sys.executable, "-m", "bpfgate.cli.main", "events", "--dev", link.b.name, "--netns",
                        server.netns, "--block", "5"], capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["bpfgate: error: bpfgate events: --block needs --syn-rate"]


def test_pinned_source_from_another_loader():
    """A producer this process did not load (a pinned gate's ring buffer later): maps by pin, record
    layouts from the object file's BTF. Records come from BPF_PROG_TEST_RUN of the real program."""
    import dpkt

    from bpfgate.inspect.attempts import ALL_PORTS
    from bpfgate.inspect.events import EventSource
    from bpfgate.kernel.objects import packaged_path
    from bpfgate.kernel.pins import unpin
    from bpfgate.kernel.testrun import test_run

    tcp = dpkt.tcp.TCP(sport=1234, dport=443, flags=dpkt.tcp.TH_SYN)
    ip = dpkt.ip.IP(src=socket.inet_aton("198.18.0.1"), dst=socket.inet_aton("198.18.0.2"), p=6, data=tcp)
    frame = b"\x02" * 12 + b"\x08\x00" + bytes(ip)
    base = f"/sys/fs/bpf/bg-inspect-test-{os.getpid()}"
    with AttemptLog([ALL_PORTS]) as log:
        log.obj.map("events").pin(base + "-events")
        try:
            log.obj.map("bg_stats").pin(base + "-stats")
            src = EventSource.from_pins("pinned", base + "-events", str(packaged_path("attempts")),
                                        stats_pin=base + "-stats")
            with EventStream([src]) as stream:
                test_run(log.prog, frame, repeat=3)
                stream.poll(100)
                got = [stream.describe(r) for r in stream.drain()]
                assert [(e["source"], e["src"], e["sport"], e["dport"]) for e in got] == \
                    [("pinned", "198.18.0.1", 1234, 443)] * 3
                assert stream.submitted == 3 and stream.lost == 0
        finally:
            unpin(base + "-events")
            unpin(base + "-stats")


def test_perf_transport_fallback_with_exact_loss(net):
    """The perf buffer path (kernels without ring buffers), forced here: the same events, and loss
    counted exactly when the per-CPU buffers (one page each) overflow with nobody polling."""
    client, server, link = net
    with AttemptLog([7070], transport="perf") as log:
        assert log.transport == "perf"
        src = log.event_source()
        src.perf_pages = 1
        with EventStream([src]) as stream:
            ifindex = log.attach(link.b.name, server.netns)
            n = 200
            assert all(refused(client, link.b.ip4, 7070) for _ in range(n))
            deadline = time.monotonic() + WAIT
            while log.counts().get((ifindex, 7070), 0) < n and time.monotonic() < deadline:
                time.sleep(0.02)
            stream.poll(100)
            got = [stream.describe(r) for r in stream.drain()]
            assert 0 < len(got) < n and stream.lost == n - len(got) and stream.submitted == len(got)
            assert all(list(e) == ATTEMPT_KEYS and e["dport"] == 7070 and e["src"] == link.a.ip4 for e in got)
            assert refused(client, link.b.ip6, 7070)
            deadline = time.monotonic() + WAIT
            more: list = []
            while not more and time.monotonic() < deadline:
                stream.poll(50)
                more = [stream.describe(r) for r in stream.drain()]
            assert [e["family"] for e in more] == [6]
