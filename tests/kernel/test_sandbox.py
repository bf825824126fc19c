"""The sandbox against the real kernel: namespaces, veths, routing, processes, teardown, sweeping."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from bpfgate.kernel import netns
from bpfgate.sandbox import Sandbox, SandboxError, leftovers, sweep_stale
from bpfgate.sandbox.cleanup import MARKER_DIR
from bpfgate.sandbox.names import base36, is_alive
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel


def gone(pid: int, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid) or _zombie(pid):
            return True
        time.sleep(0.02)
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# ---- topology and traffic ------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["ip4", "ip6"])
def test_routed_ping_and_tcp(sandbox, family):
    t = sandbox.routed()
    server_addr = getattr(t.right.b, family)
    assert t.client.ping(server_addr), f"no echo reply from {server_addr}"
    assert not t.client.tcp_connect(server_addr, 9000, timeout=1), "connected before the server started"
    srv = t.server.spawn([sys.executable, "-c", textwrap.dedent("""
        import socket
        s = socket.create_server(("::", 9000), family=socket.AF_INET6, dualstack_ipv6=True)
        s.settimeout(20)
        while True:
            s.accept()[0].close()
        """)])
    deadline = time.monotonic() + scaled(10)
    while not t.client.tcp_connect(server_addr, 9000, timeout=0.5):
        assert srv.alive and time.monotonic() < deadline, f"server never accepted: {srv.output()}"
        time.sleep(0.02)
    # the router is what carries it: without forwarding the same probes fail
    t.router.set_forwarding(False)
    assert not t.client.ping(server_addr, timeout=0.5), "echo reply with forwarding off"
    assert not t.client.tcp_connect(server_addr, 9000, timeout=0.5), "connected with forwarding off"


def test_addresses_routes_and_names(sandbox):
    t = sandbox.routed()
    assert (t.left.a.ip4, t.left.b.ip4) == ("198.18.1.1", "198.18.1.2")
    assert (t.right.a.ip6, t.right.b.ip6) == ("fd00:0:0:2::1", "fd00:0:0:2::2")
    assert t.left.a.peer is t.left.b and t.left.peer_of(t.client) is t.left.b
    out = t.client.run(["ip", "-o", "addr", "show", "dev", "eth0"], check=True).stdout
    assert "198.18.1.1/24" in out and "fd00:0:0:1::1/64" in out
    # usable at once: a router's neighbour solicitation needs a non-tentative link-local address
    for h in (t.client, t.router, t.server):
        out = h.run(["ip", "-6", "-o", "addr", "show", "scope", "link"], check=True).stdout
        assert "fe80::" in out and "tentative" not in out, (h.name, out)
    routes = t.client.run(["ip", "-6", "route", "show", "default"], check=True).stdout
    assert "via fd00:0:0:1::2" in routes
    assert t.router.run(["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]).stdout.split() == ["1", "1"]
    for h in (t.client, t.router, t.server):
        assert netns.exists(h.netns) and h.netns.startswith(sandbox.tag)
    with t.router.entered():  # Python code in the host: its interfaces, not ours
        assert {n for _, n in socket.if_nameindex()} == {"lo", "eth0", "eth1"}
        assert socket.if_nametoindex("eth1") == t.right.a.index


def test_mtu_and_root_link(sandbox):
    h = sandbox.host("h")
    link = sandbox.link(sandbox.root, h, mtu=1400)
    assert link.a.name.startswith(sandbox.tag) and len(link.a.name) <= 15
    assert link.a.name in {n for _, n in socket.if_nameindex()}
    assert "mtu 1400" in h.run(["ip", "link", "show", link.b.name]).stdout
    assert sandbox.root.ping(link.b.ip4) and sandbox.root.ping(link.b.ip6)
    assert h.ping(link.a.ip4)
    with pytest.raises(ValueError):  # teardown deletes root interfaces by name: only tagged ones
        sandbox.link(sandbox.root, h, ifnames=("eth0", None))
    other = sandbox.host("other")
    named = sandbox.link(h, other, ifnames=("wan0", "lan0"), net4="198.18.200.0/30", net6="fd00:c8::/64")
    assert (named.a.ip4, named.b.ip6) == ("198.18.200.1", "fd00:c8::2")
    assert other.ping(named.a.ip6) and h.iface("wan0").peer.name == "lan0"
    # the root namespace leads off the machine: probes from it must stay on our links
    with pytest.raises(SandboxError):
        sandbox.root.tcp_connect("198.18.99.1", 80)
    with pytest.raises(SandboxError):
        sandbox.root.http_get("http://[fd00:0:0:99::1]/")


def test_http_server_and_get_both_families(sandbox):
    t = sandbox.routed()
    t.server.http_server(8080)
    for url in (f"http://{t.right.b.ip4}:8080/", f"http://[{t.right.b.ip6}]:8080/index.html"):
        r = t.client.http_get(url)
        assert r.status == 200 and r.ok and r.body == b"bpfgate sandbox server\n", (url, r)
    r = t.client.http_get(f"http://{t.right.b.ip4}:8081/", timeout=1)
    assert r.status is None and not r.ok and "refused" in r.error.lower()


def test_http_server_port_taken(sandbox):
    h = sandbox.host("h")
    first = h.http_server(8080)
    with pytest.raises(SandboxError, match="Address already in use"):
        h.http_server(8080)  # must not mistake the first server for the second one
    assert first.alive


def test_http_server_on_one_address(sandbox):
    t = sandbox.routed()
    t.server.http_server(8080, bind=t.right.b.ip4)
    assert t.client.http_get(f"http://{t.right.b.ip4}:8080/").status == 200
    assert not t.client.tcp_connect(t.right.b.ip6, 8080, timeout=1)


def test_run_captures_and_times_out(sandbox):
    h = sandbox.host("h")
    r = h.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    with pytest.raises(SandboxError, match="exit status 3"):
        h.run(["sh", "-c", "exit 3"], check=True)
    t0 = time.monotonic()
    with pytest.raises(SandboxError, match="timed out"):
        h.run(["sh", "-c", "sleep 30 & wait"], timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert not netns_pids(h.netns)  # the shell and its background child: whole group killed


def test_spawned_process_handle(sandbox):
    h = sandbox.host("h")
    quick = h.spawn(["sh", "-c", "echo hello; exit 7"])
    assert quick.wait(scaled(5)) == 7 and not quick.alive and quick.output() == "hello\n"
    assert quick.stop() == 7
    group = h.spawn(["sh", "-c", "sleep 60 & sleep 60"])
    deadline = time.monotonic() + scaled(5)
    while len(netns_pids(h.netns)) < 3 and time.monotonic() < deadline:  # sh and both sleeps
        time.sleep(0.02)
    members = netns_pids(h.netns)
    assert len(members) == 3 and group.alive
    assert group.stop() == -signal.SIGTERM
    assert all(gone(p) for p in members) and not netns_pids(h.netns)


def netns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=scaled(5)).stdout
    return [int(p) for p in out.split()]


# ---- teardown --------------------------------------------------------------------------------------

def _assert_all_gone(tag: str, ns: list[str], pids: list[int]) -> None:
    assert not [n for n in ns if netns.exists(n)]
    assert all(gone(p) for p in pids), [p for p in pids if not gone(p, 0)]
    assert not os.path.exists(os.path.join(MARKER_DIR, f"{tag}.json"))
    assert not [i for _, i in socket.if_nameindex() if i.startswith(tag)]


def test_teardown_removes_everything(sandbox):
    # a second sandbox, closed explicitly, while the fixture's stays up (and must not be touched)
    sb = Sandbox()
    t = sb.routed()
    sb.link(sb.root, t.client)
    srv = t.server.http_server(8080)
    sleeper = t.client.spawn(["sleep", "60"])
    # a process the sandbox did not start, in one of its namespaces: it would keep the namespace alive
    stray = subprocess.Popen(["ip", "netns", "exec", t.router.netns, "sleep", "60"], start_new_session=True)
    try:
        ns = [h.netns for h in sb.hosts.values()]
        assert set(leftovers(os.getpid())) >= {f"netns {n}" for n in ns}
        sb.close()
        stray.wait(scaled(5))
        _assert_all_gone(sb.tag, ns, [srv.pid, sleeper.pid, stray.pid])
        assert not [x for x in leftovers(os.getpid()) if sb.tag in x]
        sb.close()  # twice is fine
        assert netns.exists(sandbox.host("still_here").netns)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait(scaled(5))
        sb.close()


def test_teardown_after_exception_in_with_block():
    with pytest.raises(RuntimeError, match="boom"):
        with Sandbox() as sb:
            t = sb.routed()
            srv = t.server.http_server(8080)
            ns = [h.netns for h in sb.hosts.values()]
            raise RuntimeError("boom")
    _assert_all_gone(sb.tag, ns, [srv.pid])


CHILD = textwrap.dedent("""
    import json, sys, time
    from bpfgate.sandbox import Sandbox
    sb = Sandbox()
    t = sb.routed()
    link = sb.link(sb.root, t.client)
    srv = t.server.http_server(8080)
    print(json.dumps({"tag": sb.tag, "ns": [h.netns for h in sb.hosts.values()], "pids": [srv.pid],
                      "iface": link.a.name}), flush=True)
    if sys.argv[1] == "kill":
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    with sb:
        time.sleep(30)
    """)


def _child(mode: str) -> tuple[subprocess.Popen, dict]:
    p = subprocess.Popen([sys.executable, "-c", CHILD, mode], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([p.stdout], [], [], scaled(20))
    if not ready:
        p.kill()
        p.wait(scaled(5))
        pytest.fail(f"child sandbox did not come up within {scaled(20):g} s")
    return p, json.loads(p.stdout.readline())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_teardown_on_signal(sig):
    p, made = _child("wait")
    try:
        assert all(netns.exists(n) for n in made["ns"])
        p.send_signal(sig)
        assert p.wait(scaled(10)) != 0
        _assert_all_gone(made["tag"], made["ns"], made["pids"])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(scaled(5))
        sweep_stale()


def test_sweep_stale_removes_what_a_killed_run_left(sandbox):
    live = sandbox.host("live")
    p, made = _child("kill")
    try:
        assert p.wait(scaled(10)) == -signal.SIGKILL
        # SIGKILL: nothing ran, everything is still there
        assert all(netns.exists(n) for n in made["ns"])
        assert made["iface"] in {n for _, n in socket.if_nameindex()}
        assert is_alive(made["pids"][0])
        removed = sweep_stale()
        assert {f"netns {n}" for n in made["ns"]} | {f"interface {made['iface']}"} <= set(removed)
        _assert_all_gone(made["tag"], made["ns"], made["pids"])
        assert netns.exists(live.netns)  # a live run's sandbox is never swept
        assert sweep_stale() == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(scaled(5))
        sweep_stale()


def test_sweep_stale_without_marker(sandbox):
    # a namespace whose name says "owned by a dead PID" goes even if its marker was lost
    name = f"bg{base36(_dead_pid())}-zzz-orphan"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=scaled(10))
    try:
        assert f"netns {name}" in sweep_stale()
        assert not netns.exists(name)
    finally:
        if netns.exists(name):
            subprocess.run(["ip", "netns", "del", name], timeout=scaled(10))


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_sweep_stale_removes_pins_and_state_named_after_a_dead_run():
    """A run killed before its teardown leaves pins and family state keyed by its namespaces' names."""
    from bpfgate.kernel.objects import BpfObject

    name = f"bg{base36(_dead_pid())}-zzz-server"
    roots = ("/sys/fs/bpf/bpfgate/engine", "/run/bpfgate/engine")
    made = [r for r in roots if not os.path.exists(r)]   # removed again at the end, as the engine does
    pin_dir = os.path.join("/sys/fs/bpf/bpfgate/engine", name, "eth0", "tc-ingress")
    state_dir = os.path.join("/run/bpfgate/engine", name, "eth0", "tc-ingress")
    os.makedirs(pin_dir)
    os.makedirs(state_dir)
    from bpfgate.attach import record

    marker = record.clsact_marker(name, "eth0")   # a clsact qdisc bpfgate made in that namespace
    made += [record.CLSACT_DIR] if not os.path.exists(record.CLSACT_DIR) else []
    record.mark_clsact_ours(name, "eth0")
    try:
        with BpfObject.open("selftest") as obj:
            obj.load()
            obj.map("test_hash").pin(os.path.join(pin_dir, "left"))   # a real pin, as an engine's
        removed = sweep_stale()
        assert f"state /sys/fs/bpf/bpfgate/engine/{name}" in removed
        assert f"state /run/bpfgate/engine/{name}" in removed
        assert not os.path.exists(os.path.join("/sys/fs/bpf/bpfgate/engine", name))
        assert not os.path.exists(os.path.join("/run/bpfgate/engine", name))
        assert f"state {marker}" in removed and not os.path.exists(marker)
    finally:
        if os.path.exists(marker):
            os.unlink(marker)
        for root in roots:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        for root in made:
            try:
                os.rmdir(root)
            except OSError:
                pass   # something else put an engine there meanwhile


def _named_after(tag: str) -> list[str]:
    found = []
    for root in ("/run/bpfgate", "/sys/fs/bpf/bpfgate"):
        for d, dirs, files in os.walk(root):
            found += [os.path.join(d, n) for n in dirs + files if n.startswith(tag)]
    return found


def test_teardown_removes_what_bpfgate_kept_for_a_policy_left_attached():
    """Closing a sandbox whose namespace still has a policy attached (no detach): its engine's pins, state,
    attachment records and clsact marker go with the namespace."""
    from bpfgate import policyctl
    from bpfgate.policy.model import Policy

    sb = Sandbox()
    try:
        fw, peer = sb.host("fw"), sb.host("peer")
        dev = sb.link(fw, peer).end(fw).name
        policy = Policy.model_validate({"interfaces": [dev], "hooks": {"tc-ingress": {"rules": [
            {"name": "block", "src": "198.18.0.0/24", "action": "drop"}]}}})
        policyctl.apply(policy, netns=fw.netns)
        kept = _named_after(sb.tag)
        assert any("/clsact/" in p for p in kept) and any(p.startswith("/sys/fs/bpf/") for p in kept), kept
    finally:
        sb.close()
    assert _named_after(sb.tag) == []
