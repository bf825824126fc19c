"""TCP tuning per cgroup (sock_ops): a process of the test's own child cgroup reads back with getsockopt
the congestion control, buffer sizes, no-delay and initial congestion window set; one outside keeps the
defaults; a congestion control the kernel lacks is refused naming the available ones, nothing attached;
RTT, retransmit and end samples of the cgroup's connections arrive as events and counters; `bpfgate detach`
removes it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from clirun import run_cli

from bpfgate import attach, tune
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def read_back(port: int, cgroup: str | None) -> list:
    """[congestion control, SO_SNDBUF, SO_RCVBUF, TCP_NODELAY, snd_cwnd] of a connection a child makes
    (snd_cwnd from TCP_INFO before any data: the initial congestion window)."""
    join = f"open({os.path.join(cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n" if cgroup else ""
    code = "import json, os, socket, struct\n" + join + textwrap.dedent(f"""
        s = socket.socket()
        s.connect(("127.0.0.1", {port}))
        print(json.dumps([s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\\0").decode(),
                          s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                          s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                          s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                          struct.unpack_from("I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 80)[0]]))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def other_cc() -> str:
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        default = f.read().strip()
    others = [c for c in tune.available_cc() if c != default]
    if not others:
        pytest.skip(f"the kernel offers only {default}")
    return others[0]


@pytest.mark.smoke
def test_settings_read_back_inside_the_cgroup_only(cgroup, listener):
    """--nodelay where this kernel's sock_ops can set it (doctor's tune check: Linux >= 6.1); elsewhere the
    other settings, and test_nodelay_refused_in_one_line_where_the_kernel_cannot checks the refusal."""
    cc = other_cc()
    nodelay = tune.nodelay_refused() is None
    outside = read_back(listener, None)
    iw = outside[4] + 7
    r = run_cli(["tune", cgroup, "--cc", cc, "--sndbuf", "100000", "--rcvbuf", "150000",
                 *(["--nodelay"] if nodelay else []), "--iw", str(iw)])
    assert r.returncode == 0, r.stderr
    # the kernel doubles buffer sizes
    assert read_back(listener, cgroup) == [cc, 200000, 300000, 1 if nodelay else outside[3], iw]
    assert tune.totals(cgroup).failed == 0   # nothing the kernel refused, silently
    assert read_back(listener, None) == outside
    r = run_cli(["tune", cgroup, "--sndbuf", "50000"])   # again: replaces the settings
    assert r.returncode == 0, r.stderr
    got = read_back(listener, cgroup)
    assert got[1] == 100000 and got[0] == outside[0] and got[3] == 0 and got[4] == outside[4]
    r = run_cli(["detach", "--cgroup", cgroup])
    assert r.returncode == 0, r.stderr
    assert read_back(listener, cgroup) == outside
    assert not attach.find(target=cgroup, any_netns=True)
    assert not os.path.exists(tune.pin_dir(cgroup))


def test_nodelay_refused_in_one_line_where_the_kernel_cannot(cgroup, listener):
    """Before Linux 6.1 bpf_setsockopt refuses TCP_NODELAY from sock_ops when the program runs: --nodelay
    is refused before anything loads (one line naming the Linux that has it), not counted silently."""
    why = tune.nodelay_refused()
    if why is None:
        pytest.skip("this kernel's sock_ops programs set TCP_NODELAY (test_settings_read_back_inside_the_cgroup_only)")
    r = run_cli(["tune", cgroup, "--nodelay", "--sndbuf", "100000"])
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"bpfgate: error: tune --nodelay: {why} (needs Linux >= 6.1)"]
    assert not attach.find(target=cgroup, any_netns=True)
    assert not os.path.exists(tune.pin_dir(cgroup))
    assert read_back(listener, cgroup)[3] == 0


def test_a_congestion_control_the_kernel_lacks_is_refused_naming_the_available(cgroup):
    r = run_cli(["tune", cgroup, "--cc", "bg-nonesuch"])
    assert r.returncode == 2 and "Traceback" not in r.stderr   # bad input (README)
    assert "bg-nonesuch" in r.stderr and all(c in r.stderr for c in tune.available_cc())
    assert not attach.find(target=cgroup, any_netns=True)
    r = run_cli(["tune", cgroup + "-missing", "--nodelay"])
    assert r.returncode == 2 and "no such cgroup" in r.stderr


def test_bad_settings_are_refused_before_anything_attaches(cgroup):
    for args, words in ((["--iw", "0"], "initial congestion window 0"), (["--sndbuf", "0"], "sndbuf 0"),
                        ([], "nothing to set")):
        r = run_cli(["tune", cgroup, *args])
        assert r.returncode == 2 and "Traceback" not in r.stderr and words in r.stderr, r.stderr
    assert not attach.find(target=cgroup, any_netns=True)
    r = run_cli(["tune", cgroup, "--watch", "--duration", "0"])
    assert r.returncode != 0 and "not tuned" in r.stderr, r.stderr


LOSSY_TRANSFER = """
    import threading
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    got = []
    def sink():
        c, _ = ls.accept()
        n = 0
        while True:
            b = c.recv(65536)
            if not b:
                break
            n += len(b)
        got.append(n)
        c.close()
    t = threading.Thread(target=sink)
    t.start()
    s = socket.socket()
    s.connect(ls.getsockname())
    s.sendall(b"x" * {size})
    s.shutdown(socket.SHUT_WR)
    t.join()
    s.close()
    print(json.dumps([ls.getsockname()[1], got[0]]))
"""


def test_rtt_retransmit_and_end_samples_arrive_as_events_and_counters(cgroup, sandbox):
    """A transfer inside the cgroup, over a lossy loopback (in the test's own namespace) so that
    retransmissions happen: its RTT samples, retransmits and end arrive as events, and the counters agree."""
    host = sandbox.host("lossy")
    host.run(["ip", "link", "set", "lo", "up"], check=True)
    # one data segment in five dropped on arrival, so the sender retransmits (nftables in the test's own namespace; netem may be absent)
    host.run(["nft", "add table inet bgloss; add chain inet bgloss in { type filter hook input priority 0; }; "
              "add rule inet bgloss in meta l4proto tcp meta length > 1000 numgen random mod 5 == 0 drop"],
             check=True)
    r = run_cli(["tune", cgroup, "--samples", "--sample-gap", "0"])
    assert r.returncode == 0, r.stderr
    size = 4_000_000
    # into the cgroup, then into the namespace (`ip netns exec` would hide the cgroup mount)
    enter = textwrap.dedent(f"""
        open({os.path.join(cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))
        import ctypes
        fd = os.open("/run/netns/{host.netns}", os.O_RDONLY)
        assert ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0   # CLONE_NEWNET
        """)
    code = "import json, os, socket\n" + enter + textwrap.dedent(LOSSY_TRANSFER.format(size=size))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    port, received = json.loads(r.stdout)
    assert received == size
    deadline = time.monotonic() + scaled(10)   # a lost last ACK delays one side's close
    while (t := tune.totals(cgroup)).ended < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    # the samples wait in the cgroup's pinned ring buffer until a watcher reads them
    r = run_cli(["tune", cgroup, "--watch", "--duration", "1"])
    assert r.returncode == 0, r.stderr
    out, err = r.stdout, r.stderr
    events = [json.loads(line) for line in out.splitlines()]
    ours = [e for e in events if e.get("type") == "tcp_sample"]
    assert not [e for e in events if e.get("type") == "events_lost"]
    client = [e for e in ours if e["dport"] == port]   # the connecting side's view
    kinds = {e["sample"] for e in client}
    assert {"rtt", "retransmit", "end"} <= kinds, (kinds, err, out[-3000:], t)
    assert all(e["src"] == e["dst"] == "127.0.0.1" and e["srtt_us"] > 0 for e in client if e["sample"] == "rtt")
    end = [e for e in client if e["sample"] == "end"]
    assert len(end) == 1 and end[0]["bytes_acked"] >= size and end[0]["retransmits"] >= 1
    # counters: every RTT sample in one histogram bucket; retransmits and ends of both sides counted
    assert t.rtt_samples == sum(t.rtt_hist) >= len([e for e in ours if e["sample"] == "rtt"])
    assert t.retransmits >= end[0]["retransmits"]
    assert t.ended == len([e for e in ours if e["sample"] == "end"]) == 2
    assert t.tuned >= 2 and t.failed == 0
    metrics = tune.TuneCollector()
    names = {m.name: m for m in metrics.collect()}
    hist = {s.labels.get("le"): s.value for s in names["bpfgate_tune_srtt_seconds"].samples
            if s.labels["cgroup"] == cgroup and s.name.endswith("_bucket")}
    assert hist["+Inf"] == t.rtt_samples
