"""A swap to a policy the running engine's maps were not sized for grows them (and one far smaller shrinks
them) in place, atomically (engine/resize.py): under real traffic, a flow both policies allow loses nothing
and a flow both deny passes nothing while the policy goes from SMALL rules to BIG and back; counters of the
unchanged rules are carried over. A resize cut short before its commit point leaves the old policy running;
one cut short after it is finished by the next opener. BG_RESIZE_RULES sets BIG (default 40,000)."""

from __future__ import annotations

import errno
import os
import threading
import time
from contextlib import closing

import pytest

from bpfgate import attach as attach_mod
from bpfgate import policyctl
from bpfgate.engine import Engine, pin_dir
from bpfgate.engine import resize
from bpfgate.engine.state import StateStore
from bpfgate.policy.model import Hook, HookPolicy, Policy, Rule
from bpfgate.sandbox.timing import scaled

from clirun import run_cli
from test_cgroup_policy import cgroup, in_child, progs_on, received, send_udp, udp_server  # noqa: F401 (fixtures)
from test_reliability_swap import ALLOWED, DENIED, WEB, run_traffic

pytestmark = pytest.mark.kernel
HOOK = Hook.TC_INGRESS
SMALL, BIG = 500, int(os.environ.get("BG_RESIZE_RULES", "40000"))


def sized_data(dev: str, n: int) -> dict:
    """The flows' rules first, then n-4 IPv6 source prefixes (no test packet has one) to drop."""
    rules = [{"name": "replies", "ct": "established", "action": "pass"},
             {"name": "udp-allowed", "protocol": "udp", "dst_port": ALLOWED, "action": "pass"},
             {"name": "web", "protocol": "tcp", "dst_port": WEB, "action": "pass"},
             {"name": "udp-denied", "protocol": "udp", "dst_port": DENIED, "action": "drop"}]
    rules += [{"name": f"f{i}", "src": f"fdff:{i >> 16:x}:{i & 0xffff:x}::/48", "action": "drop"}
              for i in range(n - len(rules))]
    return {"interfaces": [dev], "hooks": {HOOK.value: {"default": "deny", "rules": rules}}}


def sized(dev: str, n: int) -> Policy:
    return Policy.model_validate(sized_data(dev, n))


def policy_file(path, dev: str, n: int) -> str:
    """The policy as a file for `bpfgate apply`, in the block style `policy export` writes."""
    data = sized_data(dev, n)
    out = [f"interfaces: [{dev}]", "hooks:", f"  {HOOK.value}:", "    default: deny", "    rules:"]
    for rule in data["hooks"][HOOK.value]["rules"]:
        out += [f"    - {k}: {v}" if i == 0 else f"      {k}: {v}" for i, (k, v) in enumerate(rule.items())]
    path.write_text("\n".join(out) + "\n")
    return str(path)


def sizes(n) -> tuple[int, int]:
    """(rule slots, attached program id) of the server's engine."""
    with closing(Engine.open(n.dev, HOOK, n.ns)) as eng:
        return eng.maps["bg_rules"].max_entries, eng.prog_id


def attached_prog(n) -> int:
    """The program the kernel runs at the engine's filter (not what bpfgate's records say)."""
    from bpfgate.kernel import tc

    ours = [a for a in attach_mod.find(n.dev, "tc-ingress", n.ns) if a.owner == "engine"]
    filters = tc.list_filters(n.dev, "ingress", n.ns)
    got = [f.prog_id for f in filters if (f.handle, f.priority) == (ours[0].handle, ours[0].priority)]
    assert len(got) == 1, filters
    return got[0]


def counters(n) -> dict[str, int]:
    return {r.name: r.packets for r in policyctl.rules(n.dev, netns=n.ns, names=["udp-allowed", "udp-denied"])}


def apply(path: str, n) -> float:
    """`bpfgate apply` in a child (the traffic threads here keep the interpreter meanwhile); its seconds."""
    t0 = time.monotonic()
    r = run_cli(["apply", path, "--netns", n.ns], timeout=600)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t0


def test_a_swap_grows_and_shrinks_the_maps_under_traffic(web, tmp_path):
    n = web
    small, big = policy_file(tmp_path / "small.json", n.dev, SMALL), policy_file(tmp_path / "big.json", n.dev, BIG)
    apply(small, n)
    slots0, prog0 = sizes(n)
    assert slots0 * 8 < BIG * 4 or slots0 <= BIG, slots0   # the small policy's maps cannot hold BIG rules

    stop = threading.Event()
    timer = threading.Timer(scaled(2.0), stop.set)
    timer.start()
    control = run_traffic(n, stop, 0)   # the same stream without swaps: the loss a veth has anyway
    timer.cancel()

    stop, result = threading.Event(), {}
    t = threading.Thread(target=lambda: result.update(run_traffic(n, stop, control["sent"])))
    t.start()
    try:
        time.sleep(scaled(0.5))
        before = counters(n)
        grow = apply(big, n)
        slots1, prog1 = sizes(n)
        after = counters(n)
        time.sleep(scaled(0.5))
        shrink = apply(small, n)
        slots2, prog2 = sizes(n)
        time.sleep(scaled(0.5))
    finally:
        stop.set()
        t.join()
    print(f"\n{SMALL} -> {BIG} rules: {grow:.1f} s, slots {slots0} -> {slots1}; back: {shrink:.1f} s, slots "
          f"{slots2}; control {control}; under resizes {result}")
    assert slots1 > max(slots0, BIG) - 1 and prog1 != prog0          # grown: other maps, another program
    assert slots2 < slots1 and prog2 not in (prog0, prog1)          # shrunk again
    assert attached_prog(n) == prog2                                 # the kernel runs what the records say
    assert result["denied_passed"] == 0 and control["denied_passed"] == 0
    assert result["failed"] == 0 and result["requests"] > 0
    allowed_loss = control["lost"] * result["sent"] / max(control["sent"], 1)
    assert result["lost"] <= allowed_loss, (result, control)
    # the unchanged rules' counters came along (packets counted in the old maps are not lost)
    assert after["udp-allowed"] >= before["udp-allowed"] > 0
    assert policyctl.running(n.ns)[(n.dev, HOOK)] == sized(n.dev, SMALL).hooks[HOOK]
    pdir = pin_dir(n.dev, HOOK, n.ns)
    assert not [p for p in os.listdir(pdir) if p.startswith(resize.NEXT)]


def test_a_resize_cut_short_before_its_commit_point_leaves_the_old_policy(web, monkeypatch):
    n = web
    small = sized(n.dev, SMALL)
    policyctl.apply(small, netns=n.ns, start_watcher=False)
    slots0, prog0 = sizes(n)

    mark = StateStore.begin_write

    def die_at_commit(store, op):
        if op == "resize":
            raise KeyboardInterrupt   # as a kill would: the new maps written and pinned, no mark yet
        mark(store, op)
    monkeypatch.setattr(StateStore, "begin_write", die_at_commit)
    with pytest.raises(KeyboardInterrupt):
        policyctl.apply(sized(n.dev, 20_000), netns=n.ns, start_watcher=False)
    monkeypatch.undo()
    assert sizes(n) == (slots0, prog0) and attached_prog(n) == prog0
    assert policyctl.running(n.ns)[(n.dev, HOOK)] == small.hooks[HOOK]
    assert not [p for p in os.listdir(pin_dir(n.dev, HOOK, n.ns)) if p.startswith(resize.NEXT)]
    assert n.client.http_get(f"http://{n.ip4}:{WEB}/").ok


def test_a_resize_cut_short_after_its_commit_point_is_finished_by_the_next_opener(web, monkeypatch):
    n = web
    policyctl.apply(sized(n.dev, SMALL), netns=n.ns, start_watcher=False)
    slots0, prog0 = sizes(n)
    bigger = sized(n.dev, 20_000)

    def die(*a, **kw):
        raise KeyboardInterrupt   # a kill between the commit point and the program switch
    monkeypatch.setattr(attach_mod, "replace_program", die)
    with pytest.raises(KeyboardInterrupt):
        policyctl.apply(bigger, netns=n.ns, start_watcher=False)
    monkeypatch.undo()
    assert attached_prog(n) == prog0   # nothing switched yet
    slots1, prog1 = sizes(n)           # opening it finishes the resize
    assert slots1 > slots0 and prog1 != prog0 and attached_prog(n) == prog1
    assert policyctl.running(n.ns)[(n.dev, HOOK)] == bigger.hooks[HOOK]
    assert not [p for p in os.listdir(pin_dir(n.dev, HOOK, n.ns)) if p.startswith(resize.NEXT)]
    assert n.client.http_get(f"http://{n.ip4}:{WEB}/").ok


@pytest.fixture
def tight(monkeypatch):
    """Engines attached meanwhile get rule arrays with room for two more slots than their policy."""
    from bpfgate.engine import engine as engine_mod

    monkeypatch.setattr(engine_mod, "rule_array_sizes",
                        lambda slots: {name: slots + 2 for name in engine_mod.RULE_ARRAYS})
    return monkeypatch


def test_a_live_add_past_the_maps_grows_them(web, tight):
    """Maps made tight at attach (the engine sizes them 4x the policy: filling them live would take
    thousands of adds): the add that does not fit swaps the policy with it into grown maps."""
    n = web
    policyctl.apply(sized(n.dev, 50), netns=n.ns, start_watcher=False)
    tight.undo()
    slots0, prog0 = sizes(n)
    assert slots0 == 53
    for i in range(5):
        policyctl.add_rule(n.dev, HOOK, {"name": f"extra{i}", "protocol": "tcp", "dst_port": 9000 + i,
                                         "action": "drop"}, netns=n.ns, position=1)
    slots1, prog1 = sizes(n)
    assert slots1 > slots0 and prog1 != prog0 and attached_prog(n) == prog1
    names = [r.name for r in policyctl.running(n.ns)[(n.dev, HOOK)].rules]
    assert names[:7] == ["replies", "extra4", "extra3", "extra2", "extra1", "extra0", "udp-allowed"]
    assert len(names) == 55
    assert n.client.http_get(f"http://{n.ip4}:{WEB}/").ok


def test_a_live_replace_past_a_table_grows_it(web, monkeypatch):
    """Classifier and prefix tables made tight at attach (the engine sizes them 4x the policy, at least 64k
    entries): a replace whose rule needs more entries than they have room for swaps the policy with it
    into grown tables."""
    from bpfgate.engine import engine as engine_mod

    n = web
    monkeypatch.setattr(engine_mod, "hash_sizes", lambda c, prealloc: {
        m: k + 2 for m, k in engine_mod._table_entries(c).items() if m not in prealloc})
    policyctl.apply(sized(n.dev, 50), netns=n.ns, start_watcher=False)
    monkeypatch.undo()
    wide = Rule.model_validate({"name": "udp-denied", "protocol": "udp", "dst_port": DENIED, "action": "drop",
                                "src": [f"198.19.{i}.0/24" for i in range(64)] + ["198.18.0.0/15"]})
    with closing(Engine.open(n.dev, HOOK, n.ns)) as eng:
        caps0, prog0 = {m: eng.maps[m].max_entries for m in engine_mod.HASH_TABLES}, eng.prog_id
        eng.replace_rule("udp-denied", wide)
    with closing(Engine.open(n.dev, HOOK, n.ns)) as eng:
        caps1 = {m: eng.maps[m].max_entries for m in engine_mod.HASH_TABLES}
        assert any(caps1[m] > caps0[m] for m in caps0) and eng.prog_id != prog0 and attached_prog(n) == eng.prog_id
    rules = policyctl.running(n.ns)[(n.dev, HOOK)].rules
    assert len(rules) == 50 and rules[3] == wide
    assert n.client.http_get(f"http://{n.ip4}:{WEB}/").ok


def test_an_xdp_engine_grows_in_place(web, engines, tight):
    from bpfgate.kernel import netlink

    n = web
    eng = engines(n.dev, "xdp", HookPolicy(default="allow", rules=(
        Rule(name="no-web2", protocol="tcp", dst_port=8081, action="drop"),)), netns_name=n.ns, mode="generic")
    tight.undo()
    prog0 = eng.prog_id
    for i in range(4):
        eng.add_rule(Rule(name=f"extra{i}", protocol="udp", dst_port=9000 + i, action="drop"))
    assert eng.maps["bg_rules"].max_entries > 4 and eng.prog_id != prog0
    assert netlink.xdp_query(n.dev, n.ns).prog_id == eng.prog_id
    assert n.client.http_get(f"http://{n.ip4}:{WEB}/").ok
    assert not n.client.http_get(f"http://{n.ip4}:8081/", timeout=scaled(1.0)).ok


def test_a_cgroup_engine_grows_in_place_on_every_link(cgroup, udp_server, tight):
    port = udp_server.getsockname()[1]
    eng = Engine.attach(cgroup, "cgroup-connect", HookPolicy(default="allow", rules=(
        Rule(name="other", protocol="udp", dst_port=1, action="drop"),)))
    tight.undo()
    try:
        before = progs_on(cgroup)
        assert len(before) == 4   # connect4/6, sendmsg4/6
        for i in range(3):
            eng.add_rule(Rule(name=f"extra{i}", protocol="udp", dst_port=port if i == 2 else 2 + i,
                              action="drop"))
        after = progs_on(cgroup)
        assert len(after) == 4 and not set(after) & set(before)
        assert in_child(send_udp(port, 3), cgroup) == f"3 [{errno.EPERM}]"   # the rule added with the growth
        assert received(udp_server) == 0
    finally:
        eng.detach()
    assert in_child(send_udp(port, 2), cgroup) == "0 []"
