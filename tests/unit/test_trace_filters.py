"""trace filters: parsing (clear errors for bad values) and matching on the JSON form (no root)."""

from __future__ import annotations

import os

import pytest

from bpfgate.errors import BpfgateError
from bpfgate.trace.filters import Filter, cgroup_id

EV4 = {"pid": 10, "cgroup_id": 77, "laddr": "198.18.0.1", "lport": 40000, "raddr": "198.18.0.2", "rport": 80}
EV6 = {"pid": 11, "laddr": "fd00::1", "lport": 40001, "raddr": "fd00:0:0:2::2", "rport": 443}
DROP = {"pid": None, "saddr": "198.18.0.1", "sport": 1, "daddr": "198.18.0.2", "dport": 8082}


def test_empty_matches_everything():
    f = Filter.parse()
    assert f.empty and all(f.match(e) for e in (EV4, EV6, DROP, {}))


@pytest.mark.parametrize("kw, opt", [({"ports": ["0"]}, "--port"), ({"ports": ["70000"]}, "--port"),
                                     ({"ports": ["http"]}, "--port"), ({"pids": ["-1"]}, "--pid"),
                                     ({"addrs": ["198.18.0.300"]}, "--addr"), ({"addrs": ["example.com"]}, "--addr")])
def test_bad_values_name_the_option(kw, opt):
    with pytest.raises(BpfgateError) as e:
        Filter.parse(**kw)
    assert opt in str(e.value)


def test_ports_match_either_end_and_drops():
    f = Filter.parse(ports=["80", "8082"])
    assert f.match(EV4) and not f.match(EV6) and f.match(DROP)


def test_addresses_and_prefixes_by_family():
    assert Filter.parse(addrs=["198.18.0.0/15"]).match(EV4)
    assert not Filter.parse(addrs=["198.18.0.0/15"]).match(EV6)
    assert Filter.parse(addrs=["fd00:0:0:2::/64"]).match(EV6)
    assert Filter.parse(addrs=["198.18.0.2"]).match(DROP)
    assert not Filter.parse(addrs=["198.18.0.3"]).match(EV4)


def test_kinds_are_anded_values_ored():
    assert Filter.parse(pids=["10", "11"]).match(EV6)
    assert not Filter.parse(pids=["10"], ports=["443"]).match(EV6)
    assert not Filter.parse(pids=["10"]).match(DROP)  # unknown owner does not match a pid filter


def test_cgroup_by_id_path_and_missing(tmp_path):
    assert Filter.parse(cgroups=["77"]).match(EV4) and not Filter.parse(cgroups=["78"]).match(EV4)
    d = tmp_path / "grp"
    d.mkdir()
    assert cgroup_id(str(d), mount=str(tmp_path)) == os.stat(d).st_ino
    assert cgroup_id("grp", mount=str(tmp_path)) == os.stat(d).st_ino  # relative to the cgroup2 mount
    with pytest.raises(BpfgateError) as e:
        cgroup_id("nope", mount=str(tmp_path))
    assert "--cgroup" in str(e.value)


def test_describe_round_trip():
    f = Filter.parse(pids=[3], ports=[80], addrs=["198.18.0.0/24"])
    assert f.describe() == {"pid": [3], "port": [80], "addr": ["198.18.0.0/24"], "cgroup": [], "netns": []}


def test_event_selection_mask():
    from bpfgate.trace.tcp import EVENTS, kinds_mask

    assert kinds_mask(["connect"]) == 1 << 1 and kinds_mask(["close", "reset_tx"]) == (1 << 3) | (1 << 7)
    assert kinds_mask(EVENTS) == sum(1 << n for n in range(1, 8))
    for bad in (["conect"], []):
        with pytest.raises(BpfgateError) as e:
            kinds_mask(bad)
        assert "--events" in str(e.value)


def test_netns_by_name_path_inode():
    own = os.stat("/proc/self/ns/net").st_ino
    f = Filter.parse(netns=["/proc/self/ns/net", "12345"])
    assert f.netns == {own, 12345} and not f.empty
    assert f.match({"netns": own}) and not f.match({"netns": 1}) and not f.match({})
    with pytest.raises(BpfgateError) as e:
        Filter.parse(netns=["no-such-namespace-bg"])
    assert "--netns" in str(e.value)
