"""TCP tuning per cgroup (sock_ops): a process of the test's own child cgroup reads back with getsockopt
the congestion control, buffer sizes and no-delay set; one outside keeps the defaults; a congestion control
the kernel lacks is refused naming the available ones, nothing attached; `bpfgate detach` removes it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from clirun import run_cli

from bpfgate import attach, status, tune
from bpfgate.sandbox.names import netns_name, new_tag

pytestmark = pytest.mark.kernel


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
        os.rmdir(cg)


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def read_back(port: int, cgroup: str | None) -> list:
    """[congestion control, SO_SNDBUF, SO_RCVBUF, TCP_NODELAY] of a connection a child makes."""
    join = f"open({os.path.join(cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n" if cgroup else ""
    code = "import json, os, socket\n" + join + textwrap.dedent(f"""
        s = socket.socket()
        s.connect(("127.0.0.1", {port}))
        print(json.dumps([s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\\0").decode(),
                          s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                          s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                          s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)]))
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
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
    cc = other_cc()
    outside = read_back(listener, None)
    r = run_cli(["tune", cgroup, "--cc", cc, "--sndbuf", "100000", "--rcvbuf", "150000", "--nodelay"])
    assert r.returncode == 0, r.stderr
    assert read_back(listener, cgroup) == [cc, 200000, 300000, 1]   # the kernel doubles buffer sizes
    assert read_back(listener, None) == outside
    r = run_cli(["tune", cgroup, "--sndbuf", "50000"])   # again: replaces the settings
    assert r.returncode == 0, r.stderr
    got = read_back(listener, cgroup)
    assert got[1] == 100000 and got[0] == outside[0] and got[3] == 0
    r = run_cli(["detach", "--cgroup", cgroup])
    assert r.returncode == 0, r.stderr
    assert read_back(listener, cgroup) == outside
    assert not attach.find(target=cgroup, any_netns=True)
    assert not os.path.exists(tune.pin_dir(cgroup))


def test_a_congestion_control_the_kernel_lacks_is_refused_naming_the_available(cgroup):
    r = run_cli(["tune", cgroup, "--cc", "bg-nonesuch"])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "bg-nonesuch" in r.stderr and all(c in r.stderr for c in tune.available_cc())
    assert not attach.find(target=cgroup, any_netns=True)
    r = run_cli(["tune", cgroup + "-missing", "--nodelay"])
    assert r.returncode == 2 and "no such cgroup" in r.stderr
