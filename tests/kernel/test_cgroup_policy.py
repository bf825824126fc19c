"""The policy engine on a cgroup (cgroup_skb ingress/egress): the test makes its own child cgroups (bg*),
moves its own child processes into them, and sends over loopback. A process in the cgroup cannot reach a
blocked port while one outside can; counters count exactly; `bpfgate detach` removes everything."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from clirun import run_cli

from bpfgate import attach, status
from bpfgate.engine import Engine, pin_dir
from bpfgate.policy.model import HookPolicy, Rule
from bpfgate.sandbox.names import netns_name, new_tag
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

PAYLOAD = 100
UDP_WIRE = 20 + 8 + PAYLOAD   # what the engine counts at a cgroup: from the IP header on


@pytest.fixture
def cgroup():
    root = status.cgroup2_mount()
    assert root, "no cgroup v2 mount"
    cg = os.path.join(root, netns_name(new_tag(), "cg"))   # bg*: the leak check looks for these
    os.mkdir(cg)
    try:
        yield cg
    finally:
        attach.detach_matching(target=cg, any_netns=True)
        os.rmdir(cg)   # fails (and the test with it) while a child of the test is still in it


def in_child(code: str, cgroup: str | None, timeout: float = 30) -> str:
    """Run `code` in a child Python, moved into `cgroup` first (None: it stays where the test is)."""
    join = f"open({os.path.join(cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n" if cgroup else ""
    prog = "import os, socket, sys, time\n" + join + textwrap.dedent(code)
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=scaled(timeout))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def send_udp(port: int, n: int) -> str:
    """Child code: n datagrams to 127.0.0.1:port; prints how many were refused, and with which errno."""
    return f"""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        errs = []
        for _ in range({n}):
            try:
                s.sendto(b"x" * {PAYLOAD}, ("127.0.0.1", {port}))
            except OSError as e:
                errs.append(e.errno)
        print(len(errs), sorted(set(errs)))
        """


def received(sock: socket.socket, wait: float = 0.5) -> int:
    sock.settimeout(wait)
    n = 0
    while True:
        try:
            sock.recv(4096)
            n += 1
        except (socket.timeout, BlockingIOError):
            return n


@pytest.fixture
def udp_server():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


def progs_on(cg: str) -> list[int]:
    return sorted(e.prog_id for e in status.cgroup_entries(os.path.dirname(cg)) if e.target == cg)


def block(port: int, proto: str = "udp") -> HookPolicy:
    return HookPolicy(default="allow", rules=(Rule(name="block", protocol=proto, dst_port=port, action="drop"),))


@pytest.mark.smoke
def test_egress_blocks_the_cgroup_only_and_counts_exactly(cgroup, udp_server):
    port = udp_server.getsockname()[1]
    eng = Engine.attach(cgroup, "cgroup-egress", block(port))
    try:
        assert in_child(send_udp(port, 7), cgroup) == f"7 [{errno.EPERM}]"   # refused at once
        assert received(udp_server) == 0
        assert in_child(send_udp(port, 5), None) == "0 []"    # outside the cgroup: delivered
        assert received(udp_server) == 5
        c = eng.counters()
        assert (c["block"].packets, c["block"].bytes) == (7, 7 * UDP_WIRE)
        assert c["(default)"].packets == 0
    finally:
        eng.detach()
    assert in_child(send_udp(port, 3), cgroup) == "0 []"   # detached: the cgroup's traffic flows again
    assert received(udp_server) == 3


def test_tcp_connect_from_the_cgroup_does_not_get_through(cgroup):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    code = f"""
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", {port}))
            print("connected")
        except OSError as e:
            print("refused")
        """
    try:
        with Engine.attach(cgroup, "cgroup-egress", block(port, "tcp")) as eng:
            try:
                assert in_child(code, cgroup) == "refused"
                assert in_child(code, None) == "connected"
                assert eng.counters()["block"].packets >= 1   # the SYN (and its retries)
            finally:
                eng.detach()
    finally:
        srv.close()


def test_ingress_drops_what_reaches_the_cgroups_sockets(cgroup):
    """A server in the cgroup behind cgroup-ingress: its blocked port hears nothing, the other port all."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        blocked = probe.getsockname()[1]
    eng = Engine.attach(cgroup, "cgroup-ingress", block(blocked))
    server = f"""
        socks = []
        for port in ({blocked}, 0):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            s.settimeout(0.5)
            socks.append(s)
        print(socks[1].getsockname()[1], flush=True)
        sys.stdin.readline()          # the test has sent
        counts = []
        for s in socks:
            n = 0
            try:
                while True:
                    s.recv(4096)
                    n += 1
            except socket.timeout:
                counts.append(n)
        print(*counts)
        """
    join = f"open({os.path.join(cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
    child = subprocess.Popen([sys.executable, "-c", "import os, socket, sys\n" + join + textwrap.dedent(server)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        other = int(child.stdout.readline())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(6):
                s.sendto(b"x" * PAYLOAD, ("127.0.0.1", blocked))
            for _ in range(4):
                s.sendto(b"x" * PAYLOAD, ("127.0.0.1", other))
        out, _ = child.communicate("go\n", timeout=scaled(30))
        assert out.split() == ["0", "4"]
        c = eng.counters()
        assert (c["block"].packets, c["block"].bytes) == (6, 6 * UDP_WIRE)
        assert c["(default)"].packets == 4
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        eng.detach()
        eng.close()


def test_other_programs_on_the_cgroup_keep_running(cgroup, udp_server):
    """Multi-attach: another cgroup_skb program on the cgroup stays attached and runs beside bpfgate's, and
    stays when bpfgate's goes."""
    from bpfgate.kernel.objects import BpfObject

    port = udp_server.getsockname()[1]
    with BpfObject.open("engine") as obj:
        for name in obj.program_names():
            obj.set_autoload(name, name == "bg_bench_cg_empty")
        obj.load()
        other = attach.attach(obj.program("bg_bench_cg_empty"), attach.Point.of_cgroup(cgroup),
                              attach.Options(owner="test"), kind="cgroup")
        try:
            eng = Engine.attach(cgroup, "cgroup-egress", block(port))
            try:
                assert progs_on(cgroup) == sorted([other.prog_id, eng.prog_id])
                assert in_child(send_udp(port, 2), cgroup) == f"2 [{errno.EPERM}]"   # every program must pass it
            finally:
                eng.detach()
                eng.close()
            assert progs_on(cgroup) == [other.prog_id]   # the other program stays
            assert in_child(send_udp(port, 2), cgroup) == "0 []"
        finally:
            attach.detach(other)


def test_policy_file_rules_edits_status_and_detach(cgroup, udp_server, tmp_path):
    """The CLI end to end: `apply` a file naming the cgroup, `rules`, `rule add/del`, `status`, `detach`."""
    port = udp_server.getsockname()[1]
    rel = os.path.relpath(cgroup, status.cgroup2_mount())   # relative to the cgroup v2 mount
    f = tmp_path / "p.yaml"
    f.write_text(textwrap.dedent(f"""\
        version: 1
        cgroups: [{rel}]
        hooks:
          cgroup-egress:
            default: allow
            rules:
              - {{name: other, protocol: tcp, dst_port: 1}}
        """))
    r = run_cli(["apply", str(f)])
    assert r.returncode == 0, r.stderr
    assert run_cli(["apply", str(f), "--json"]).stdout.count('"changed": false') == 1   # idempotent
    r = run_cli(["rule", "add", "udp-block", "--dev", cgroup, "--hook", "cgroup-egress", "--proto", "udp",
                 "--dport", str(port), "--action", "drop", "--position", "0"])
    assert r.returncode == 0, r.stderr
    assert in_child(send_udp(port, 4), cgroup).startswith("4 ")
    rows = json.loads(run_cli(["rules", "--dev", cgroup, "--json"]).stdout)
    got = {(x["name"], x["packets"]) for x in rows}
    assert ("udp-block", 4) in got and ("other", 0) in got
    ours = json.loads(run_cli(["status", "--json", "--ours"]).stdout)["attachments"]
    assert [e["hook"] for e in ours if e["target"] == cgroup] == ["cgroup_inet_egress"]
    assert run_cli(["rule", "del", "udp-block", "--dev", cgroup, "--hook", "cgroup-egress"]).returncode == 0
    assert in_child(send_udp(port, 2), cgroup) == "0 []"
    r = run_cli(["detach"])
    assert r.returncode == 0, r.stderr
    assert not [e for e in status.cgroup_entries(os.path.dirname(cgroup)) if e.target == cgroup]
    assert not attach.find(target=cgroup, any_netns=True)
    assert all(d != cgroup for d, _ in Engine.attached(None))
    assert not os.path.exists(os.path.dirname(pin_dir(cgroup, "cgroup-egress", None)))


@pytest.mark.parametrize("make", ["missing", "not-cgroup2"])
def test_bad_cgroup_one_line_error_nothing_attached(make, tmp_path):
    path = str(tmp_path / "nope") if make == "missing" else str(tmp_path)
    f = tmp_path / "p.yaml"
    f.write_text(f"version: 1\ncgroups: [{path}]\nhooks:\n  cgroup-egress: {{default: deny}}\n")
    r = run_cli(["apply", str(f)])
    assert r.returncode == 2   # bad input (README), either way
    assert len(r.stderr.strip().splitlines()) <= 2 and "Traceback" not in r.stderr
    assert path in r.stderr and ("no such cgroup" in r.stderr or "not a cgroup v2" in r.stderr)
    assert not attach.find(target=path, any_netns=True)
    assert all(d != path for d, _ in Engine.attached(None))


# ---- socket policy: connect/sendmsg (cgroup-connect) and bind (cgroup-bind) ------------------------------

def connect_code(family: str, host: str, port: int, n: int) -> str:
    """Child code: n TCP connects; prints each outcome (errno name or ok) and the slowest call's seconds."""
    return f"""
        import errno
        out, slowest = [], 0.0
        for _ in range({n}):
            s = socket.socket(socket.{family}, socket.SOCK_STREAM)
            s.settimeout(5)
            t = time.monotonic()
            try:
                s.connect(({host!r}, {port}))
                out.append("ok")
            except OSError as e:
                out.append(errno.errorcode.get(e.errno, str(e)))
            slowest = max(slowest, time.monotonic() - t)
            s.close()
        print(" ".join(out), round(slowest, 3))
        """


@pytest.fixture
def tcp_servers():
    """Listening on 127.0.0.1 and ::1, one port for both."""
    s4 = socket.socket()
    s4.bind(("127.0.0.1", 0))
    port = s4.getsockname()[1]
    s6 = socket.socket(socket.AF_INET6)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s6.bind(("::1", port))
    for s in (s4, s6):
        s.listen(16)
    yield port
    s4.close()
    s6.close()


def test_connect_to_a_denied_destination_gets_eperm_at_once(cgroup, tcp_servers, udp_server):
    port, uport = tcp_servers, udp_server.getsockname()[1]
    hp = HookPolicy(default="allow", rules=(
        Rule(name="no-tcp4", protocol="tcp", dst="127.0.0.1/32", dst_port=port, action="drop"),
        Rule(name="no-tcp6", protocol="tcp", dst="::1/128", dst_port=port, action="drop"),
        Rule(name="no-udp", protocol="udp", dst_port=uport, action="drop")))
    with Engine.attach(cgroup, "cgroup-connect", hp) as eng:
        try:
            out = in_child(connect_code("AF_INET", "127.0.0.1", port, 3), cgroup).split()
            assert out[:3] == ["EPERM"] * 3 and float(out[3]) < 0.5, out   # at once, no SYN timeout
            out = in_child(connect_code("AF_INET6", "::1", port, 2), cgroup).split()
            assert out[:2] == ["EPERM"] * 2, out
            assert in_child(connect_code("AF_INET", "127.0.0.1", port, 2), None).split()[:2] == ["ok", "ok"]
            assert in_child(send_udp(uport, 4), cgroup) == f"4 [{errno.EPERM}]"    # unconnected UDP: sendmsg
            assert received(udp_server, 0.2) == 0
            c = eng.counters()
            assert [c[n].packets for n in ("no-tcp4", "no-tcp6", "no-udp", "(default)")] == [3, 2, 4, 0]
        finally:
            eng.detach()
    assert in_child(connect_code("AF_INET", "127.0.0.1", port, 1), cgroup).split()[0] == "ok"


def test_bind_to_a_denied_port_is_refused(cgroup):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        denied = probe.getsockname()[1]
    hp = HookPolicy(default="allow", rules=(Rule(name="no-bind", protocol="tcp", src_port=denied, action="drop"),))
    code = f"""
        import errno
        out = []
        for port in ({denied}, 0):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                out.append("ok")
            except OSError as e:
                out.append(errno.errorcode.get(e.errno, str(e)))
            s.close()
        print(*out)
        """
    with Engine.attach(cgroup, "cgroup-bind", hp) as eng:
        try:
            assert in_child(code, cgroup) == "EPERM ok"
            assert in_child(code, None) == "ok ok"
            assert eng.counters()["no-bind"].packets == 1
        finally:
            eng.detach()


def test_socket_hooks_refuse_packet_only_fields(cgroup, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(f"version: 1\ncgroups: [{cgroup}]\nhooks:\n  cgroup-connect:\n    rules:\n"
                 f"      - {{name: x, protocol: tcp, src_port: 80, action: drop}}\n")
    r = run_cli(["apply", str(f)])
    assert r.returncode == 2 and "cgroup-connect matches the destination" in r.stderr, r.stderr
    assert not attach.find(target=cgroup, any_netns=True)
