"""Engine actions on BPF_PROG_TEST_RUN (deterministic, no traffic): mark, redirect return codes, rate limits
per rule / per source / in bytes, counters; and refused policies leave nothing in the kernel."""

from __future__ import annotations

import ipaddress
import os
import struct
import time

import pytest

from bpfgate import attach
from bpfgate.engine import Engine, frames
from bpfgate.errors import PolicyError
from bpfgate.kernel.testrun import test_run as run_prog
from bpfgate.policy.compile import compile_hook
from bpfgate.policy.model import Hook, HookPolicy
from bpfgate.policy.packet import Packet
from cls_tables import cls_entries  # noqa: E402  (tests/kernel helper)
from features import require  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel
# a pass is TC_ACT_UNSPEC (-1 as the u32 test run result): the filters after the gate still run
TC_PASS, TC_SHOT, TC_REDIRECT = 0xFFFFFFFF, 2, 7
SKB_SIZE = 192


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("needs root")


NO_SUCH_IFINDEX = 0x7FFFFFF0


def engine(rules, hook="tc-ingress", default="allow", target_ifindex=1):
    """An engine for BPF_PROG_TEST_RUN; redirect targets resolve to `target_ifindex` (default lo: a device
    that exists, so the devmap of redirect targets takes it)."""
    hp = HookPolicy.model_validate({"default": default, "rules": rules})
    eng = Engine.load(hook, ct=False, max_entries={"bg_rules": 1024, "bg_counters": 1024, "bg_rate_rule": 1024,
                                                   "bg_log_rate": 1024})
    eng.load_policy(compile_hook(hp, Hook(hook), ifindex=lambda _n: target_ifindex))
    return eng


def frame(src="198.18.0.1", dport=80, proto=17, length_pad=0):
    p = Packet(family=4, src=ipaddress.ip_address(src), dst=ipaddress.ip_address("198.18.0.2"), proto=proto,
               sport=1234, dport=dport, tcp_flags=0x02)
    return frames.build(p, payload=bytes(length_pad))


def run(eng, fr):
    r = run_prog(eng.program, fr, ctx=bytes(SKB_SIZE) if eng.hook is not Hook.XDP else None)
    mark = struct.unpack_from("=I", r.ctx_out, 8)[0] if r.ctx_out else None
    return r.retval, mark


def test_mark_and_redirect_return_codes():
    with engine([{"name": "tag", "protocol": "udp", "dst_port": 80, "mark": 0x10},
                 {"name": "out", "protocol": "udp", "dst_port": 81, "action": "redirect",
                  "redirect": {"interface": "x", "direction": "ingress"}}]) as eng:
        assert run(eng, frame(dport=80)) == (TC_PASS, 0x10)
        assert run(eng, frame(dport=81))[0] == TC_REDIRECT
        assert run(eng, frame(dport=82)) == (TC_PASS, 0)
        c = eng.counters()
        assert (c["tag"].packets, c["out"].packets, c["(default)"].packets) == (1, 1, 1)
    with engine([{"name": "out", "protocol": "udp", "action": "redirect", "redirect": {"interface": "x"}}],
                hook="xdp") as eng:
        assert run(eng, frame())[0] == 4     # XDP_REDIRECT


@pytest.mark.parametrize("hook, passed, dropped", [("tc-ingress", TC_PASS, TC_SHOT), ("xdp", 2, 1)])
def test_a_redirect_target_that_does_not_exist_is_counted_and_passed_or_dropped(hook, passed, dropped):
    for on_gone, code in (("pass", passed), ("drop", dropped)):
        with engine([{"name": "out", "protocol": "udp", "action": "redirect",
                      "redirect": {"interface": "x", "on_gone": on_gone}}], hook=hook,
                    target_ifindex=NO_SUCH_IFINDEX) as eng:
            assert run(eng, frame())[0] == code
            assert eng.redirect_stats() == {"gone_passed": int(on_gone == "pass"), "gone_dropped": int(on_gone == "drop")}


def passes(eng, frames_):
    return sum(run(eng, f)[0] == TC_PASS for f in frames_)


def test_rate_limit_per_rule_per_source_and_bytes():
    # rate 1/s: a refill during the few microseconds of this test is at most one token
    with engine([{"name": "rl", "protocol": "udp", "rate_limit": {"rate": 1, "burst": 3, "over": "drop"}}]) as eng:
        got = passes(eng, [frame(src=f"198.18.0.{i % 2 + 1}") for i in range(10)])
        assert 3 <= got <= 5      # 3 from the burst, one more per second of stall
        assert eng.counters()["rl"].packets == 10
    with engine([{"name": "rl", "protocol": "udp",
                  "rate_limit": {"rate": 1, "burst": 3, "per": "source", "over": "drop"}}]) as eng:
        a = passes(eng, [frame(src="198.18.0.1")] * 10)
        b = passes(eng, [frame(src="198.18.0.9")] * 10)
        assert 3 <= a <= 5 and 3 <= b <= 5
    with engine([{"name": "rl", "protocol": "udp",
                  "rate_limit": {"rate": 1, "burst": 1000, "unit": "bytes", "over": "drop"}}]) as eng:
        big = frame(length_pad=400)            # ~450 bytes: two fit in 1000 bytes, the third does not
        assert passes(eng, [big] * 5) == 2


def test_over_action_pass_keeps_traffic():
    with engine([{"name": "rl", "action": "drop", "rate_limit": {"rate": 1, "burst": 2, "over": "pass"}}]) as eng:
        codes = [run(eng, frame())[0] for _ in range(6)]
        assert codes.count(TC_SHOT) in (2, 3) and codes[-1] == TC_PASS


def test_refused_policy_leaves_nothing(sandbox):
    a, b = sandbox.host("a"), sandbox.host("b")
    link = sandbox.link(a, b)
    dev = link.end(b).name
    bad = HookPolicy.model_validate({"default": "allow", "rules": [{"name": "m", "mark": 1}]})
    with pytest.raises(PolicyError):
        Engine.attach(dev, "xdp", bad, netns_name=b.netns)
    assert attach.find(dev, None, b.netns) == []
    assert not os.path.exists(os.path.join("/sys/fs/bpf/bpfgate/engine", b.netns))
    assert Engine.attached(b.netns) == []


def test_tcx_attach(sandbox):
    require("tcx")
    a, b = sandbox.host("a"), sandbox.host("b")
    link = sandbox.link(a, b)
    dev = link.end(b).name
    eng = Engine.attach(dev, "tc-ingress", HookPolicy.model_validate(
        {"default": "allow", "rules": [{"name": "ping", "protocol": "icmp", "action": "drop"}]}),
        netns_name=b.netns, mode="tcx")
    try:
        assert not a.ping(link.end(b).ip4) and a.ping(link.end(b).ip6)
        assert eng.counters()["ping"].packets >= 1
    finally:
        eng.detach()
    assert a.ping(link.end(b).ip4)


def test_swap_is_atomic_under_concurrent_packets():
    """Packets classified while policies swap back and forth see one whole generation: the rule of A or of
    B for their port, never the default (which a half-written generation would give)."""
    import threading

    a = HookPolicy.model_validate({"default": "allow", "rules": [
        {"name": f"a{i}", "protocol": "udp", "dst_port": 1000 + i, "action": "drop"} for i in range(200)]})
    b = HookPolicy.model_validate({"default": "allow", "rules": [
        {"name": f"b{i}", "src": "198.18.0.0/16", "protocol": "udp", "dst_port": [1000 + i, 5000 + i],
         "action": "drop"} for i in range(200)]})
    eng = Engine.load("tc-ingress", ct=False, test_mark=True)
    eng.load_policy(compile_hook(a, Hook.TC_INGRESS, ifindex=lambda _n: 1))
    fr = [frame(dport=1000 + i) for i in range(0, 200, 7)]
    bad, stop = [], threading.Event()

    def classify():
        n = 0
        while not stop.is_set() and n < 200_000:
            r = run_prog(eng.program, fr[n % len(fr)], ctx=bytes(SKB_SIZE))
            if r.retval != TC_SHOT:
                bad.append(r.retval)
            n += 1

    t = threading.Thread(target=classify)
    t.start()
    try:
        for i in range(30):
            eng.swap(b if i % 2 == 0 else a)
    finally:
        stop.set()
        t.join(60)
        eng.close()
    assert not bad


def test_log_rate_cap():
    """log: {rate: 2}: two events a second for the rule, whichever CPUs its packets arrive on (each CPU in turn
    here: buckets per CPU would let 2 per CPU through)."""
    cpus = sorted(os.sched_getaffinity(0))
    with engine([{"name": "lg", "protocol": "udp", "log": {"rate": 2}}]) as eng:
        t0 = time.monotonic()
        try:
            for cpu in cpus:
                os.sched_setaffinity(0, {cpu})
                for _ in range(10):
                    run(eng, frame())
        finally:
            os.sched_setaffinity(0, cpus)
        refilled = int((time.monotonic() - t0) * 2)   # the bucket's refill meanwhile: 2 a second
        evs = eng.events(timeout=0.5)
        assert 2 <= len(evs) <= 2 + refilled and all(e.name == "lg" and e.dport == 80 for e in evs), \
            (len(evs), refilled, cpus)


def test_conntrack_entries_and_expiry():
    from bpfgate.engine import engine as E

    eng = Engine.load("tc-ingress", ct=True)
    try:
        eng.load_policy(compile_hook(HookPolicy.model_validate({"default": "allow", "rules": [
            {"name": "est", "ct": "established"}, {"name": "new", "ct": "new"},
            {"name": "inv", "ct": "invalid"}]}), Hook.TC_INGRESS, ifindex=lambda _n: 1))
        syn = frame(proto=6, dport=443)
        p = Packet(family=4, src=ipaddress.ip_address("198.18.0.2"), dst=ipaddress.ip_address("198.18.0.1"),
                   proto=6, sport=443, dport=1234, tcp_flags=0x12)
        synack = frames.build(p)
        stray = frames.build(Packet(family=4, src=p.src, dst=p.dst, proto=6, sport=1, dport=2, tcp_flags=0x10))
        for fr in (syn, synack, syn, stray):
            run(eng, fr)
        c = eng.counters()
        assert (c["new"].packets, c["est"].packets, c["inv"].packets) == (1, 2, 1)
        flows = eng.conntrack()
        assert len(flows) == 1
        f = flows[0]
        assert (str(f.src), f.sport, f.dport, f.packets_orig, f.packets_reply, f.replied) == \
            ("198.18.0.1", 1234, 443, 2, 1, True)
        assert eng.expire_flows() == 0
        saved, E.CT_TIMEOUT_EST_S = E.CT_TIMEOUT_EST_S, -1     # everything is past its timeout for the reader
        try:
            assert eng.conntrack() == [] and len(eng.conntrack(include_expired=True)) == 1
            assert eng.expire_flows() == 1
        finally:
            E.CT_TIMEOUT_EST_S = saved
        assert eng.conntrack(include_expired=True) == []
    finally:
        eng.close()


def test_two_editors_stay_in_step_and_refusals_change_nothing(sandbox):
    from bpfgate.policy.model import Rule

    a, b = sandbox.host("a"), sandbox.host("b")
    dev = sandbox.link(a, b).end(b).name
    eng = Engine.attach(dev, "xdp", HookPolicy.model_validate({"default": "allow", "rules": [
        {"name": "r0", "protocol": "udp", "dst_port": 1}]}), netns_name=b.netns, mode="generic")
    other = Engine.open(dev, "xdp", b.netns)
    try:
        eng.add_rule(Rule.model_validate({"name": "r1", "protocol": "udp", "dst_port": 2}))
        other.add_rule(Rule.model_validate({"name": "r2", "protocol": "udp", "dst_port": 3}), 0)   # catches up
        eng.delete_rule("r0")                                                                     # catches up
        assert [r.name for r in other.policy().rules] == ["r2", "r1"]
        before = cls_entries(eng)
        with pytest.raises(PolicyError):
            eng.add_rule(Rule.model_validate({"name": "m", "mark": 1}))          # mark at XDP: refused
        with pytest.raises(PolicyError):
            eng.add_rule(Rule.model_validate({"name": "r1", "protocol": "udp"}))  # duplicate name
        with pytest.raises(PolicyError):
            eng.swap(HookPolicy.model_validate({"default": "allow", "rules": [{"name": "m", "mark": 1}]}))
        assert cls_entries(eng) == before and before
        assert [r.name for r in Engine.open(dev, "xdp", b.netns).policy().rules] == ["r2", "r1"]
    finally:
        other.close()
        eng.detach()


def test_rule_arrays_sized_to_the_policy_and_edits_past_them_refused():
    from bpfgate.engine.engine import rule_array_sizes
    from bpfgate.policy.model import Rule

    assert rule_array_sizes(3)["bg_rules"] == 1 << 14 and rule_array_sizes(100_001)["bg_counters"] == 1 << 18
    eng = Engine.load("tc-ingress", ct=False, max_entries={"bg_rules": 4, "bg_counters": 4, "bg_rate_rule": 4,
                                                           "bg_log_rate": 4})
    try:
        eng.load_policy(compile_hook(HookPolicy.model_validate({"default": "allow", "rules": [
            {"name": f"r{i}", "protocol": "udp", "dst_port": i} for i in range(3)]}), Hook.TC_INGRESS))
        with pytest.raises(PolicyError, match="room for 4"):
            eng.add_rule(Rule.model_validate({"name": "x", "protocol": "tcp"}))
        assert [r.name for r in eng.policy().rules] == ["r0", "r1", "r2"]
        eng.delete_rule("r0")
        assert run(eng, frame(dport=1))[0] == TC_PASS and eng.counters()["r1"].packets == 1
    finally:
        eng.close()
