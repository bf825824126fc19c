"""The libbpf ctypes layer against the real kernel: objects, rodata, maps, batch ops, ring/perf buffers,
test_run, stats, pins, verifier errors."""

import ctypes
import os
import uuid

import pytest

from bpfgate.errors import BpfgateError, ObjectError, VerifierError
from bpfgate.kernel import pins
from bpfgate.kernel.maps import Map
from bpfgate.kernel.objects import BpfObject, Program
from bpfgate.kernel.ringbuf import PerfBuffer, RingBuffer
from bpfgate.kernel.stats import stats_enabled
from bpfgate.kernel.testrun import test_run as run_prog
from features import require  # noqa: E402  (tests/kernel helper)

pytestmark = pytest.mark.kernel

PKT = bytes(range(64))  # any 64-byte frame: the selftest programs do not parse it
BG_STAT_EVENTS, BG_STAT_EVENTS_LOST = 0, 1


@pytest.fixture
def selftest():
    with BpfObject.open("selftest", rodata={"cfg_mark": 0x5A5A, "cfg_verdict": 2}) as obj:
        obj.load()
        yield obj


def test_rodata_constants_are_applied_before_load(selftest):
    # bg_selftest_mark returns cfg_verdict and writes cfg_mark into skb->mark (seen in ctx_out)
    r = run_prog(selftest.program("bg_selftest_mark"), PKT)
    assert r.retval == 2
    with BpfObject.open("selftest") as default:
        default.load()
        assert run_prog(default.program("bg_selftest_mark"), PKT).retval == 0


def test_unknown_rodata_variable_is_a_clear_error():
    with pytest.raises(ObjectError, match="no_such_constant"):
        BpfObject.open("selftest", rodata={"no_such_constant": 1})


def test_missing_and_corrupt_objects(tmp_path):
    with pytest.raises(ObjectError, match="no such file"):
        BpfObject.open(str(tmp_path / "nope.o"))
    bad = tmp_path / "corrupt.o"
    bad.write_bytes(b"\x7fELF" + os.urandom(200))
    with pytest.raises(ObjectError, match="not a valid BPF object"):
        BpfObject.open(str(bad))


def test_verifier_rejection_shows_the_log_tail(tmp_path):
    src = tmp_path / "bad.bpf.c"
    src.write_text(
        '#include "vmlinux.h"\n'
        '#include <bpf/bpf_helpers.h>\n'
        'SEC("tc") int bg_bad(struct __sk_buff *skb) {\n'
        '  char *p = (char *)(long)skb->data; return p[100]; }\n'  # unchecked packet access
        'char LICENSE[] SEC("license") = "GPL";\n'
    )
    obj_path = tmp_path / "bad.o"
    build = os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "build")
    rc = os.system(f"clang -O2 -g -target bpf -I{build} -c {src} -o {obj_path}")
    assert rc == 0
    with BpfObject.open(str(obj_path)) as obj:
        with pytest.raises(VerifierError) as ei:
            obj.load()
    assert "invalid access to packet" in ei.value.summary
    assert len(ei.value.summary.splitlines()) <= 12
    # one line naming the program and the verifier's error, not the first line of the log
    assert ei.value.prog == "bg_bad" and "\n" not in str(ei.value)
    assert "program 'bg_bad'" in str(ei.value) and "invalid access to packet" in str(ei.value)
    assert "invalid access to packet" in ei.value.log


def test_hash_map_typed_get_set_delete_iterate(selftest):
    m = selftest.map("test_hash")
    assert m.key_type.__name__ == "bg_port_key" and m.value_type.__name__ == "bg_counter"
    m[{"port": 80}] = {"packets": 3, "bytes": 300}
    m[(443, 0)] = (4, 400)
    assert m[{"port": 80}].bytes == 300
    assert {k.port for k in m.keys()} == {80, 443}
    assert len(m) == 2
    assert {"port": 81} not in m
    with pytest.raises(KeyError):
        m[{"port": 81}]
    del m[{"port": 80}]
    assert m.get({"port": 80}) is None
    with pytest.raises(BpfgateError, match="bad key"):
        m[{"prt": 1}] = (1, 1)


def test_batch_update_and_lookup_round_trip(selftest):
    m = selftest.map("test_hash")
    n = 50_000
    assert m.update_batch([(p, 0) for p in range(n)], [(p, p * 2) for p in range(n)]) == n
    got = {k.port: v.bytes for k, v in m.lookup_batch(chunk=1000)}
    assert len(got) == n and all(got[p] == 2 * p for p in range(n))
    # packed fast path
    kt, vt = m.key_type, m.value_type
    keys = b"".join(bytes(kt(port=p)) for p in range(n, n + 100))
    vals = b"".join(bytes(vt(packets=1, bytes=p)) for p in range(100))
    assert m.update_batch_raw(keys, vals, 100) == 100
    assert m[{"port": n + 7}].bytes == 7
    assert m.delete_batch([(p, 0) for p in range(100)]) == 100
    assert len(m) == n


def test_percpu_values_are_per_cpu_and_summed(selftest):
    m = selftest.map("test_percpu")
    ncpu = os.cpu_count()
    m[7] = [(i + 1, 10 * (i + 1)) for i in range(m._ncpus)]
    per_cpu = m[7]
    assert len(per_cpu) == m._ncpus >= ncpu
    s = m.summed(7)
    assert s.packets == sum(range(1, m._ncpus + 1))
    assert s.bytes == 10 * s.packets
    # batch reads: decoded per CPU, and raw chunks of every CPU's slot in index order
    got = dict((int(k.value) if hasattr(k, "value") else int(k), v) for k, v in m.lookup_batch(chunk=3))
    assert [(v.packets, v.bytes) for v in got[7]] == [(c.packets, c.bytes) for c in per_cpu]
    ksz, vsz = ctypes.sizeof(m.key_type), m._ncpus * m.slot_size
    raw = {keys[i * ksz:(i + 1) * ksz]: vals[i * vsz:(i + 1) * vsz]
           for keys, vals, n in m.lookup_batch_raw(chunk=5) for i in range(n)}
    assert raw[bytes(m.key_type(7))] == b"".join(bytes(c) for c in per_cpu)


def test_entry_by_entry_reads_give_the_batch_lookups_chunks():
    """Where the kernel has no batch lookup for a map type (it answers ENOTSUPP: per-CPU arrays before
    Linux 5.13, the engine's counters on Debian 11's 5.10), lookup_batch_raw reads one entry at a time:
    the same entries, in chunks of the same size, as the batch op gives where there is one."""
    with BpfObject.open("steer") as obj:
        obj.load()
        m = obj.map("steer_rules")
        for i in range(7):
            m[{"prefixlen": 32 + 24, "family": 4, "addr": [198, 18, i, 0] + [0] * 12}] = \
                {"id": i, "ifindex": 100 + i, "family": 4}
        each, batch = list(m._lookup_each_raw(3)), list(m.lookup_batch_raw(chunk=3))
        assert [n for _k, _v, n in each] == [3, 3, 1]
        ksz, vsz = ctypes.sizeof(m.key_type), m._vbuf_size

        def entries(chunks):
            return {(k[i * ksz:(i + 1) * ksz], v[i * vsz:(i + 1) * vsz]) for k, v, n in chunks for i in range(n)}
        assert entries(each) == entries(batch) and len(entries(each)) == 7
        # writes likewise: the packed entries written one by one read back as written
        (keys, vals, n), = m.lookup_batch_raw(chunk=7)
        vals = bytes(b ^ 0xFF if i % vsz == 4 else b for i, b in enumerate(vals))   # every rule's ifindex changed
        assert m._update_each_raw(keys, vals, n, 0) == 7
        assert entries(m.lookup_batch_raw(chunk=7)) == entries([(keys, vals, n)])


def test_ring_buffer_delivers_exact_counts_in_order(selftest):
    ev_t = selftest.btf.struct("bg_test_event")
    stats = selftest.map("bg_stats")
    with RingBuffer(selftest.map("events"), record_type=ev_t, lost_map=stats,
                    lost_index=BG_STAT_EVENTS_LOST) as rb:
        got = []
        for _ in range(5):  # moderate rate: consume after each burst, nothing lost
            run_prog(selftest.program("bg_selftest_ringbuf"), PKT, repeat=20_000)
            rb.consume()
            got.extend(rb.drain())
        assert len(got) == 100_000
        assert [e.seq for e in got] == list(range(100_000))
        assert all(e.mark == 0x5A5A and e.pkt_len == len(PKT) for e in got[:100])
        assert rb.lost == 0


def test_ring_buffer_loss_is_counted_when_the_consumer_falls_behind(selftest):
    ev_t = selftest.btf.struct("bg_test_event")
    stats = selftest.map("bg_stats")
    with RingBuffer(selftest.map("events"), record_type=ev_t, lost_map=stats,
                    lost_index=BG_STAT_EVENTS_LOST) as rb:
        sent = 400_000  # the 4 MiB ring holds ~100k records: most are lost
        run_prog(selftest.program("bg_selftest_ringbuf"), PKT, repeat=sent)
        rb.consume()
        received = len(rb.drain())
        assert rb.lost > 0
        assert received + rb.lost == sent
        assert sum(stats[BG_STAT_EVENTS]) == received


def test_ring_buffer_handler_exceptions_surface(selftest):
    def handler(batch):
        raise RuntimeError("handler failed")

    with RingBuffer(selftest.map("events"), record_type=selftest.btf.struct("bg_test_event"),
                    handler=handler) as rb:
        run_prog(selftest.program("bg_selftest_ringbuf"), PKT, repeat=3)
        with pytest.raises(RuntimeError, match="handler failed"):
            rb.poll(100)


def test_ring_buffer_iterator(selftest):
    with RingBuffer(selftest.map("events"), record_type=selftest.btf.struct("bg_test_event")) as rb:
        run_prog(selftest.program("bg_selftest_ringbuf"), PKT, repeat=10)
        got = list(rb.iter(timeout=0.3))
    assert len(got) == 10


def test_perf_buffer_delivers(selftest):
    with PerfBuffer(selftest.map("perf_events"), record_type=selftest.btf.struct("bg_test_event")) as pb:
        run_prog(selftest.program("bg_selftest_perf"), PKT, repeat=1000)
        pb.poll(200)
        got = pb.drain()
    assert len(got) == 1000 and pb.lost == 0


def test_run_stats_count_runs(selftest):
    prog = selftest.program("bg_empty_tc")
    with stats_enabled():
        before = prog.info().run_cnt
        run_prog(prog, PKT, repeat=1000)
        info = prog.info()
    assert info.run_cnt - before == 1000
    assert info.run_time_ns > 0
    assert info.name.startswith("bg_") and len(info.tag) == 16


def test_pin_and_reopen_program_and_map(selftest):
    base = pins.pin_path(f"test-{uuid.uuid4().hex[:8]}")
    try:
        prog = selftest.program("bg_empty_xdp")
        prog.pin(f"{base}/prog")
        m = selftest.map("test_hash")
        m[{"port": 9}] = (1, 2)
        m.pin(f"{base}/map")
        again = Program.from_pin(f"{base}/prog")
        assert again.info().id == prog.info().id
        again.close()
        m2 = Map.from_pin(f"{base}/map", m.key_type, m.value_type)
        assert m2[{"port": 9}].bytes == 2
        m2.close()
    finally:
        pins.unpin(base)
        pins.prune_empty(pins.PIN_ROOT)
    assert not os.path.exists(base)


def test_xdp_live_frames_really_transmit():
    """BPF_F_TEST_XDP_LIVE_FRAMES: frames a program returns XDP_TX for leave the device; the peer's XDP
    counter sees exactly that many."""
    require("xdp_live_frames")  # some kernel builds refuse live frames (EPERM)
    import subprocess

    from bpfgate import attach
    from bpfgate.kernel import netlink, netns
    from bpfgate.kernel.testrun import xdp_live_frames

    from bpfgate.sandbox.names import netns_name, new_tag

    name = netns_name(new_tag(), "lf")   # sandbox-style: the leak check tells other runs' records apart
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "add", "va", "type", "veth", "peer", "name", "vb"], ["link", "set", "va", "up"],
                    ["link", "set", "vb", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        with BpfObject.open("selftest") as gen, BpfObject.open("selftest") as counter:
            gen.load()
            counter.load()
            attach.attach_xdp(counter.program("bg_selftest_xdp_count"), "vb", mode="native", netns_name=name)
            # va needs an XDP program too for veth to take XDP_TX frames in native mode
            attach.attach_xdp(gen.program("bg_empty_xdp"), "va", mode="native", netns_name=name)
            frame = bytes.fromhex("ffffffffffff" "020000000001" "88b5") + bytes(50)  # local experimental ethertype
            with netns.entered(name):
                r = xdp_live_frames(gen.program("bg_selftest_xdp_tx"), frame, repeat=1000,
                                    ifindex=netlink.ifindex("va"))
            assert r.retval == 0
            assert sum(counter.map("bg_stats")[BG_STAT_EVENTS]) == 1000
    finally:
        attach.detach_matching(netns_name=name)
        subprocess.run(["ip", "netns", "del", name])
