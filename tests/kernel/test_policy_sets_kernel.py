"""Named sets on real interfaces with real traffic: a rule naming a set drops the packets of its elements, and
`set add`/`set del` (policyctl, as the CLI calls it) change that live in every engine running the set, for
IPv4 and IPv6, with no reload; the journal carries the edit to the next process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bpfgate import policyctl
from bpfgate.engine import Engine
from bpfgate.errors import NotFound, PolicyError
from bpfgate.policy.model import HookPolicy

pytestmark = pytest.mark.kernel
T = 1.5


@pytest.fixture
def net(sandbox, engines):
    client, server, other = sandbox.host("client"), sandbox.host("server"), sandbox.host("other")
    link, link2 = sandbox.link(client, server), sandbox.link(other, server)
    n = type("Net", (), {})()
    n.client, n.server, n.other = client, server, other
    n.dev, n.dev2 = link.end(server).name, link2.end(server).name
    n.ip4, n.ip6, n.oip4, n.oip6 = link.end(server).ip4, link.end(server).ip6, link2.end(server).ip4, \
        link2.end(server).ip6
    n.cip4, n.cip6 = link.end(client).ip4, link.end(client).ip6
    n.xip4, n.xip6 = link2.end(other).ip4, link2.end(other).ip6
    n.netns = server.netns
    policy = HookPolicy.model_validate({
        "default": "allow",
        "sets": {"block": {"type": "addr", "elements": [n.xip4, n.xip6, "198.19.250.0/24"]},
                 "web": {"type": "port", "elements": [80]}},
        "rules": [{"name": "blocked", "src": "@block", "protocol": "tcp", "dst_port": "@web", "action": "drop"}]})
    n.engines = [engines(dev, "tc-ingress", policy, netns_name=n.netns) for dev in (n.dev, n.dev2)]
    server.http_server(80)
    yield n
    from bpfgate.policyctl import pending

    pending.forget(n.netns)   # the namespace's control-plane lock that set add/del took


def reach(n, host, v6: bool) -> bool:
    ip = (n.ip6 if host is n.client else n.oip6) if v6 else (n.ip4 if host is n.client else n.oip4)
    return host.http_get(f"http://[{ip}]:80/" if v6 else f"http://{ip}:80/", T).ok


def test_set_add_and_del_change_the_verdict_live_both_families(net):
    n = net
    prog_ids = [e.prog_id for e in n.engines]
    assert not reach(n, n.other, False) and not reach(n, n.other, True)   # in the set: dropped
    assert reach(n, n.client, False) and reach(n, n.client, True)         # outside it: passes

    where = policyctl.set_add("block", [n.cip4, n.cip6], netns=n.netns)
    assert sorted(where) == sorted(f"{d} tc-ingress" for d in (n.dev, n.dev2))
    assert not reach(n, n.client, False) and not reach(n, n.client, True)
    policyctl.set_delete("block", [n.xip4, n.xip6], netns=n.netns)
    assert reach(n, n.other, False) and reach(n, n.other, True)
    policyctl.set_delete("block", [n.cip4], netns=n.netns)
    assert reach(n, n.client, False) and not reach(n, n.client, True)
    policyctl.set_delete("block", [n.cip6], netns=n.netns)
    assert reach(n, n.client, True)
    assert [e.prog_id for e in n.engines] == prog_ids                     # no reload

    # a port set's element: the rules naming it rewritten live
    policyctl.set_add("block", [n.cip4], netns=n.netns)
    policyctl.set_delete("web", ["80"], netns=n.netns)
    assert reach(n, n.client, False)
    policyctl.set_add("web", ["80"], netns=n.netns)
    assert not reach(n, n.client, False)

    # the journal: another process reads the edited sets; export writes them back
    out = subprocess.run([sys.executable, "-m", "bpfgate", "set", "list", "block", "--json", "--netns", n.netns],
                         capture_output=True, text=True, check=True).stdout
    (row,) = json.loads(out)
    assert row["elements"] == ["198.19.250.0/24", n.cip4] and len(row["targets"]) == 2
    text = policyctl.export(n.dev, netns=n.netns)
    assert "sets:" in text and n.cip4 in text and "'@block'" in text


def test_bad_set_edits_change_nothing(net):
    n = net
    before = policyctl.sets(netns=n.netns)
    for name, elements, err, reason in [
        ("nope", ["198.18.0.1"], NotFound, "no running policy has a set of that name"),
        ("block", ["80"], PolicyError, "80 is a port"),
        ("block", ["198.19.251.0/23"], PolicyError, "host bits set"),
        ("block", [n.cip4, n.xip4], PolicyError, "is already in the set"),
        ("web", ["fd00::1"], PolicyError, "is an address"),
    ]:
        with pytest.raises(err, match=reason):
            policyctl.set_add(name, elements, netns=n.netns)
    with pytest.raises(PolicyError, match="not in the set"):
        policyctl.set_delete("block", [n.cip4], netns=n.netns)
    assert policyctl.sets(netns=n.netns) == before
    assert reach(n, n.client, False) and not reach(n, n.other, False)


def test_a_set_edit_is_journaled_and_survives_reopen_and_swap(net):
    n = net
    policyctl.set_add("block", [n.cip4], netns=n.netns)
    with Engine.open(n.dev, "tc-ingress", n.netns) as eng:
        assert n.cip4 in [str(e.network_address) for e in eng.sets()["block"].elements]
        hp = eng.policy()
        eng.swap(hp)   # a whole-policy swap keeps the live-added element (it is part of the policy now)
    assert not reach(n, n.client, False)
    policyctl.set_delete("block", [n.cip4], netns=n.netns)
    assert reach(n, n.client, False)


def test_a_set_outgrowing_its_table_grows_the_maps(sandbox, engines):
    """bg_pfx preallocated tight at attach: the set add that does not fit swaps the policy with the edited set
    into maps sized for it (no moment without a policy); the element's verdict holds, and more edits go on
    live in the grown maps."""
    from bpfgate.policy.compile import compile_hook
    from bpfgate.policy.hooks import Hook

    client, server = sandbox.host("client"), sandbox.host("server")
    link = sandbox.link(client, server)
    dev, ip4, cip4 = link.end(server).name, link.end(server).ip4, link.end(client).ip4
    policy = HookPolicy.model_validate({
        "default": "allow", "sets": {"block": {"type": "addr", "elements": ["198.19.250.0/24"]}},
        "rules": [{"name": "blocked", "src": "@block", "protocol": "tcp", "dst_port": 80, "action": "drop"}]})
    need = compile_hook(policy, Hook.TC_INGRESS).classes.pfx_count()
    first = engines(dev, "tc-ingress", policy, netns_name=server.netns, prealloc={"bg_pfx": need + 2})
    server.http_server(80)
    try:
        assert first.maps["bg_pfx"].max_entries == need + 2
        prog0 = first.prog_id
        assert client.http_get(f"http://{ip4}:80/", T).ok
        extra = [f"198.19.{i}.{j}" for i in range(1, 5) for j in range(1, 9)]   # far more entries than room
        assert policyctl.set_add("block", extra + [cip4], netns=server.netns)
        with Engine.open(dev, "tc-ingress", server.netns) as eng:
            grown = eng.maps["bg_pfx"].max_entries
            assert grown > need + 2 and eng.prog_id != prog0
            assert len(eng.sets()["block"].elements) == 1 + len(extra) + 1
        assert not client.http_get(f"http://{ip4}:80/", T).ok
        policyctl.set_delete("block", [cip4], netns=server.netns)   # live again, in the grown maps
        assert client.http_get(f"http://{ip4}:80/", T).ok
        with Engine.open(dev, "tc-ingress", server.netns) as eng:
            assert eng.maps["bg_pfx"].max_entries == grown
    finally:
        from bpfgate.policyctl import pending

        pending.forget(server.netns)
