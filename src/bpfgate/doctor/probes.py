"""Feature probes: each loads one tiny program from objects/probes.o (bpf/probes.bpf.c) and, where the
feature is about attaching, attaches it somewhere throwaway (scratch.py). A probe returns a detail string
when the feature works and raises when it does not; run() turns that into a Check.

Kernel modules are imported inside the probes: `import bpfgate.doctor` stays cheap and works where
libbpf is absent (the report then says so, probe by probe).

Nothing a probe makes survives it: programs and maps close with their object, links with their fd,
tc/XDP attachments live in a scratch namespace the kernel destroys, the scratch cgroup is removed.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from bpfgate.doctor import scratch, system
from bpfgate.doctor.model import MISSING, OK, Check, cause, errno_name, reason
from bpfgate.errors import BpfgateError, NotFound, NotSupported

if TYPE_CHECKING:
    from bpfgate.kernel.objects import BpfObject, Program

OBJECT = "probes"
MAPS = ("probe_hash", "probe_events", "probe_sockmap")
PROBE_MAGIC = 0xB9F9A7E5  # bg_probe_ringbuf's record
XDP_PASS = 2
BPF_SK_SKB_STREAM_VERDICT, BPF_SK_MSG_VERDICT = 5, 7
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
RUN_WAIT = 3.0  # seconds for a frame to be seen crossing a fresh scratch veth (usually well under 0.1)

# Ethernet + IPv4 + UDP between two benchmarking-range addresses (198.18.0.1 -> 198.18.0.2). Probes only
# run it through BPF_PROG_TEST_RUN or inject it into a program that drops it: nothing is ever sent.
FRAME = (bytes.fromhex("020000000002" "020000000001" "0800")
         + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + 18, 0, 0x4000, 64, 17, 0,
                       bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
         + struct.pack("!HHHH", 40000, 9, 8 + 18, 0) + bytes(18))


class ProbeFailed(BpfgateError):
    """A probe's own diagnosis (the feature is absent for a reason we can name)."""

    def __init__(self, op: str, why: str, err: int | None = None, *, fix: str | None = None):
        self.errno = err
        self.fix = fix
        super().__init__(op, why)

    @classmethod
    def wrap(cls, op: str, exc: BpfgateError) -> "ProbeFailed":
        """`exc` renamed after what the probe was doing (the program's SEC, not the object file)."""
        name = errno_name(exc)
        return cls(op, cause(exc), getattr(errno, name) if name else None)


@contextmanager
def loaded(prog: str, maps: tuple[str, ...] = ()) -> Iterator["BpfObject"]:
    """probes.o with only `prog` loaded and only `maps` created (so a map type the kernel lacks breaks
    only the probe that needs it)."""
    from bpfgate.kernel.objects import BpfObject

    obj = BpfObject.open(OBJECT)
    try:
        for name in obj.program_names():
            obj.set_autoload(name, name == prog)
        for name in MAPS:
            obj.set_autocreate(name, name in maps)
        section = obj.program(prog).section
        try:
            obj.load()
        except BpfgateError as e:
            raise ProbeFailed.wrap(f"load {section}", e) from None
        yield obj
    finally:
        obj.close()


# ---- packet path ------------------------------------------------------------------------------------


def _runs_on_frames(prog: "Program", senders: list[str], what: str) -> None:
    """Send FRAME from each interface in `senders` (scratch namespace), one after the other, and require
    `prog` to run on each: attached is not enough, it must see packets. run_cnt counts only while
    run-time stats are on, which they are for this call only.

    A frame is re-sent until it is seen (bounded): a fresh veth drops what it is given until the
    kernel's link watcher has activated its queue, which happens asynchronously after `up`. Nothing
    else sends in the scratch namespace, so a count that moves after a send is that send's frame."""
    from bpfgate.kernel.stats import stats_enabled

    with stats_enabled():
        for ifname in senders:
            before = prog.info().run_cnt
            deadline = time.monotonic() + RUN_WAIT
            while not _sent_and_seen(prog, ifname, before):
                if time.monotonic() > deadline:
                    raise ProbeFailed(f"run {what}", f"attached, but it did not run on frames sent from {ifname} "
                                                     f"through the scratch veth within {RUN_WAIT:g} s")


def _sent_and_seen(prog: "Program", ifname: str, before: int, wait: float = 0.1) -> bool:
    scratch.send_frame(ifname, FRAME)
    until = time.monotonic() + wait
    while time.monotonic() < until:
        if prog.info().run_cnt > before:
            return True
        time.sleep(0.002)
    return False


def probe_tc() -> str:
    from bpfgate.kernel import tc

    with loaded("bg_probe_tc") as obj, scratch.netns_with_veth() as veth:
        prog = obj.program("bg_probe_tc")
        tc.ensure_clsact(veth.name)
        for direction in ("ingress", "egress"):
            f = tc.add_filter(veth.name, direction, prog.fd, name="bg_probe_tc")
            if f.prog_id != prog.id:
                raise ProbeFailed(f"attach tc {direction} filter", f"kernel reports prog id {f.prog_id}, not {prog.id}")
        # one frame leaves through veth's egress, one arrives from the peer at its ingress
        _runs_on_frames(prog, [veth.name, veth.peer], "tc filters")
    return "clsact qdisc + direct-action bpf filters (ingress, egress) on a scratch veth, run on frames"


def probe_tcx() -> str:
    from bpfgate.kernel import links

    with loaded("bg_probe_tc") as obj, scratch.netns_with_veth() as veth:
        prog = obj.program("bg_probe_tc")
        with links.attach_tcx(prog, veth.ifindex, "ingress") as link:
            kind = link.info().type
            if kind != "tcx":
                raise ProbeFailed("attach tcx ingress", f"the kernel made a {kind!r} link")
            _runs_on_frames(prog, [veth.peer], "tcx ingress")
    return "tcx ingress link on a scratch veth (BPF_LINK_CREATE), run on a frame"


def _probe_xdp(mode: str) -> str:
    from bpfgate.kernel import netlink

    with loaded("bg_probe_xdp") as obj, scratch.netns_with_veth() as veth:
        prog = obj.program("bg_probe_xdp")
        state = netlink.xdp_attach(veth.name, prog.fd, mode=mode)
        try:
            if state.mode != mode:
                raise ProbeFailed(f"attach XDP ({mode})", f"the kernel reports mode {state.mode!r}")
            _runs_on_frames(prog, [veth.peer], f"XDP ({mode})")
        finally:
            netlink.xdp_detach(veth.name)
    return f"XDP {mode} mode on a scratch veth, run on a frame"


def probe_xdp_native() -> str:
    return _probe_xdp("native")


def probe_xdp_generic() -> str:
    return _probe_xdp("generic")


def probe_maps() -> str:
    from bpfgate.kernel.testrun import test_run

    with loaded("bg_probe_map", ("probe_hash",)) as obj:
        obj.map("probe_hash")[0] = 0x2A
        got = test_run(obj.program("bg_probe_map"), FRAME).retval
    if got != 0x2A:
        raise ProbeFailed("read a hash map from BPF", f"the program read {got:#x}, Python wrote 0x2a")
    return "hash map written from Python, read back by a program"


def probe_ringbuf() -> str:
    from bpfgate.kernel.ringbuf import RingBuffer
    from bpfgate.kernel.testrun import test_run

    with loaded("bg_probe_ringbuf", ("probe_events",)) as obj:
        with RingBuffer(obj.map("probe_events")) as rb:
            test_run(obj.program("bg_probe_ringbuf"), FRAME)
            rb.consume()
            records = rb.drain()
    if len(records) != 1 or int.from_bytes(records[0][:8], "little") != PROBE_MAGIC:
        raise ProbeFailed("receive a ring buffer record", f"got {len(records)} record(s), expected 1 with the probe's value")
    return "record submitted by a program, consumed from Python"


def probe_test_run() -> str:
    from bpfgate.kernel.testrun import test_run

    with loaded("bg_probe_xdp") as obj:
        res = test_run(obj.program("bg_probe_xdp"), FRAME, repeat=10)
    if res.retval != XDP_PASS:
        raise ProbeFailed("BPF_PROG_TEST_RUN", f"XDP program returned {res.retval}, expected XDP_PASS")
    return f"XDP program run in the kernel on a test frame ({res.duration_ns} ns/run)"


def probe_xdp_live_frames() -> str:
    from bpfgate.kernel.testrun import xdp_live_frames

    with loaded("bg_probe_xdp_drop") as obj, scratch.netns_with_veth() as veth:
        try:
            xdp_live_frames(obj.program("bg_probe_xdp_drop"), FRAME, repeat=8, ifindex=veth.ifindex)
        except BpfgateError as e:
            if errno_name(e) == "EINVAL" and _older_than(5, 18):   # the flag is unknown there
                raise NotSupported("BPF_F_TEST_XDP_LIVE_FRAMES", "the kernel rejects live-frame test runs",
                                   min_kernel="5.18", errno=errno.EINVAL) from None
            raise
    return "8 frames injected into a scratch veth and dropped (BPF_F_TEST_XDP_LIVE_FRAMES)"


def _older_than(major: int, minor: int) -> bool:
    try:
        have = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return have < (major, minor)


# ---- tracing ---------------------------------------------------------------------------------------------


def _attach_auto(prog: str) -> str:
    from bpfgate.kernel import links

    with loaded(prog) as obj:
        try:
            link = links.attach_auto(obj, prog)
        except BpfgateError as e:
            raise ProbeFailed.wrap(f"attach {obj.program(prog).section}", e) from None
        with link:
            try:
                return link.info().type
            except BpfgateError:   # attached; before 5.15 a perf event (tracepoint, kprobe) has no BPF link
                return "perf_event"


def probe_tracepoints() -> str:
    if not system.tracefs_mounted():
        raise ProbeFailed("attach tracepoint sock/inet_sock_set_state",
                          f"tracefs is not mounted at {system.TRACEFS}", errno.ENOENT, fix=system.MOUNT_TRACEFS)
    _attach_auto("bg_probe_tp")
    return "tracepoint sock/inet_sock_set_state attached (perf event through tracefs)"


def probe_tp_btf() -> str:
    _attach_auto("bg_probe_tp_btf")
    return "tp_btf/inet_sock_set_state attached"


def probe_raw_tp() -> str:
    _attach_auto("bg_probe_raw_tp")
    return "raw_tp/inet_sock_set_state attached"


def probe_kprobes() -> str:
    try:
        _attach_auto("bg_probe_kprobe")
    except BpfgateError as e:
        if e.op.startswith("attach") and not os.path.exists(KPROBE_PMU):
            raise ProbeFailed(e.op, f"{e.cause}: no kprobe PMU ({KPROBE_PMU}), the kernel is built without "
                                    "CONFIG_KPROBES", errno.ENOENT) from None
        raise
    return "kprobe/tcp_v4_connect attached"


def probe_fentry() -> str:
    try:
        _attach_auto("bg_probe_fentry")
    except BpfgateError as e:
        if errno_name(e) == "EPERM" and system.effective_caps() >> system.CAPS["CAP_BPF"] & 1:
            raise ProbeFailed(e.op, f"{e.cause}: the kernel refuses fentry (BPF trampoline) programs even with "
                                    "CAP_BPF/CAP_PERFMON", errno.EPERM) from None
        raise
    return "fentry/tcp_v4_connect attached (BPF trampoline)"


# ---- cgroups and sockets ----------------------------------------------------------------------------------


def _probe_cgroup(prog: str) -> str:
    from bpfgate.kernel import links

    root = system.cgroup2_mount()
    if root is None:
        raise ProbeFailed(f"attach {prog}", "no cgroup v2 mount in /proc/self/mounts", errno.ENOENT)
    with loaded(prog) as obj, scratch.cgroup(root) as cg:
        with links.attach_cgroup(obj, prog, cg):
            pass
    return f"attached to a scratch cgroup under {root}"


def probe_cgroup_skb() -> str:
    return "cgroup_skb/egress " + _probe_cgroup("bg_probe_cgroup_skb")


def probe_sockops() -> str:
    return "sockops " + _probe_cgroup("bg_probe_sockops")


def _probe_sockmap(prog: str, attach_type: int, what: str) -> str:
    """Attach `prog` to a sockmap, put both ends of a loopback TCP connection (scratch namespace) in it,
    and require the bytes sent to arrive with the program having run on them."""
    from bpfgate.errors import from_errno
    from bpfgate.kernel import libbpf as L
    from bpfgate.kernel.stats import stats_enabled

    payload = b"bpfgate doctor sockmap probe"
    with loaded(prog, ("probe_sockmap",)) as obj, scratch.netns(), scratch.tcp_pair() as (client, server):
        p, sockmap = obj.program(prog), obj.map("probe_sockmap")
        if L.bpf_prog_attach(p.fd, sockmap.fd, attach_type, 0) != 0:
            raise from_errno(f"attach {what} to a sockmap", L.libc_errno())
        try:
            sockmap[0], sockmap[1] = client.fileno(), server.fileno()  # programs apply to sockets added after
            with stats_enabled():
                before = p.info().run_cnt
                client.sendall(payload)
                got = _recv(server, len(payload))
                ran = p.info().run_cnt - before
        finally:
            L.bpf_prog_detach2(p.fd, sockmap.fd, attach_type)
    if got != payload:
        raise ProbeFailed(f"pass data through {what}", f"sent {len(payload)} bytes, received {len(got)}")
    if ran < 1:
        raise ProbeFailed(f"run {what}", "data passed, but the program never ran on it")
    return f"{what} on a sockmap holding a loopback TCP connection: data passed, program ran"


def _recv(sock, n: int) -> bytes:
    data = b""
    try:
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:  # timeout: report what arrived
        pass
    return data


def probe_sk_msg() -> str:
    return _probe_sockmap("bg_probe_sk_msg", BPF_SK_MSG_VERDICT, "sk_msg verdict")


def probe_sk_skb() -> str:
    return _probe_sockmap("bg_probe_sk_skb", BPF_SK_SKB_STREAM_VERDICT, "sk_skb stream verdict")


# ---- registry ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str
    fn: Callable[[], str]
    impact: str  # what in bpfgate is disabled or degraded when the feature is missing


PROBES = {p.name: p for p in (
    Probe("maps", probe_maps, "nothing works: every bpfgate program keeps its rules and counters in maps"),
    Probe("ringbuf", probe_ringbuf, "event streams (trace, inspect) must fall back to the perf buffer"),
    Probe("tc", probe_tc, "no TC gate, rewrite or steering: the core packet path"),
    Probe("xdp_generic", probe_xdp_generic, "no XDP gate at all (the TC gate still works)"),
    Probe("xdp_native", probe_xdp_native, "XDP gates run in generic (skb) mode: same behaviour, slower"),
    Probe("tcx", probe_tcx, "nothing essential: TC attaches through clsact filters instead of TCX links"),
    Probe("test_run", probe_test_run, "no policy self-test or per-packet cost benchmarks (BPF_PROG_TEST_RUN)"),
    Probe("xdp_live_frames", probe_xdp_live_frames, "no XDP live-frames traffic generator for the datapath benchmark"),
    Probe("tracepoints", probe_tracepoints, "trace tcp uses tp_btf instead of classic tracepoints"),
    Probe("tp_btf", probe_tp_btf, "trace tcp falls back to raw or classic tracepoints"),
    Probe("raw_tracepoints", probe_raw_tp, "trace tcp cannot use raw tracepoints (tp_btf or classic ones remain)"),
    Probe("kprobes", probe_kprobes, "trace tcp uses the tracepoint backend (no kprobe on tcp_v4_connect)"),
    Probe("fentry", probe_fentry, "nothing essential: tracers use tracepoints instead of fentry"),
    Probe("cgroup_skb", probe_cgroup_skb, "no per-cgroup packet policy (cgroup_skb)"),
    Probe("sockops", probe_sockops, "no sockops TCP tuning, and sockmap acceleration cannot collect sockets"),
    Probe("sk_msg", probe_sk_msg, "no sockmap socket acceleration (sk_msg redirect)"),
    Probe("sk_skb", probe_sk_skb, "no sockmap stream verdicts (sk_skb)"),
)}


def run(name: str) -> Check:
    """Run probe `name`; never raises for a missing feature (that is the answer, not an error)."""
    probe = PROBES.get(name)
    if probe is None:
        raise NotFound(f"run probe {name!r}", "no such probe", hint=", ".join(PROBES))
    try:
        detail = probe.fn()
    except (BpfgateError, OSError) as e:
        err = errno_name(e)
        fix = getattr(e, "fix", None)
        if err in ("EPERM", "EACCES") and not system.effective_caps() >> system.CAPS["CAP_BPF"] & 1:
            fix = fix or "run as root (bpfgate needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        return Check(name, "probe", MISSING, reason(e), impact=probe.impact, fix=fix, errno=err)
    except Exception as e:  # a bug in a probe must not take the report down: show it as the reason
        return Check(name, "probe", MISSING, f"probe crashed: {reason(e)}", impact=probe.impact)
    return Check(name, "probe", OK, detail)
