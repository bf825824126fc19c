"""Every attach mode, in a throwaway namespace: status lists it (prog id, name, hook, ours), detach removes
filters, links, pins and a clsact qdisc only if bpfgate created it."""

import json
import os
import subprocess
import sys
import uuid

import pytest

from bpfgate import attach, status
from bpfgate.errors import NotFound
from bpfgate.kernel import tc
from bpfgate.kernel.objects import BpfObject
from bpfgate.sandbox.names import netns_name, new_tag
from features import require  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check)


@pytest.fixture
def ns():
    name = netns_name(new_tag(), "at")   # sandbox-style: the leak check tells other runs' records apart
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        sh("ip", "-n", name, "link", "set", "va", "up")
        sh("ip", "-n", name, "link", "set", "vb", "up")
        yield name
    finally:
        attach.detach_matching(netns_name=name)
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="module")
def progs():
    with BpfObject.open("selftest") as obj:
        obj.load()
        yield obj


def ours(ns_name, hook=None):
    return [e for e in status.collect([ns_name], cgroups=False) if e.bpfgate and (hook is None or e.hook == hook)]


@pytest.mark.parametrize("method", ["tc", "libbpf"])
@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_tc_attach_listed_and_detached(ns, progs, method, direction):
    prog = progs.program("bg_empty_tc")
    att = attach.attach_tc(prog, "va", direction, netns_name=ns, method=method, owner="test")
    shown = sh("ip", "netns", "exec", ns, "tc", "filter", "show", "dev", "va", direction).stdout
    assert f"id {att.prog_id}" in shown and "direct-action" in shown
    [e] = ours(ns, f"tc-{direction}")
    assert (e.prog_id, e.target, e.owner) == (att.prog_id, "va", "test")
    assert e.details["priority"] == attach.DEFAULT_PRIORITY and e.details["direct_action"]
    assert e.prog_name.startswith("bg_") and len(e.tag) == 16
    removed = attach.detach_matching(netns_name=ns)
    assert any("clsact" in r for r in removed)
    assert not ours(ns)
    assert "clsact" not in sh("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", "va").stdout


def test_preexisting_clsact_is_left_alone(ns, progs):
    sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "va", "clsact")
    attach.attach_tc(progs.program("bg_empty_tc"), "va", "ingress", netns_name=ns)
    attach.attach_tc(progs.program("bg_empty_tc"), "va", "egress", netns_name=ns)
    attach.detach_matching(netns_name=ns)
    assert not tc.list_filters("va", "ingress", ns)
    assert tc.has_clsact("va", ns)


def test_clsact_goes_with_the_last_of_our_filters(ns, progs):
    attach.attach_tc(progs.program("bg_empty_tc"), "va", "ingress", netns_name=ns)  # creates clsact
    attach.attach_tc(progs.program("bg_empty_tc"), "va", "egress", netns_name=ns)
    attach.detach_matching(netns_name=ns, hook="tc-ingress")
    assert tc.has_clsact("va", ns)  # egress filter still there
    attach.detach_matching(netns_name=ns, hook="tc-egress")
    assert not tc.has_clsact("va", ns)


def test_reattach_replaces_in_place(ns, progs):
    a1 = attach.attach_tc(progs.program("bg_empty_tc"), "va", "ingress", netns_name=ns)
    a2 = attach.attach_tc(progs.program("bg_selftest_mark"), "va", "ingress", netns_name=ns)
    filters = tc.list_filters("va", "ingress", ns)
    assert [f.prog_id for f in filters] == [a2.prog_id] != [a1.prog_id]


@pytest.mark.parametrize("direction", ["ingress", "egress"])
def test_tcx_link_pinned_listed_detached(ns, progs, direction):
    require("tcx")
    att = attach.attach_tc(progs.program("bg_empty_tc"), "va", direction, netns_name=ns, method="tcx")
    assert att.pins and os.path.exists(att.pins[0])
    [e] = ours(ns, f"tcx-{direction}")
    assert e.prog_id == att.prog_id
    attach.detach(att)
    assert not os.path.exists(att.pins[0])
    assert not ours(ns)


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_modes(ns, progs, mode):
    att = attach.attach_xdp(progs.program("bg_empty_xdp"), "va", mode=mode, netns_name=ns)
    [e] = ours(ns, "xdp")
    assert e.prog_id == att.prog_id
    assert e.details["mode"] == mode
    attach.detach(att)
    assert not ours(ns)


def test_xdp_link(ns, progs):
    att = attach.attach_xdp(progs.program("bg_empty_xdp"), "va", netns_name=ns, link=True)
    [e] = ours(ns, "xdp")
    assert e.prog_id == att.prog_id
    attach.detach(att)
    assert not ours(ns)


def test_unknown_interface_and_namespace(progs):
    with pytest.raises(NotFound):
        attach.attach_tc(progs.program("bg_empty_tc"), "nosuchdev0", "ingress")
    with pytest.raises(NotFound):
        attach.attach_tc(progs.program("bg_empty_tc"), "va", "ingress", netns_name="bg-no-such-ns")


def test_cli_status_and_detach(ns, progs):
    attach.attach_tc(progs.program("bg_empty_tc"), "va", "ingress", netns_name=ns)
    attach.attach_xdp(progs.program("bg_empty_xdp"), "vb", mode="generic", netns_name=ns)
    out = sh(sys.executable, "-m", "bpfgate", "status", "--netns", ns, "--json", "--no-cgroups").stdout
    hooks = {(e["target"], e["hook"]) for e in json.loads(out)["attachments"] if e["bpfgate"]}
    assert hooks == {("va", "tc-ingress"), ("vb", "xdp")}
    r = sh(sys.executable, "-m", "bpfgate", "detach", "--netns", ns, "--json")
    assert len(json.loads(r.stdout)["removed"]) >= 3  # filter, clsact, xdp
    assert not ours(ns)


def test_namespace_deleted_with_a_program_attached_is_shown_stale_and_detached(ns, progs):
    attach.attach_tc(progs.program("bg_empty_tc"), "va", "ingress", netns_name=ns)
    sh("ip", "netns", "del", ns)

    def mine():
        out = sh(sys.executable, "-m", "bpfgate", "status", "--all-netns", "--json", "--no-cgroups").stdout
        return [e for e in json.loads(out)["attachments"] if e["netns"] == ns]
    stale = mine()
    assert [(e["target"], e["hook"], e["bpfgate"]) for e in stale] == [("va", "tc-ingress", True)]
    out = sh(sys.executable, "-m", "bpfgate", "status", "--netns", ns, "--json", "--no-cgroups").stdout
    assert [e["netns"] for e in json.loads(out)["attachments"] if "stale" in e["details"]] == [ns]
    assert "not attached in the kernel" in stale[0]["details"]["stale"]
    r = sh(sys.executable, "-m", "bpfgate", "detach", "--all-netns", "--json")
    assert any(ns in line for line in json.loads(r.stdout)["removed"]), r.stdout
    assert mine() == [] and attach.find(netns_name=ns) == []


def test_cli_status_with_stats_counts_runs(ns, progs):
    import socket
    import threading

    from bpfgate.kernel import netns

    attach.attach_tc(progs.program("bg_empty_tc"), "va", "egress", netns_name=ns)
    sh("ip", "-n", ns, "addr", "add", "198.18.7.1/24", "dev", "va")
    sh("ip", "-n", ns, "neigh", "add", "198.18.7.2", "lladdr", "02:00:00:00:00:02", "dev", "va")

    def send():  # 50 datagrams out of va (to the peer subnet inside this namespace), while stats are on
        with netns.entered(ns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(50):
                s.sendto(b"x", ("198.18.7.2", 9))
                threading.Event().wait(0.01)

    t = threading.Timer(0.3, send)
    t.start()
    try:
        entries = status.collect([ns], cgroups=False, stats_window=1.5)
    finally:
        t.join(10)
    [e] = [e for e in entries if e.hook == "tc-egress"]
    assert e.run_cnt >= 50 and e.run_time_ns > 0


def test_cli_errors_are_one_line(ns):
    r = sh(sys.executable, "-m", "bpfgate", "status", "--netns", "bg-no-such-ns", check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "no such network namespace" in r.stderr


def test_cgroup_attachment_listed():
    from bpfgate.kernel import links

    root = status.cgroup2_mount()
    assert root, "no cgroup v2 mount"
    cg = os.path.join(root, f"bgtest-{os.getpid()}-{uuid.uuid4().hex[:4]}")
    os.mkdir(cg)
    try:
        with BpfObject.open("selftest") as obj:
            obj.load()
            with links.attach_cgroup(obj, "bg_selftest_cgskb", cg):
                found = [e for e in status.cgroup_entries(root) if e.target == cg]
                assert [e.hook for e in found] == ["cgroup_inet_ingress"]
                e = status._fill(found[0], {})
                assert e.bpfgate and e.prog_name.startswith("bg_selftest_cg")
            assert not [e for e in status.cgroup_entries(root) if e.target == cg]
    finally:
        os.rmdir(cg)
