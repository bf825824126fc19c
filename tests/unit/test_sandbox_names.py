"""Sandbox names: short enough for interfaces, traceable to their owner PID, unique per run (no root)."""

import os

import pytest

from bpfgate.sandbox import cleanup, names
from bpfgate.sandbox.topology import Sandbox

PID_MAX = 4194304  # kernel's upper bound for /proc/sys/kernel/pid_max


@pytest.mark.parametrize("prefix", ["b", "bg", "bgx"])
@pytest.mark.parametrize("pid", [1, 4242, PID_MAX])
def test_names_fit_in_ifnamsiz_and_parse_back(prefix, pid):
    tag = names.new_tag(prefix, pid)
    for n in (1, 99, 999):
        ifname = names.root_ifname(tag, n)
        assert len(ifname) <= names.IFNAMSIZ
        assert names.owner_of(ifname, prefix) == (tag, pid)
    ns = names.netns_name(tag, "client")
    assert names.owner_of(ns, prefix) == (tag, pid)


def test_too_long_interface_name_is_refused():
    with pytest.raises(ValueError):
        names.root_ifname(names.new_tag("bgx", PID_MAX), 1000)
    with pytest.raises(ValueError):
        names.check_ifname("x" * 16)


@pytest.mark.parametrize("prefix", ["", "BG", "bgxy", "b-g", "b1"])
def test_bad_prefix_is_refused(prefix):
    with pytest.raises(ValueError):
        names.new_tag(prefix)


@pytest.mark.parametrize("host", ["", "Client", "1host", "a-b", "x" * 33])
def test_bad_host_name_is_refused(host):
    with pytest.raises(ValueError):
        names.netns_name("bg1-abc", host)


def test_foreign_names_have_no_owner():
    for name in ("eth0", "lo", "docker0", "bgx", "bg12", "bg12-ab", "xbg12-abc", "veth1234"):
        assert names.owner_of(name) is None
    assert names.owner_of("bg12-abc", "bg") is not None
    assert names.owner_of("bg12-abc", "bx") is None


def test_tags_of_different_pids_differ():
    assert len({names.new_tag("bg", pid).split("-")[0] for pid in range(1, 2000)}) == 1999


def test_liveness_tells_pid_reuse_apart():
    me = os.getpid()
    start = names.proc_start_time(me)
    assert names.is_alive(me) and names.is_alive(me, start)
    assert not names.is_alive(me, start + 1)


def test_sandbox_retries_a_clashing_tag(tmp_path, monkeypatch):
    # the marker file is claimed with O_EXCL: two sandboxes of one process never share a tag
    monkeypatch.setattr(cleanup, "MARKER_DIR", str(tmp_path))
    tags = iter(["bg1-aaa", "bg1-aaa", "bg1-bbb"])
    monkeypatch.setattr(names, "new_tag", lambda prefix: next(tags))
    first, second = Sandbox(), Sandbox()
    try:
        assert (first.tag, second.tag) == ("bg1-aaa", "bg1-bbb")
        assert sorted(os.listdir(tmp_path)) == ["bg1-aaa.json", "bg1-bbb.json"]
    finally:
        first.close()
        second.close()
    assert os.listdir(tmp_path) == []
