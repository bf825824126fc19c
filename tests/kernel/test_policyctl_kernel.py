"""The policy control plane on the real engine: sandbox interfaces, real traffic, counters read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from clirun import run_entry

from bpfgate import policyctl
from bpfgate.engine.listing import saved_listing
from bpfgate.engine.state import StateStore
from bpfgate.errors import BpfgateError, NotFound, PolicyError
from bpfgate.policy.model import Hook, Policy
from bpfgate.policy.ruledata import rule_from_data
from bpfgate.policyctl.engine_backend import EngineBackend
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
T = 1.0     # a request expected to be dropped: no answer within T
T_OK = 3.0  # a request expected to be served (slow machines)


@pytest.fixture
def net(sandbox, policies_removed):
    """client -- server, and a second client on another server interface; policies removed at the end."""
    client, server, other = sandbox.host("client"), sandbox.host("server"), sandbox.host("other")
    link, link2 = sandbox.link(client, server), sandbox.link(other, server)
    for port in (80, 8080):
        server.http_server(port)
    n = type("Net", (), {})()
    n.client, n.server, n.other, n.link, n.link2 = client, server, other, link, link2
    n.dev, n.dev2, n.ns = link.end(server).name, link2.end(server).name, server.netns
    n.ip4, n.ip6 = link.end(server).ip4, link.end(server).ip6
    policies_removed(n.ns)
    return n


def _get(n, port, v6, timeout):
    url = f"http://[{n.ip6}]:{port}/" if v6 else f"http://{n.ip4}:{port}/"
    return n.client.http_get(url, timeout)


def served(n, port, v6=False):
    return _get(n, port, v6, T_OK).ok


def dropped(n, port, v6=False):
    """No answer at all within T (a refused or failed request would not be a drop)."""
    return _get(n, port, v6, T).status is None


def pol(devs, rules, default="allow", hook="tc-ingress"):
    return Policy.model_validate({"interfaces": devs, "hooks": {hook: {"default": default, "rules": rules}}})


WEB = {"name": "web", "protocol": "tcp", "dst_port": 80, "action": "drop"}
ALT = {"name": "alt", "protocol": "tcp", "dst_port": 8080}


def counts(n, dev=None):
    return {r.name: r.packets for r in policyctl.rules(dev or n.dev, netns=n.ns)}


def settled_counts(n, dev=None, quiet: float = 0.3):
    """The counters once no packet has moved them for `quiet` seconds: a connection's last packets
    (FIN, final ACK) and IPv6 neighbour traffic arrive after the request that made them returned."""
    now = counts(n, dev)
    for _ in range(50):
        time.sleep(quiet)
        later = counts(n, dev)
        if later == now:
            return now
        now = later
    return now


def test_apply_reapply_and_one_rule_change(net):
    n = net
    assert served(n, 80)
    r = policyctl.apply(pol([n.dev], [WEB, ALT]), netns=n.ns)
    assert r.applied and [h.action for h in r.plan.hooks] == ["attach"]
    assert dropped(n, 80) and dropped(n, 80, v6=True) and served(n, 8080) and served(n, 8080, v6=True)
    c1 = settled_counts(n)
    assert c1["web"] > 0 and c1["alt"] > 0
    assert policyctl.running(n.ns) == {(n.dev, Hook.TC_INGRESS): pol([n.dev], [WEB, ALT]).hooks[Hook.TC_INGRESS]}

    r = policyctl.apply(pol([n.dev], [WEB, ALT]), netns=n.ns)        # idempotent
    assert not r.changed and not r.applied
    after = counts(n)   # no counter reset; only stray neighbour traffic may have met the default since
    assert (after["web"], after["alt"]) == (c1["web"], c1["alt"]) and after["(default)"] >= c1["(default)"]

    r = policyctl.apply(pol([n.dev], [dict(WEB, dst_port=81), ALT]), netns=n.ns)   # one rule changes
    (h,) = r.plan.changes()
    assert h.action == "swap" and [(c.kind, c.name) for c in h.rules] == [("changed", "web")]
    c2 = counts(n)
    assert c2["alt"] >= c1["alt"], "the unchanged rule lost its counters in the swap"
    assert served(n, 80) and served(n, 8080)
    assert counts(n)["alt"] > c2["alt"]


def test_failed_apply_leaves_the_previous_policy_running(net):
    n = net
    policyctl.apply(pol([n.dev], [WEB]), netns=n.ns)
    before = policyctl.running(n.ns)
    # a redirect target that does not exist in the namespace: refused at compile, nothing touched
    bad = {"name": "mirror", "action": "redirect", "redirect": {"interface": "nosuchif0"}}
    with pytest.raises(PolicyError, match="no such interface"):
        policyctl.apply(pol([n.dev], [bad]), netns=n.ns)
    # the guard
    with pytest.raises(BpfgateError, match="established"):
        policyctl.apply(pol([n.dev], [ALT], default="deny"), netns=n.ns)
    # an interface that does not exist: refused before anything changes
    with pytest.raises(NotFound):
        policyctl.apply(pol([n.dev, "zz-missing0"], [ALT]), netns=n.ns)
    assert policyctl.running(n.ns) == before


def until(pred, timeout: float = scaled(30)) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_attach_takes_the_engine_loaded_while_the_policy_compiled(net, monkeypatch):
    """A fresh attach's engine is loaded (its programs verified) while the policy is checked and compiled, and
    the attach takes it: one load per interface, none after. A policy refused at compile, or a preload made
    otherwise than the attach loads (here: without conntrack), leaves nothing: its engine is closed."""
    import threading

    from bpfgate.engine import Engine

    loads, closed = [], []
    load, close = Engine.load.__func__, Engine.close

    def counted_load(cls, *a, **kw):
        eng = load(cls, *a, **kw)
        loads.append((threading.current_thread().name, eng))
        return eng

    def counted_close(self):
        closed.append(self)
        return close(self)

    monkeypatch.setattr(Engine, "load", classmethod(counted_load))
    monkeypatch.setattr(Engine, "close", counted_close)
    n = net
    bad = {"name": "mirror", "action": "redirect", "redirect": {"interface": "nosuchif0"}}
    with pytest.raises(PolicyError, match="no such interface"):
        policyctl.apply(pol([n.dev], [bad]), netns=n.ns)
    assert until(lambda: loads and loads[0][1] in closed), "the refused policy's preloaded engine stayed open"
    assert [t for t, _e in loads] == ["bpfgate-preload"]
    assert policyctl.running(n.ns) == {}
    loads.clear()
    policyctl.apply(pol([n.dev, n.dev2], [WEB, ALT]), netns=n.ns)
    assert [t for t, _e in loads] == ["bpfgate-preload"] * 2
    assert dropped(n, 80) and served(n, 8080) and counts(n)["web"] > 0
    policyctl.remove(netns=n.ns)
    loads.clear()
    pre = Engine.preload(n.dev, "tc-ingress", 1, netns_name=n.ns, ct=False)
    eng = Engine.attach(n.dev, "tc-ingress", pol([n.dev], [WEB]).hooks[Hook.TC_INGRESS], netns_name=n.ns,
                        preloaded=pre)
    try:
        assert until(lambda: len(loads) == 2)
        (preloaded,) = [e for t, e in loads if t == "bpfgate-preload"]
        assert eng is not preloaded and eng in [e for _t, e in loads]
        assert until(lambda: preloaded in closed)
        assert dropped(n, 80)
    finally:
        eng.detach()


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The name of the thread of every Engine.load made meanwhile."""
    import threading

    from bpfgate.engine import Engine

    made: list[str] = []
    load = Engine.load.__func__

    def counted_load(cls, *a, **kw):
        made.append(threading.current_thread().name)
        return load(cls, *a, **kw)

    monkeypatch.setattr(Engine, "load", classmethod(counted_load))
    return made


def test_a_large_sets_engine_is_preloaded_with_its_tables_sized(net, loads):
    """A few rules naming a large address set: the engine loaded while the policy compiles has its prefix
    table preallocated as the compiled policy needs it and its other tables at their smallest, so the attach
    takes it (one load, none after)."""
    from bpfgate.engine import Engine
    from bpfgate.engine.engine import HASH_MIN, PREALLOC_MIN

    n = net
    p = Policy.model_validate({
        "interfaces": [n.dev], "sets": {"big": {"type": "addr", "elements": [
            f"fd00:99::{i >> 16:x}:{i & 0xffff:x}" for i in range(PREALLOC_MIN)]}},
        "hooks": {"tc-ingress": {"rules": [{"name": "big", "src": "@big", "action": "drop"}, WEB, ALT]}}})
    policyctl.apply(p, netns=n.ns)
    try:
        assert loads == ["bpfgate-preload"]
        with Engine.open(n.dev, "tc-ingress", n.ns) as eng:
            assert eng.maps["bg_pfx"].max_entries == 3 * PREALLOC_MIN
            # the tables allocated per entry are sized for the policy too: their buckets take memory up front
            assert eng.maps["bg_cls"].max_entries == eng.maps["bg_cls_short"].max_entries == HASH_MIN
        assert dropped(n, 80) and served(n, 8080)
    finally:
        policyctl.remove(netns=n.ns)


@pytest.mark.parametrize("as_set", [False, True])
def test_a_rule_listing_many_addresses_loads_one_engine_sized_by_its_compile(net, loads, as_set, monkeypatch):
    """One rule listing more addresses than PREALLOC_MIN, an entry per address: its classifier table is
    preallocated from the compiled policy, so no engine is loaded ahead with tables of another size (it was,
    and then discarded: a second load in the attach). The same list compiled as a set (as a list that long
    is, where a set holds it) is one entry: its engine is the one loaded ahead while the policy compiles."""
    from bpfgate.engine import Engine
    from bpfgate.engine.engine import PREALLOC_MIN
    from bpfgate.policy import sets

    if not as_set:
        monkeypatch.setattr(sets, "INLINE_SET_MIN", 10**9)
    n = net
    listed = [f"fd00:98::{i >> 16:x}:{i & 0xffff:x}" for i in range(PREALLOC_MIN)]
    p = Policy.model_validate({"interfaces": [n.dev], "hooks": {"tc-ingress": {"rules": [
        {"name": "big", "src": listed, "action": "drop"}, WEB, ALT]}}})
    policyctl.apply(p, netns=n.ns)
    try:
        assert loads == ["bpfgate-preload"] if as_set else len(loads) == 1 and loads != ["bpfgate-preload"]
        if not as_set:
            with Engine.open(n.dev, "tc-ingress", n.ns) as eng:
                assert eng.maps["bg_cls_short"].max_entries >= 3 * PREALLOC_MIN   # preallocated for the policy
        assert dropped(n, 80) and served(n, 8080)
    finally:
        policyctl.remove(netns=n.ns)


def test_the_agents_backend_keeps_the_next_engine_verified(net):
    """Held engines (the agent): after an attach the backend loads the next such engine ahead, and an attach
    on another interface takes it (a new interface of a pattern waits for no verifier); closing the
    backend closes what it loaded ahead."""
    from bpfgate.engine import Engine

    n = net
    b = EngineBackend(hold=True)
    try:
        policyctl.apply(pol([n.dev], [WEB]), netns=n.ns, backend=b, start_watcher=False)
        spares = list(b._spares.values())
        assert len(spares) == 1 and spares[0].future.result(timeout=scaled(60)).program.id
        ready = spares[0].future.result().program.id
        policyctl.apply(pol([n.dev, n.dev2], [WEB]), netns=n.ns, backend=b, start_watcher=False)
        with Engine.open(n.dev2, "tc-ingress", n.ns) as eng:
            assert eng.prog_id == ready
        assert dropped(n, 80)
        (nxt,) = b._spares.values()
        assert nxt is not spares[0]
    finally:
        b.close()
        policyctl.remove(netns=n.ns)
    assert not b._spares and until(lambda: nxt.future.done() and nxt.future.result().obj is None)


def test_interface_gone_mid_apply_rolls_back_the_first(net):
    """The second interface disappears between planning and its attach (a real attach failure): the first
    interface, already swapped, is swapped back: its old policy drops again, with real traffic."""
    n = net
    policyctl.apply(pol([n.dev], [WEB]), netns=n.ns)
    before = policyctl.running(n.ns)

    class Vanishing(EngineBackend):
        def attach(self, dev, hook, netns, hp, mode, **kw):
            if dev == n.dev2:
                n.server.run(["ip", "link", "del", n.dev2], check=True)
            return super().attach(dev, hook, netns, hp, mode, **kw)

    with pytest.raises(policyctl.ApplyError, match="rolled back") as e:
        policyctl.apply(pol([n.dev, n.dev2], [ALT]), netns=n.ns, backend=Vanishing())
    assert isinstance(e.value.cause_error, NotFound) and not e.value.rollback_errors
    assert policyctl.running(n.ns) == before
    assert dropped(n, 80) and served(n, 8080)


def test_two_interfaces_and_detach_of_a_hook_left_out(net):
    n = net
    ip2 = n.link2.end(n.server).ip4
    policyctl.apply(pol([n.dev, n.dev2], [WEB]), netns=n.ns)
    assert dropped(n, 80) and n.other.http_get(f"http://{ip2}:80/", T).status is None
    egress_only = Policy.model_validate({"interfaces": [n.dev, n.dev2], "hooks": {"tc-egress": {"rules": [ALT]}}})
    r = policyctl.apply(egress_only, netns=n.ns)
    acts = sorted((h.dev, h.hook.value, h.action) for h in r.plan.changes())
    assert acts == sorted([(n.dev, "tc-ingress", "detach"), (n.dev2, "tc-ingress", "detach"),
                           (n.dev, "tc-egress", "attach"), (n.dev2, "tc-egress", "attach")])
    assert served(n, 80) and n.other.http_get(f"http://{ip2}:80/", T_OK).ok


def test_rule_add_delete_live(net):
    n = net
    policyctl.apply(pol([n.dev], [ALT, {"name": "est", "ct": ["established", "related"]}]), netns=n.ns)
    assert served(n, 80) and served(n, 8080)
    before = counts(n)["alt"]
    policyctl.add_rule(n.dev, "tc-ingress", WEB, before="alt", netns=n.ns)
    assert [r.name for r in policyctl.rules(n.dev, netns=n.ns)] == ["web", "alt", "est", "(default)"]
    assert dropped(n, 80) and dropped(n, 80, v6=True) and served(n, 8080)
    mid = counts(n)
    assert mid["web"] > 0 and mid["alt"] > before
    policyctl.add_rule(n.dev, "tc-ingress", {"name": "no-alt-v6", "src": str(n.link.a.net6), "protocol": "tcp",
                                             "dst_port": 8080, "action": "drop"}, position=0, netns=n.ns)
    assert dropped(n, 8080, v6=True) and served(n, 8080)
    policyctl.delete_rule(n.dev, "tc-ingress", "no-alt-v6", netns=n.ns)
    policyctl.delete_rule(n.dev, "tc-ingress", "web", netns=n.ns)
    assert served(n, 80) and served(n, 8080, v6=True)
    assert counts(n)["alt"] >= mid["alt"], "live edits of other rules reset a counter"
    text = policyctl.export(netns=n.ns)
    assert not policyctl.apply(policyctl.load_policies(text), netns=n.ns).changed


def test_saved_listing_follows_edits_swaps_and_counters(net):
    """`rules` keeps the rows it describes beside the saved state and reads them back while that state is
    the running one (the state itself not loaded): edits, swaps and counters still show as they happen."""
    n = net
    policyctl.apply(pol([n.dev], [WEB, ALT]), netns=n.ns)

    def listed():
        return [(r.name, r.action, r.match) for r in policyctl.rules(n.dev, netns=n.ns)]

    rows = [("web", "drop", "protocol=tcp dst_port=80"), ("alt", "pass", "protocol=tcp dst_port=8080"),
            ("(default)", "allow", "no rule matched")]
    assert saved_listing(n.dev, Hook.TC_INGRESS, n.ns)[0].rows() == [(*r, {}, None, None) for r in rows[:2]]   # by the attach
    assert listed() == rows
    assert listed() == rows   # read back
    assert dropped(n, 80) and served(n, 8080)
    assert settled_counts(n)["web"] > 0 and counts(n)["alt"] > 0   # counters live, not saved ones
    policyctl.add_rule(n.dev, "tc-ingress", {"name": "v6", "src": str(n.link.a.net6), "action": "drop"},
                       position=1, netns=n.ns)
    found = saved_listing(n.dev, Hook.TC_INGRESS, n.ns)   # the edit replayed from the journal onto the rows
    assert found is not None and found[0].names == ["web", "v6", "alt"]
    assert listed() == [rows[0], ("v6", "drop", f"src={n.link.a.net6}"), *rows[1:]]
    assert dropped(n, 8080, v6=True) and settled_counts(n)["v6"] > 0   # the new rule's counter: its slot's
    policyctl.delete_rule(n.dev, "tc-ingress", "web", netns=n.ns)
    assert saved_listing(n.dev, Hook.TC_INGRESS, n.ns)[0].names == ["v6", "alt"]
    assert [r[0] for r in listed()] == ["v6", "alt", "(default)"]
    # a journal line that does not say its rules' slots (an older bpfgate's; the same rule again, so the
    # state is unchanged): the listing cannot follow it, the state is read and its rows saved
    store = StateStore(n.dev, Hook.TC_INGRESS, n.ns)
    store.journal("replace", name="alt", rule=rule_from_data(ALT))
    assert saved_listing(n.dev, Hook.TC_INGRESS, n.ns) is None
    assert [r[0] for r in listed()] == ["v6", "alt", "(default)"]
    assert saved_listing(n.dev, Hook.TC_INGRESS, n.ns)[0].names == ["v6", "alt"]
    policyctl.apply(pol([n.dev], [{**ALT, "action": "drop"}]), netns=n.ns)   # a swap: another saved state
    assert saved_listing(n.dev, Hook.TC_INGRESS, n.ns)[0].names == ["alt"]   # ... and its listing
    assert listed() == [("alt", "drop", "protocol=tcp dst_port=8080"), rows[2]]
    assert listed() == [("alt", "drop", "protocol=tcp dst_port=8080"), rows[2]]
    before = counts(n)["alt"]
    assert dropped(n, 8080) and settled_counts(n)["alt"] > before


def test_held_engines_follow_other_writers(net):
    """The agent's backend keeps engines open between edits; a swap, an edit or a detach by another
    writer in between makes it read the saved state again instead of editing a stale copy."""
    n = net
    held = EngineBackend(hold=True)
    try:
        policyctl.apply(pol([n.dev], [ALT]), netns=n.ns)
        policyctl.add_rule(n.dev, "tc-ingress", WEB, netns=n.ns, backend=held)
        assert dropped(n, 80) and served(n, 8080)
        # another writer swaps in a policy without either rule, then the held engine edits again
        policyctl.apply(pol([n.dev], [{"name": "other", "protocol": "tcp", "dst_port": 8081, "action": "drop"}]),
                        netns=n.ns)
        assert served(n, 80) and served(n, 8080)
        policyctl.add_rule(n.dev, "tc-ingress", {"name": "again", "protocol": "tcp", "dst_port": 8080,
                                                 "action": "drop"}, netns=n.ns, backend=held)
        assert [r.name for r in policyctl.rules(n.dev, netns=n.ns)] == ["other", "again", "(default)"]
        assert dropped(n, 8080) and served(n, 80)
        policyctl.delete_rule(n.dev, "tc-ingress", "again", netns=n.ns, backend=held)
        assert served(n, 8080)
        # detached and attached again by others: the held copy is not edited into the new engine
        policyctl.remove(n.dev, netns=n.ns)
        with pytest.raises(NotFound):
            policyctl.add_rule(n.dev, "tc-ingress", WEB, netns=n.ns, backend=held)
        policyctl.apply(pol([n.dev], [ALT]), netns=n.ns)
        policyctl.add_rule(n.dev, "tc-ingress", WEB, netns=n.ns, backend=held)
        assert [r.name for r in policyctl.rules(n.dev, netns=n.ns)] == ["alt", "web", "(default)"]
        assert dropped(n, 80) and served(n, 8080)
    finally:
        held.close()


def _cli(*argv, timeout=scaled(60)):
    return subprocess.run([sys.executable, "-m", "bpfgate", *argv], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_cli_apply_rules_export(net, tmp_path):
    n = net
    f = tmp_path / "p.yaml"
    f.write_text(f"interfaces: [{n.dev}]\nhooks:\n  tc-ingress:\n    rules:\n"
                 f"      - {{name: web, protocol: tcp, dst_port: 80, action: drop}}\n")
    r = _cli("apply", "--netns", n.ns, str(f))
    assert r.returncode == 0, r.stderr
    assert "+ rule web added" in r.stdout
    r = _cli("apply", "--netns", n.ns, str(f))
    assert r.returncode == 0 and "no change" in r.stdout
    assert dropped(n, 80)
    r = _cli("rule", "add", "--netns", n.ns, "--dev", n.dev, "alt", "--proto", "tcp", "--dport", "8080",
             "--action", "drop")
    assert r.returncode == 0, r.stderr
    assert dropped(n, 8080)
    r = _cli("rules", "--netns", n.ns, "--json")
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["web"]["packets"] > 0 and rows["alt"]["packets"] > 0 and rows["alt"]["bytes"] > 0
    r = _cli("policy", "export", "--netns", n.ns, "-o", str(tmp_path / "out.yaml"))
    assert r.returncode == 0, r.stderr
    r = _cli("apply", "--netns", n.ns, str(tmp_path / "out.yaml"))
    assert r.returncode == 0 and "no change" in r.stdout
    r = _cli("rule", "del", "--netns", n.ns, "--dev", n.dev, "nope")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_reapply_of_the_same_file_is_a_no_change_until_the_engine_changes(net, tmp_path):
    """The second apply of a file answers from its digest (unchanged.py) without reading it; any live edit,
    swap or detach since makes the next apply read and compare again."""
    n = net
    f = tmp_path / "p.yaml"
    f.write_text(f"interfaces: [{n.dev}]\nhooks:\n  tc-ingress:\n    rules:\n"
                 f"      - {{name: web, protocol: tcp, dst_port: 80, action: drop}}\n")
    assert policyctl.apply(f, netns=n.ns).applied
    record = os.path.join("/run/bpfgate/policyctl", n.ns, "applied.json")
    assert os.path.exists(record)
    r = policyctl.apply(f, netns=n.ns)
    assert not r.changed and [(h.dev, h.hook, h.action) for h in r.plan.hooks] == [(n.dev, Hook.TC_INGRESS, "none")]
    assert dropped(n, 80)
    policyctl.add_rule(n.dev, "tc-ingress", ALT, netns=n.ns)        # a live edit: the file no longer matches
    r = policyctl.apply(f, netns=n.ns)
    assert r.applied and [(c.kind, c.name) for c in r.plan.changes()[0].rules] == [("removed", "alt")]
    assert not policyctl.apply(f, netns=n.ns).changed
    policyctl.remove(n.dev, netns=n.ns)                               # detached: attached again
    assert [h.action for h in policyctl.apply(f, netns=n.ns).plan.hooks] == ["attach"]
    assert dropped(n, 80)
    f.write_text(f.read_text().replace("dst_port: 80", "dst_port: 8080"))   # another file: read and compared
    r = policyctl.apply(f, netns=n.ns)
    assert r.applied and dropped(n, 8080) and served(n, 80)


def test_cli_no_change_answers_without_the_control_plane(net, tmp_path):
    """`bpfgate apply` of the file applied last answers before importing the models, the compiler, netlink,
    click or Rich, and prints what the full path prints for the same no-change (text, --json, --dry-run)."""
    n = net
    f = tmp_path / "p.yaml"
    f.write_text(f"interfaces: [{n.dev}]\nhooks:\n  tc-ingress:\n    rules:\n"
                 f"      - {{name: web, protocol: tcp, dst_port: 80, action: drop}}\n")
    assert _cli("apply", "--netns", n.ns, str(f)).returncode == 0
    record = os.path.join("/run/bpfgate/policyctl", n.ns, "applied.json")
    for extra in ([], ["--json"], ["--dry-run"], ["--dry-run", "--json"]):
        fast, imported = run_entry("apply", "--netns", n.ns, str(f), *extra)
        assert fast.returncode == 0 and not imported, (extra, fast.stderr, imported)
        os.unlink(record)   # the next apply reads, validates and compares the file
        full, imported = run_entry("apply", "--netns", n.ns, str(f), *extra)
        assert full.returncode == 0 and {"pydantic", "bpfgate.policy.compile"} <= imported, (extra, full.stderr)
        assert fast.stdout == full.stdout and "no change: 1 hook(s) already run this policy" in fast.stdout, extra
        if not os.path.exists(record):   # a dry run records nothing
            assert _cli("apply", "--netns", n.ns, str(f)).returncode == 0 and os.path.exists(record)
    assert dropped(n, 80)


@pytest.mark.parametrize("mode", ["xdp-generic", "xdp-native"])
def test_xdp_and_egress_hooks(net, mode):
    n = net
    p = Policy.model_validate({"interfaces": [n.dev], "hooks": {
        "xdp": {"rules": [WEB]},
        "tc-egress": {"rules": [{"name": "no-reply-8080", "protocol": "tcp", "src_port": 8080, "action": "drop"}]}}})
    r = policyctl.apply(p, netns=n.ns, mode=mode)
    assert sorted(h.hook.value for h in r.plan.changes()) == ["tc-egress", "xdp"]
    assert dropped(n, 80) and dropped(n, 8080) and dropped(n, 8080, v6=True)
    c = {(r.hook, r.name): r.packets for r in policyctl.rules(n.dev, netns=n.ns)}
    assert c[("xdp", "web")] > 0 and c[("tc-egress", "no-reply-8080")] > 0
    assert not policyctl.apply(p, netns=n.ns, mode=mode).changed


def test_an_inline_blocklist_past_the_rule_limit_applies_and_is_deleted_live(net, tmp_path):
    """One rule listing 70,000 addresses (how an nft/ipset user writes a blocklist inline, past the 65,536
    entries one rule may expand to; compiled as a set): applied from a file by the CLI, it drops the listed
    client in both families and passes the other host; the file applied again without one of them (the
    rule replaced live: an entry per address) passes that one only; `rule del` removes its entries live."""
    n = net
    c4, c6 = n.link.end(n.client).ip4, n.link.end(n.client).ip6
    listed = [f"198.19.{i >> 8}.{i & 255}" for i in range(40_000)] + [f"fd00:77::{i:x}" for i in range(30_000)]
    listed[1234], listed[-1234] = c4, c6
    f = tmp_path / "block.yaml"

    def write(addrs):
        f.write_text(f"interfaces: [{n.dev}, {n.dev2}]\nhooks:\n  tc-ingress:\n    rules:\n      - name: block\n"
                     "        action: drop\n        src:\n" + "".join(f"          - {a}\n" for a in addrs))
    write(listed)
    r = _cli("apply", "--netns", n.ns, str(f), timeout=300)
    assert r.returncode == 0, r.stderr
    assert dropped(n, 80) and dropped(n, 80, v6=True)
    o4 = n.link2.end(n.server).ip4
    assert n.other.http_get(f"http://{o4}:80/", T_OK).ok   # not listed: passes
    write(listed[:1234] + listed[1235:])
    r = _cli("apply", "--netns", n.ns, str(f), timeout=300)
    assert r.returncode == 0, r.stderr
    assert served(n, 80) and dropped(n, 80, v6=True)
    r = _cli("rule", "del", "--netns", n.ns, "--dev", n.dev, "block")
    assert r.returncode == 0, r.stderr
    assert served(n, 80) and served(n, 80, v6=True)
