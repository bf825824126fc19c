"""A batch of live edits (Engine.apply_edits) flips in at once: packets classified at every step of its
writes see the policy before it or the policy after it, never part of it (BPF_PROG_TEST_RUN on the real
program); the same edits made one by one do show mixtures (what the batch exists to avoid). A batch cut
short is repaired to the policy before it; `apply` of a file changing a few rules of a big policy takes
this path (no generation swap) and another process reads the result from the journal."""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import subprocess
import sys

import pytest

from bpfgate.engine import Engine, frames
from bpfgate.errors import PolicyError
from bpfgate.kernel.testrun import test_run as run_prog
from bpfgate.policy import layout as L
from bpfgate.policy.compile import compile_hook
from bpfgate.policy.model import Hook, HookPolicy, Rule
from bpfgate.policy.packet import Packet
from bpfgate.sandbox.timing import scaled
from cls_tables import cls_entries  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel
SKB_SIZE = 192


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


# each rule marks packets with its own value: a verdict names the rule that decided (0: the default)
BEFORE = [{"name": "r0", "protocol": "udp", "dst_port": 100, "mark": 1},
          {"name": "r1", "src": "198.18.0.0/24", "mark": 2},
          {"name": "r2", "protocol": "udp", "dst_port": 200, "mark": 3},
          {"name": "r3", "src": "198.18.1.0/24", "protocol": "udp", "mark": 4},
          {"name": "r4", "protocol": "udp", "mark": 5}]
EDITS = [("delete", "r1"),
         ("replace", "r2", {"name": "r2", "protocol": "udp", "dst_port": 300, "mark": 33}),   # new action: new slot
         ("replace", "r3", {"name": "r3", "src": "198.18.1.0/24", "protocol": "tcp", "mark": 4}),  # same action
         ("add", {"name": "rn", "src": "198.18.1.5/32", "mark": 9}, 0)]
AFTER = [EDITS[3][1], BEFORE[0], EDITS[1][2], EDITS[2][2], BEFORE[4]]
FRAMES = [frames.build(Packet(family=4, src=ipaddress.ip_address(src), dst=ipaddress.ip_address("198.18.2.2"),
                              proto=proto, sport=1234, dport=dport, tcp_flags=0x02))
          for src in ("198.18.0.1", "198.18.1.5", "198.18.1.6", "198.18.2.1")
          for dport in (100, 200, 300, 400) for proto in (6, 17)]


def edits():
    return [(e[0], e[1], Rule.model_validate(e[2])) if e[0] == "replace" else
            (e[0], Rule.model_validate(e[1]), e[2]) if e[0] == "add" else e for e in EDITS]


def verdicts(eng) -> tuple:
    return tuple(struct.unpack_from("=I", run_prog(eng.program, f, ctx=bytes(SKB_SIZE)).ctx_out, 8)[0]
                 for f in FRAMES)


def load(rules):
    eng = Engine.load("tc-ingress", ct=False, max_entries={"bg_rules": 64, "bg_counters": 64,
                                                           "bg_rate_rule": 64, "bg_log_rate": 64})
    eng.load_policy(compile_hook(HookPolicy.model_validate({"default": "allow", "rules": rules}),
                                 Hook.TC_INGRESS))
    return eng


def watch(eng, seen: list) -> None:
    """Classify FRAMES after every kernel write step the engine makes."""
    for name in ("_write_rules", "_write_cls", "_delete_cls", "_publish", "_write_stage"):
        step = getattr(eng, name)

        def after(*a, _step=step, **kw):
            out = _step(*a, **kw)
            seen.append(verdicts(eng))
            return out
        setattr(eng, name, after)


def test_a_batch_flips_in_at_once_where_single_edits_show_mixtures():
    with load(AFTER) as ref:
        after = verdicts(ref)
    eng = load(BEFORE)
    try:
        before = verdicts(eng)
        assert before != after
        seen: list = []
        watch(eng, seen)
        gen = eng.live.c.gen
        eng.apply_edits(edits())
        assert len(seen) >= 5 and set(seen) <= {before, after}, "a packet saw part of the batch"
        assert seen[-1] == after == verdicts(eng)
        assert eng.live.c.gen == gen   # no generation swap
        keys = [k for _m, k in cls_entries(eng)]
        assert keys and not any(k[L.KEY_GEN_OFF] & L.GEN_OVERLAY for k in keys)   # the overlay is gone
        assert [r.name for r in eng.policy().rules] == [r["name"] for r in AFTER]
    finally:
        eng.close()
    eng = load(BEFORE)   # the control: the same edits one at a time
    try:
        seen = []
        watch(eng, seen)
        for e in edits():
            {"delete": lambda: eng.delete_rule(e[1]), "replace": lambda: eng.replace_rule(e[1], e[2]),
             "add": lambda: eng.add_rule(e[1], e[2])}[e[0]]()
        assert seen[-1] == after
        assert set(seen) - {before, after}, "single edits showed no mixture: the batch test proves nothing"
    finally:
        eng.close()


def test_a_refused_batch_writes_nothing():
    eng = load(BEFORE)
    try:
        before = verdicts(eng)
        cls = cls_entries(eng)
        with pytest.raises(PolicyError):   # the last edit is refused (a name that exists): none is made
            eng.apply_edits(edits()[:3] + [("add", Rule.model_validate({"name": "r0", "protocol": "tcp"}), 0)])
        assert verdicts(eng) == before
        assert cls_entries(eng) == cls
    finally:
        eng.close()


def _file(tmp_path, name, dev, web_port, filler_shift=0):
    rules = [{"name": "web", "protocol": "tcp", "dst_port": web_port, "action": "drop"}]
    rules += [{"name": f"f{i}", "protocol": "udp", "dst_port": 10000 + i + (filler_shift if i < 3 else 0),
               "action": "drop"} for i in range(199)]
    path = tmp_path / name
    path.write_text(json.dumps({"version": 1, "interfaces": [dev],
                                "hooks": {"tc-ingress": {"default": "allow", "rules": rules}}}))
    return path, rules


@pytest.fixture
def web(sandbox, policies_removed):
    """A server with web servers on ports 80 and 8080 and a client; policies removed at the end."""
    client, server = sandbox.host("client"), sandbox.host("server")
    link = sandbox.link(client, server)
    w = type("Web", (), {})()
    w.dev, w.ns, ip = link.end(server).name, server.netns, link.end(server).ip4
    policies_removed(w.ns)
    for port in (80, 8080):
        server.http_server(port)
    w.served = lambda port: client.http_get(f"http://{ip}:{port}/", scaled(3)).ok
    w.dropped = lambda port: client.http_get(f"http://{ip}:{port}/", 1.0).status is None
    return w


def test_apply_of_a_few_changed_rules_is_one_batch_read_back_by_other_processes(web, tmp_path):
    from bpfgate import policyctl
    from bpfgate.engine.state import StateStore

    dev, ns, served, dropped = web.dev, web.ns, web.served, web.dropped
    a, _ = _file(tmp_path, "a.json", dev, 80)
    b, b_rules = _file(tmp_path, "b.json", dev, 8080, filler_shift=5000)   # 4 rules of 200 change
    policyctl.apply(a, netns=ns)
    assert dropped(80) and served(8080)
    with Engine.open(dev, "tc-ingress", ns) as eng:
        gen = eng.live.c.gen
    res = policyctl.apply(b, netns=ns)
    assert res.changed and sum(len(h.rules) for h in res.plan.hooks) == 4
    assert served(80) and dropped(8080)
    last = json.loads(open(StateStore(dev, Hook.TC_INGRESS, ns)._p("journal.jsonl")).read().splitlines()[-1])
    assert last["op"] == "batch" and len(last["edits"]) == 4
    # another process replays the journal: the same rules, same generation (no swap happened)
    out = subprocess.run([sys.executable, "-m", "bpfgate", "rules", "--netns", ns, "--dev", dev, "--json"],
                         capture_output=True, text=True, timeout=scaled(60))
    assert out.returncode == 0, out.stderr
    assert [r["name"] for r in json.loads(out.stdout)] == [r["name"] for r in b_rules] + ["(default)"]
    with Engine.open(dev, "tc-ingress", ns) as eng:
        assert eng.live.c.gen == gen
        assert eng.policy().rules == HookPolicy.model_validate({"default": "allow", "rules": b_rules}).rules
    assert not policyctl.apply(b, netns=ns).changed
    policyctl.apply(a, netns=ns)   # and back
    assert dropped(80) and served(8080)


def test_a_batch_cut_short_is_repaired_to_the_policy_before_it(sandbox):
    a, b = sandbox.host("a"), sandbox.host("b")
    dev = sandbox.link(a, b).end(b).name
    eng = Engine.attach(dev, "tc-ingress", HookPolicy.model_validate({"default": "allow", "rules": BEFORE}),
                        netns_name=b.netns)
    try:
        cls = cls_entries(eng)
        real = eng._delete_cls

        def dies(keys):   # the writer dies once the overlay is published and the generation half-written
            raise OSError("killed")
        eng._delete_cls = dies
        with pytest.raises(OSError):
            eng.apply_edits(edits())
        eng._delete_cls = real
        with Engine.open(dev, "tc-ingress", b.netns) as other:
            assert [r.name for r in other.policy().rules] == [r["name"] for r in BEFORE]
        assert cls_entries(eng) == cls
        assert not eng.store.interrupted()
    finally:
        eng.detach()


def test_a_batch_at_xdp_flips_in_at_once():
    """The XDP program reads the overlay too (drops tell the rules apart: ports 100-103 dropped before,
    200-203 after)."""
    xdp_frames = [frames.build(Packet(family=4, src=ipaddress.ip_address("198.18.0.1"),
                                      dst=ipaddress.ip_address("198.18.0.2"), proto=17, sport=1, dport=p))
                  for p in (100, 101, 102, 103, 200, 201, 202, 203)]
    rules = [{"name": f"d{i}", "protocol": "udp", "dst_port": 100 + i, "action": "drop"} for i in range(4)]
    eng = Engine.load("xdp", ct=False)
    eng.load_policy(compile_hook(HookPolicy.model_validate({"default": "allow", "rules": rules}), Hook.XDP))
    try:
        def drops():
            return tuple(run_prog(eng.program, f).retval == 1 for f in xdp_frames)   # XDP_DROP
        seen: list = []
        for name in ("_write_rules", "_write_cls", "_delete_cls", "_publish"):
            step = getattr(eng, name)

            def after(*a, _step=step, **kw):
                out = _step(*a, **kw)
                seen.append(drops())
                return out
            setattr(eng, name, after)
        before = drops()
        eng.apply_edits([("replace", f"d{i}", Rule.model_validate(
            {"name": f"d{i}", "protocol": "udp", "dst_port": 200 + i, "action": "drop"})) for i in range(4)])
        after = (False,) * 4 + (True,) * 4
        assert before == (True,) * 4 + (False,) * 4 and drops() == after
        assert set(seen) <= {before, after}
    finally:
        eng.close()


def _yaml(tmp_path, name, dev, rules):
    body = "".join(f"      - name: {r['name']}\n        protocol: {r['protocol']}\n        dst_port: {r['dst_port']}\n"
                   f"        action: drop\n" for r in rules)
    path = tmp_path / name
    path.write_text(f"version: 1\ninterfaces: [{dev}]\nhooks:\n  tc-ingress:\n    default: allow\n    rules:\n{body}")
    return path


def test_apply_reads_only_the_rules_that_changed(web, tmp_path, monkeypatch):
    from bpfgate import policyctl
    from bpfgate.policyctl import incremental

    dev, ns, served, dropped = web.dev, web.ns, web.served, web.dropped
    rules = [{"name": "web", "protocol": "tcp", "dst_port": 80}] + [
        {"name": f"f{i}", "protocol": "udp", "dst_port": 10000 + i} for i in range(199)]
    policyctl.apply(_yaml(tmp_path, "a.yaml", dev, rules), netns=ns)
    assert dropped(80) and served(8080)
    taken = []
    real = incremental.apply
    monkeypatch.setattr(incremental, "apply", lambda *a, **kw: taken.append(real(*a, **kw)) or taken[-1])
    new = [dict(r) for r in rules]
    new[0]["dst_port"] = 8080        # changed
    new[5]["name"] = "f4-renamed"    # removed + added
    del new[9]                       # removed
    res = policyctl.apply(_yaml(tmp_path, "b.yaml", dev, new), netns=ns)
    assert taken and taken[-1] is not None and res.changed   # the incremental path made it
    assert {(c.kind, c.name) for h in res.plan.hooks for c in h.rules} == {
        ("changed", "web"), ("removed", "f4"), ("added", "f4-renamed"), ("removed", "f8")}
    assert served(80) and dropped(8080)
    with Engine.open(dev, "tc-ingress", ns) as eng:
        assert [r.name for r in eng.policy().rules] == [r["name"] for r in new]
    assert not policyctl.apply(tmp_path / "b.yaml", netns=ns).changed
    # a changed rule that takes an existing name: the engine refuses, the full path says what is wrong
    dup = [dict(r) for r in new]
    dup[20]["name"] = "f21"
    with pytest.raises(PolicyError, match="f21"):
        policyctl.apply(_yaml(tmp_path, "dup.yaml", dev, dup), netns=ns)
    with Engine.open(dev, "tc-ingress", ns) as eng:
        assert [r.name for r in eng.policy().rules] == [r["name"] for r in new]
    # a moved rule: the full path (a swap) puts it in its place
    moved = [new[1], new[0]] + new[2:]
    taken.clear()
    policyctl.apply(_yaml(tmp_path, "moved.yaml", dev, moved), netns=ns)
    assert taken == [None]
    with Engine.open(dev, "tc-ingress", ns) as eng:
        assert [r.name for r in eng.policy().rules] == [r["name"] for r in moved]
    assert served(80) and dropped(8080)
