"""The attach layer's kinds without a device: cgroup programs, sock_ops, sk_msg/sk_skb on a sockmap,
tracepoints. Each is recorded: `status` lists it as bpfgate's (or stale, once the kernel no longer has it)
and `bpfgate detach`, run from another process, removes it with its pins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from clirun import run_cli

from bpfgate import attach, status
from bpfgate.kernel.objects import BpfObject
from bpfgate.sandbox.names import netns_name, new_tag

pytestmark = pytest.mark.kernel


@pytest.fixture
def cgroup():
    root = status.cgroup2_mount()
    assert root, "no cgroup v2 mount"
    cg = os.path.join(root, netns_name(new_tag(), "cg"))   # names its run: the leak check tells runs apart
    os.mkdir(cg)
    try:
        yield cg
    finally:
        for att in attach.find(target=cg):
            attach.detach(att)
        os.rmdir(cg)


USED = ("bg_probe_cgroup_skb", "bg_probe_sockops", "bg_probe_sk_msg", "bg_probe_sk_skb", "bg_probe_raw_tp")
LOAD = f"""
from bpfgate.kernel.objects import BpfObject
obj = BpfObject.open("probes")
for name in obj.program_names():
    obj.set_autoload(name, name in {USED!r})   # only these: kprobe/fentry probes may not load here
obj.load()
"""


def load_probes() -> BpfObject:
    scope: dict = {}
    exec(LOAD, scope)
    return scope["obj"]


@pytest.fixture
def probes():
    with load_probes() as obj:
        yield obj


def kernel_hooks(cg: str) -> list[str]:
    return sorted(e.hook for e in status.cgroup_entries(os.path.dirname(cg)) if e.target == cg)


def status_of(**match) -> list[dict]:
    r = run_cli(["status", "--json", "--ours"])
    assert r.returncode == 0, r.stderr
    return [e for e in json.loads(r.stdout)["attachments"] if all(e.get(k) == v for k, v in match.items())]


def test_cgroup_and_sockops_pinned_then_detached_by_another_process(cgroup):
    """A child attaches and pins, then exits: the attachments stay; `bpfgate detach --cgroup` removes them."""
    pin_dir = f"/sys/fs/bpf/bpfgate/links/{netns_name(new_tag(), 'pins')}"
    child = LOAD + textwrap.dedent(f"""
        from bpfgate import attach
        point = attach.Point.of_cgroup({cgroup!r})
        attach.attach(obj.program("bg_probe_cgroup_skb"), point,
                      attach.Options(owner="test", attach_type="cgroup_inet_egress", pin={pin_dir!r} + "/skb"),
                      kind="cgroup")
        attach.attach(obj.program("bg_probe_sockops"), point,
                      attach.Options(owner="test", pin={pin_dir!r} + "/sockops"), kind="sockops")
        obj.close()
    """)
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert kernel_hooks(cgroup) == ["cgroup_inet_egress", "sock_ops"]
    listed = status_of(target=cgroup)
    assert sorted((e["hook"], e["owner"]) for e in listed) == [("cgroup_inet_egress", "test"), ("sock_ops", "test")]
    r = run_cli(["detach", "--cgroup", cgroup, "--json"])
    assert r.returncode == 0, r.stderr
    removed = json.loads(r.stdout)["removed"]
    assert any("sock_ops link" in x for x in removed) and any(f"pin {pin_dir}/skb" == x for x in removed)
    assert kernel_hooks(cgroup) == [] and not attach.find(target=cgroup) and not os.path.exists(pin_dir)


def test_cgroup_link_held_goes_with_close(cgroup, probes):
    att = attach.attach(probes.program("bg_probe_cgroup_skb"), attach.Point.of_cgroup(cgroup),
                        attach.Options(owner="test"), kind="cgroup")   # attach type from SEC("cgroup_skb/egress")
    assert att.hook == "cgroup_inet_egress" and att.pid == os.getpid() and att.held is not None
    assert kernel_hooks(cgroup) == ["cgroup_inet_egress"] and [a.key for a in attach.find(target=cgroup)] == [att.key]
    att.close()
    assert kernel_hooks(cgroup) == [] and not attach.find(target=cgroup)


def test_sockmap_programs_recorded_listed_and_stale_when_the_map_goes(probes):
    m = probes.map("probe_sockmap")
    point = attach.Point.of_map(m)
    msg = attach.attach(probes.program("bg_probe_sk_msg"), point, attach.Options(owner="test"), kind="sockmap")
    skb = attach.attach(probes.program("bg_probe_sk_skb"), point, attach.Options(owner="test"), kind="sockmap")
    try:
        assert (msg.hook, skb.hook) == ("sk_msg_verdict", "sk_skb_stream_verdict")
        assert attach.alive(msg) and attach.alive(skb)
        entries = {e.hook: e for e in status.record_entries() if e.target == msg.map}
        assert set(entries) == {"sk_msg_verdict", "sk_skb_stream_verdict"}
        assert all(e.bpfgate and e.owner == "test" and "stale" not in e.details for e in entries.values())
        assert attach.detach(msg) == [f"sk_msg_verdict bg_probe_sk_msg on map {msg.map}"]
        assert [a.hook for a in attach.find(target=msg.map)] == ["sk_skb_stream_verdict"]
    finally:
        for a in attach.find(target=msg.map):
            attach.detach(a)


def test_tracepoint_held_recorded_and_forgotten_when_its_process_is_killed():
    child = LOAD + textwrap.dedent("""
        import time
        from bpfgate import attach
        att = attach.tracepoint.attach(obj, "bg_probe_raw_tp", attach.Options(owner="test-tp"))
        print(att.key, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        key = proc.stdout.readline().strip()
        assert key.endswith(".tracepoint-link" + key.rsplit("link", 1)[1])
        (att,) = [a for a in attach.records() if a.key == key]
        assert att.tracepoint == "raw_tp/inet_sock_set_state" and attach.alive(att)
    finally:
        proc.kill()
        proc.wait()
    assert not attach.alive(att)   # the link went with the process (SIGKILL: no chance to clean up)
    # and its record with it: nothing is left to undo
    assert key not in {a.key for a in attach.records()} and not os.path.exists(f"{attach.STATE_DIR}/{key}.json")
    assert not [e for e in status.record_entries() if e.owner == "test-tp"]
