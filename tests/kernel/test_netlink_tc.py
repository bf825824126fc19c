"""kernel.netlink / kernel.tc against the real kernel: throwaway namespaces joined by a veth pair,
programs loaded and pinned by bpftool (independent of bpfgate's own loader), checked with `tc`/`ip`,
and real TCP through bg_dropper."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bpfgate.errors import AttachError, NotFound
from bpfgate.kernel import netlink, netns, tc
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

OBJECTS = Path(__file__).resolve().parents[2] / "src" / "bpfgate" / "objects"
BPFFS = "/sys/fs/bpf"
TIMEOUT = scaled(10)  # seconds, for every tool we run
_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
_libbpf.bpf_obj_get.argtypes = [ctypes.c_char_p]


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=check)


def obj_get(path: str) -> int:
    fd = _libbpf.bpf_obj_get(path.encode())
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"bpf_obj_get {path}")
    return fd


@dataclass
class Pair:
    """Namespaces `a` and `b`, veth a0 (in a, 198.18.N.1) <-> b0 (in b, 198.18.N.2); bpffs dir `pins`."""

    a: str
    b: str
    addr_a: str
    addr_b: str
    pins: str
    fds: list

    def prog(self, obj: str, name: str) -> int:
        """fd of program `name` of objects/`obj`.o, loaded once per test by bpftool loadall."""
        d = os.path.join(self.pins, obj)
        if not os.path.isdir(d):
            run("bpftool", "prog", "loadall", str(OBJECTS / f"{obj}.o"), d, "pinmaps", d + "_maps")
        fd = obj_get(os.path.join(d, name))
        self.fds.append(fd)
        return fd

    def prog_id(self, obj: str, name: str) -> int:
        return json.loads(run("bpftool", "-j", "prog", "show", "pinned", os.path.join(self.pins, obj, name)).stdout)["id"]


def _mounted_bpffs() -> None:
    with open("/proc/self/mounts") as f:
        if any(line.split()[1] == BPFFS and line.split()[2] == "bpf" for line in f):
            return
    run("mount", "-t", "bpf", "bpf", BPFFS)


@pytest.fixture
def pair():
    tag = f"bgnl{os.getpid()}{random.randrange(1 << 20):05x}"
    subnet = random.randrange(256)
    p = Pair(f"{tag}a", f"{tag}b", f"198.18.{subnet}.1", f"198.18.{subnet}.2", f"{BPFFS}/{tag}", [])
    made = []
    try:
        _mounted_bpffs()
        os.makedirs(p.pins)
        for ns in (p.a, p.b):
            run("ip", "netns", "add", ns)
            made.append(ns)
        run("ip", "-n", p.a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", p.b)
        for ns, dev, addr in ((p.a, "a0", p.addr_a), (p.b, "b0", p.addr_b)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        yield p
    finally:
        for fd in p.fds:
            os.close(fd)
        for ns in made:  # takes the veth, its qdiscs, filters and XDP with it
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(p.pins, ignore_errors=True)  # unlink on bpffs removes the pins


# ---------------------------------------------------------------- interfaces


def test_interfaces_and_ifindex_match_ip(pair):
    links = {i.name: i for i in netlink.interfaces(pair.a)}
    assert set(links) == {"lo", "a0"}
    assert links["a0"].kind == "veth" and links["a0"].up and links["a0"].mtu == 1500
    assert links["lo"].kind is None
    ip = {l["ifname"]: l["ifindex"] for l in json.loads(run("ip", "-n", pair.a, "-j", "link").stdout)}
    assert netlink.ifindex("a0", pair.a) == ip["a0"]
    assert netlink.ifindex(ip["a0"], pair.a) == ip["a0"]


def test_unknown_interface_and_namespace_are_not_found(pair):
    with pytest.raises(NotFound) as e:
        netlink.ifindex("nope0", pair.a)
    assert "interface 'nope0'" in e.value.op and e.value.cause == "no such interface"
    with pytest.raises(NotFound, match="no such interface"):
        tc.list_filters("b0", "ingress", netns=pair.a)  # b0 lives in the other namespace
    with pytest.raises(NotFound, match="no such interface"):
        netlink.xdp_query(9999, pair.a)
    ghost = pair.a + "x"
    with pytest.raises(NotFound, match="no such network namespace") as e:
        tc.ensure_clsact("a0", netns=ghost)
    assert "clsact" in e.value.op
    assert not netns.exists(ghost)  # looking must not create it (pyroute2's netns= would)


def test_current_namespace_is_the_default(pair):
    # netns=None acts where the calling thread is: enter the test namespace instead of touching the host
    with netns.entered(pair.a):
        assert tc.ensure_clsact("a0") is True
        f = tc.add_filter("a0", "ingress", pair.prog("selftest", "bg_empty_tc"), handle=1, priority=1)
        assert tc.list_filters("a0", "ingress") == [f]
        assert [i.name for i in netlink.interfaces()] == ["lo", "a0"]
    assert tc.list_filters("a0", "ingress", pair.a) == [f]


# ---------------------------------------------------------------- clsact


def test_clsact_ensure_reports_who_created_it(pair):
    assert tc.has_clsact("a0", pair.a) is False
    assert tc.ensure_clsact("a0", pair.a) is True
    assert "qdisc clsact" in run("tc", "-n", pair.a, "qdisc", "show", "dev", "a0").stdout
    assert tc.ensure_clsact("a0", pair.a) is False  # there already: not ours to remove
    assert tc.remove_clsact("a0", pair.a) is True
    assert tc.has_clsact("a0", pair.a) is False
    assert tc.remove_clsact("a0", pair.a) is False
    assert tc.list_filters("a0", "ingress", pair.a) == []


def test_clsact_made_by_someone_else_is_not_claimed(pair):
    run("tc", "-n", pair.b, "qdisc", "add", "dev", "b0", "clsact")
    assert tc.has_clsact("b0", pair.b) is True
    assert tc.ensure_clsact("b0", pair.b) is False


def test_ingress_qdisc_in_the_way_is_an_attach_error(pair):
    run("tc", "-n", pair.b, "qdisc", "add", "dev", "b0", "ingress")
    with pytest.raises(AttachError, match="'ingress' qdisc"):
        tc.ensure_clsact("b0", pair.b)
    assert tc.has_clsact("b0", pair.b) is False


# ---------------------------------------------------------------- bpf filters


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_filter_add_list_replace_delete(pair, direction):
    empty = pair.prog("selftest", "bg_empty_tc")
    mark = pair.prog("selftest", "bg_selftest_mark")
    empty_id, mark_id = pair.prog_id("selftest", "bg_empty_tc"), pair.prog_id("selftest", "bg_selftest_mark")
    tag = json.loads(run("bpftool", "-j", "prog", "show", "id", str(empty_id)).stdout)["tag"]
    tc.ensure_clsact("a0", pair.a)

    f = tc.add_filter("a0", direction, empty, handle=0x2A, priority=7, name="bgtest", netns=pair.a)
    assert (f.kind, f.handle, f.priority, f.protocol, f.direction) == ("bpf", 0x2A, 7, "all", direction)
    assert (f.prog_id, f.tag, f.name, f.prog_name, f.direct_action) == (empty_id, tag, "bgtest", "bg_empty_tc", True)
    assert f.ifindex == netlink.ifindex("a0", pair.a)
    shown = run("tc", "-n", pair.a, "filter", "show", "dev", "a0", direction).stdout
    assert "handle 0x2a bgtest direct-action" in shown and f"id {empty_id} " in shown
    other = "egress" if direction == "ingress" else "ingress"
    assert tc.list_filters("a0", other, pair.a) == []

    g = tc.add_filter("a0", direction, mark, handle=1, priority=3, protocol="ipv6", netns=pair.a)
    assert [x.priority for x in tc.list_filters("a0", direction, pair.a)] == [3, 7]  # kernel order
    assert g.protocol == "ipv6" and g.prog_id == mark_id

    with pytest.raises(AttachError) as e:
        tc.add_filter("a0", direction, mark, handle=0x2A, priority=7, netns=pair.a)
    assert e.value.errno == errno.EEXIST and f"attach tc {direction} filter on interface 'a0'" in str(e.value)

    r = tc.replace_filter("a0", direction, mark, handle=0x2A, priority=7, name="swapped", netns=pair.a)
    # the kernel keeps 15 characters of a program name (BPF_OBJ_NAME_LEN), as tc/bpftool show
    assert (r.prog_id, r.name, r.prog_name) == (mark_id, "swapped", "bg_selftest_mar")
    assert f"id {mark_id} " in run("tc", "-n", pair.a, "filter", "show", "dev", "a0", direction).stdout

    tc.delete_filter("a0", direction, handle=0x2A, priority=7, netns=pair.a)
    assert [x.handle for x in tc.list_filters("a0", direction, pair.a)] == [1]
    with pytest.raises(NotFound):
        tc.delete_filter("a0", direction, handle=0x2A, priority=7, netns=pair.a)
    tc.delete_filter("a0", direction, handle=1, priority=3, netns=pair.a)
    assert "bpf" not in run("tc", "-n", pair.a, "filter", "show", "dev", "a0", direction).stdout


def test_lists_a_filter_added_by_tc(pair):
    run("tc", "-n", pair.b, "qdisc", "add", "dev", "b0", "clsact")
    run("tc", "-n", pair.b, "filter", "add", "dev", "b0", "egress", "prio", "5", "handle", "3",
        "bpf", "da", "obj", str(OBJECTS / "dropper.o"), "sec", "tc")
    [f] = tc.list_filters("b0", "egress", pair.b)
    assert (f.handle, f.priority, f.name, f.prog_name, f.direct_action) == (3, 5, "dropper.o:[tc]", "bg_dropper", True)
    shown = run("tc", "-n", pair.b, "filter", "show", "dev", "b0", "egress").stdout
    assert f"id {f.prog_id} " in shown and f"tag {f.tag}" in shown


def test_filter_without_clsact_fails_typed(pair):
    with pytest.raises(AttachError) as e:  # EINVAL: no qdisc to hang it on
        tc.add_filter("a0", "ingress", pair.prog("selftest", "bg_empty_tc"), netns=pair.a)
    assert e.value.op.startswith("attach tc ingress filter")


def test_xdp_program_is_refused_as_tc_filter(pair):
    tc.ensure_clsact("a0", pair.a)
    with pytest.raises(AttachError):
        tc.add_filter("a0", "ingress", pair.prog("selftest", "bg_empty_xdp"), netns=pair.a)
    assert tc.list_filters("a0", "ingress", pair.a) == []


# ---------------------------------------------------------------- XDP


def _ip_link_xdp(ns: str, dev: str) -> tuple[int, int] | None:
    """(IFLA_XDP_ATTACHED mode, prog id) as `ip -d link` reports them, None when nothing is attached."""
    xdp = json.loads(run("ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev).stdout)[0].get("xdp")
    return (xdp["mode"], xdp["prog"]["id"]) if xdp else None


@pytest.mark.parametrize("mode,ip_mode", [("native", 1), ("generic", 2)])
def test_xdp_attach_query_detach(pair, mode, ip_mode):
    fd = pair.prog("selftest", "bg_empty_xdp")
    count = pair.prog("selftest", "bg_selftest_xdp_count")
    prog_id, count_id = pair.prog_id("selftest", "bg_empty_xdp"), pair.prog_id("selftest", "bg_selftest_xdp_count")
    assert netlink.xdp_query("b0", pair.b).attached is False

    s = netlink.xdp_attach("b0", fd, mode=mode, netns=pair.b)
    assert (s.mode, s.prog_id, s.ids()) == (mode, prog_id, {mode: prog_id})
    assert netlink.xdp_query("b0", pair.b) == s
    assert _ip_link_xdp(pair.b, "b0") == (ip_mode, prog_id)

    with pytest.raises(AttachError) as e:  # IF_NOEXIST by default
        netlink.xdp_attach("b0", count, mode=mode, netns=pair.b)
    assert e.value.errno == errno.EBUSY
    other = "generic" if mode == "native" else "native"
    with pytest.raises(AttachError, match="XDP"):  # the kernel allows one of native/generic at a time
        netlink.xdp_attach("b0", count, mode=other, replace=True, netns=pair.b)

    assert netlink.xdp_attach("b0", count, mode=mode, replace=True, netns=pair.b).prog_id == count_id
    with pytest.raises(AttachError):  # expected program is no longer the attached one
        netlink.xdp_attach("b0", fd, mode=mode, expected_prog_fd=fd, netns=pair.b)
    assert netlink.xdp_attach("b0", fd, mode=mode, expected_prog_fd=count, netns=pair.b).prog_id == prog_id

    assert netlink.xdp_detach("b0", netns=pair.b) is True
    assert netlink.xdp_query("b0", pair.b).mode is None
    assert _ip_link_xdp(pair.b, "b0") is None
    assert netlink.xdp_detach("b0", netns=pair.b) is False


def test_xdp_auto_mode_picks_native_on_veth(pair):
    s = netlink.xdp_attach("a0", pair.prog("selftest", "bg_empty_xdp"), netns=pair.a)
    assert s.mode == "native"
    assert netlink.xdp_detach("a0", mode="native", netns=pair.a) is True


def test_xdp_bad_mode_and_wrong_program_type(pair):
    with pytest.raises(AttachError, match="unknown XDP mode"):
        netlink.xdp_attach("a0", pair.prog("selftest", "bg_empty_xdp"), mode="turbo", netns=pair.a)
    with pytest.raises(AttachError):  # a TC program is not an XDP program
        netlink.xdp_attach("a0", pair.prog("selftest", "bg_empty_tc"), mode="generic", netns=pair.a)
    assert netlink.xdp_query("a0", pair.a).attached is False


# ---------------------------------------------------------------- real traffic


def _listen(ns: str, addr: str, port: int) -> socket.socket:
    with netns.entered(ns):  # a socket stays in the namespace it was made in
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)  # the kernel completes handshakes into the backlog: no accept loop needed
    return s


def _connects(ns: str, addr: str, port: int, timeout: float = 1.0) -> bool:
    """One TCP connect from `ns`, bounded by `timeout`. False when the SYN is dropped (timeout)."""
    with netns.entered(ns):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(timeout)
    try:
        c.connect((addr, port))
        return True
    except (socket.timeout, ConnectionRefusedError):
        return False
    finally:
        c.close()


def _block(pair: Pair, port: int) -> None:
    key = [str(b) for b in port.to_bytes(2, "little") + b"\0\0"]  # struct bg_port_key, host order
    run("bpftool", "map", "update", "pinned", f"{pair.pins}/dropper_maps/drop_ports",
        "key", *key, "value", *(["0"] * 16))


def _blocked_packets(pair: Pair, port: int) -> int:
    key = [str(b) for b in port.to_bytes(2, "little") + b"\0\0"]
    out = json.loads(run("bpftool", "-j", "map", "lookup", "pinned", f"{pair.pins}/dropper_maps/drop_ports",
                         "key", *key).stdout)
    return sum(v["value"]["packets"] for v in out["formatted"]["values"])


@pytest.mark.parametrize("where", ["b0-ingress", "a0-egress"])
def test_gate_filter_drops_tcp_to_a_blocked_port(pair, where):
    dev, direction = where.split("-")
    ns = pair.b if dev == "b0" else pair.a
    servers = [_listen(pair.b, pair.addr_b, p) for p in (80, 8080)]
    try:
        gate = pair.prog("dropper", "bg_dropper")
        assert _connects(pair.a, pair.addr_b, 80)  # sanity: the path works before any filter
        assert tc.ensure_clsact(dev, ns) is True
        f = tc.add_filter(dev, direction, gate, handle=1, priority=1, name="bg_gate", netns=ns)
        assert f.prog_name == "bg_dropper"
        assert _connects(pair.a, pair.addr_b, 80)  # attached, but the map is empty

        _block(pair, 80)
        assert not _connects(pair.a, pair.addr_b, 80)
        assert _connects(pair.a, pair.addr_b, 8080)  # only the blocked port
        assert _blocked_packets(pair, 80) >= 1  # the drop was the gate's, counted in its map

        tc.delete_filter(dev, direction, handle=1, priority=1, netns=ns)
        assert _connects(pair.a, pair.addr_b, 80)  # filter gone, map still says 80: traffic flows
        assert tc.remove_clsact(dev, ns) is True
    finally:
        for s in servers:
            s.close()
