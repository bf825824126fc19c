"""TCP tuning per cgroup (sock_ops): congestion control, send/receive buffer sizes, no-delay and the initial
congestion window for the TCP sockets a cgroup's processes open (connect or listen) from now on; with
samples on, per-connection RTT, retransmit and end-of-connection samples (events) and counters (metrics),
so the effect of a change shows.

    from bpfgate import tune
    att = tune.apply("/sys/fs/cgroup/app", cc="bbr", sndbuf=1 << 20, iw=20, nodelay=True, samples=True)
    with EventStream([tune.event_source("/sys/fs/cgroup/app")]) as s: ...   # `bpfgate tune PATH --watch`
    tune.totals("/sys/fs/cgroup/app")      # Totals: sockets tuned, RTT samples + histogram, retransmits
    tune.remove("/sys/fs/cgroup/app")      # or `bpfgate detach --cgroup PATH`

The settings are checked before anything loads: a congestion control the kernel does not offer is refused
naming those it does (/proc/sys/net/ipv4/tcp_available_congestion_control: loaded ones; bpf_setsockopt
cannot load a module). The program is pinned with its config map under /sys/fs/bpf/bpfgate/tune/<cgroup>/
and recorded (owner "tune"): `status` lists it, `detach` removes it with its pins. Applying again to the same
cgroup replaces the settings.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import socket
from dataclasses import dataclass

from bpfgate import attach, cgroups, contract
from bpfgate.errors import BadInput, BpfgateError, NotFound, NotSupported
from bpfgate.inspect.events import Context, EventKind, EventSource, addr_str, open_producer, register_kind
from bpfgate.kernel import pins
from bpfgate.kernel.maps import Map
from bpfgate.kernel.objects import packaged_path

OBJECT = OWNER = "tune"
C = contract.constants("tune")
AVAILABLE_CC = "/proc/sys/net/ipv4/tcp_available_congestion_control"
BUF_MAX = 1 << 30
IW_MAX = 1024   # segments: beyond any sane initial window, and well inside the kernel's cwnd clamp
SAMPLE_KINDS = {C.BG_TUNE_EV_RTT: "rtt", C.BG_TUNE_EV_RETRANS: "retransmit", C.BG_TUNE_EV_END: "end"}
# bpf_setsockopt(SOL_TCP, TCP_NODELAY) from sock_ops: refused at run time (EINVAL) before this Linux
NODELAY_SINCE = "6.1"
# pinned beside the link: what a later `--watch`, `metrics` and `detach` open
PINNED_MAPS = ("bg_tune_cfg", "bg_tune_stats", "events", "bg_stats")


def available_cc() -> list[str]:
    try:
        with open(AVAILABLE_CC) as f:
            return f.read().split()
    except OSError:
        return []


def _check(cc: str | None, sndbuf: int | None, rcvbuf: int | None, nodelay: bool, iw: int | None,
           samples: bool, sample_gap: float) -> None:
    op = "tune TCP"
    if cc is None and sndbuf is None and rcvbuf is None and not nodelay and iw is None and not samples:
        raise BadInput(op, "nothing to set",
                       hint="give --cc, --sndbuf, --rcvbuf, --nodelay, --iw and/or --samples")
    if cc is not None:
        have = available_cc()
        if cc not in have:
            raise BadInput(op, f"congestion control {cc!r} is not available in this kernel",
                           hint=f"available: {', '.join(have) or 'none listed'}; modprobe tcp_{cc} adds one built as a module")
        if len(cc.encode()) >= C.BG_TUNE_CC_MAX:
            raise BadInput(op, f"congestion control name {cc!r} is too long")
    for name, v in (("sndbuf", sndbuf), ("rcvbuf", rcvbuf)):
        if v is not None and not 1 <= v <= BUF_MAX:
            raise BadInput(op, f"{name} {v} is outside 1..{BUF_MAX} bytes")
    if iw is not None and not 1 <= iw <= IW_MAX:
        raise BadInput(op, f"initial congestion window {iw} is outside 1..{IW_MAX} segments")
    if not 0 <= sample_gap <= 3600:
        raise BadInput(op, f"sample gap {sample_gap} s is outside 0..3600 s")


def pin_dir(cgroup: str) -> str:
    return pins.pin_path(OWNER, cgroups.dir_name(cgroup))


def apply(cgroup: str, *, cc: str | None = None, sndbuf: int | None = None, rcvbuf: int | None = None,
          nodelay: bool = False, iw: int | None = None, samples: bool = False,
          sample_gap: float = 1.0) -> attach.Attachment:
    """Tune the TCP sockets the cgroup's processes open from now on (connections already open keep theirs).
    `samples`: RTT samples (events: at most one per connection per `sample_gap` seconds), retransmits and
    connection ends as events and counters."""
    cgroup = cgroups.resolve(cgroup)   # before anything loads: a one-line error, nothing attached
    _check(cc, sndbuf, rcvbuf, nodelay, iw, samples, sample_gap)
    if nodelay and (why := nodelay_refused()):
        raise NotSupported("tune --nodelay", why, min_kernel=NODELAY_SINCE)
    cfg = _config(cc, sndbuf, rcvbuf, nodelay, iw, samples, sample_gap)
    pdir = pin_dir(cgroup)
    map_pins = [os.path.join(pdir, m) for m in PINNED_MAPS]
    obj, _ = open_producer(OBJECT, transport="ringbuf")
    with obj:
        _configure(obj, cfg)
        try:
            for name, path in zip(PINNED_MAPS, map_pins):
                pins.unpin(path)
                obj.map(name).pin(path)
            return attach.attach(obj.program("bg_tune_sockops"), attach.Point.of_cgroup(cgroup),
                                 attach.Options(owner=OWNER, pin=os.path.join(pdir, "link"), pins=map_pins),
                                 kind="sockops")
        except BaseException:
            for path in map_pins:
                pins.unpin(path)
            pins.prune_empty(pdir)
            raise


def _config(cc: str | None, sndbuf: int | None, rcvbuf: int | None, nodelay: bool, iw: int | None,
            samples: bool, sample_gap: float) -> ctypes.Structure:
    cfg = contract.struct(OBJECT, "bg_tune_cfg")()
    cfg.flags = ((C.BG_TUNE_CC if cc else 0) | (C.BG_TUNE_SNDBUF if sndbuf else 0)
                 | (C.BG_TUNE_RCVBUF if rcvbuf else 0) | (C.BG_TUNE_NODELAY if nodelay else 0)
                 | (C.BG_TUNE_IW if iw else 0) | (C.BG_TUNE_SAMPLES if samples else 0))
    cfg.sndbuf, cfg.rcvbuf, cfg.iw = sndbuf or 0, rcvbuf or 0, iw or 0
    cfg.sample_gap_ms = round(sample_gap * 1000)
    if cc:
        name = cc.encode()
        ctypes.memmove(ctypes.addressof(cfg) + type(cfg).cc.offset, name, len(name))   # NUL-padded by the zeroed struct
    return cfg


def _configure(obj, cfg: ctypes.Structure) -> None:
    obj.map("bg_tune_cfg").update_batch_raw(bytes(ctypes.c_uint32(0)), bytes(cfg), 1)


@functools.lru_cache(maxsize=1)
def nodelay_refused() -> str | None:
    """Why this kernel's sock_ops programs cannot set TCP_NODELAY (None: they can). Found by doing it, once
    per process: the real program, set to no-delay only, on a scratch cgroup; a forked child joins that
    cgroup, connects over the loopback of a scratch network namespace and reads TCP_NODELAY back (before
    Linux 6.1 bpf_setsockopt refuses the option when the program runs, not when it loads)."""
    from bpfgate.doctor import scratch, system
    from bpfgate.kernel import links

    root = system.cgroup2_mount()
    if root is None:
        raise NotFound("check tune --nodelay", "no cgroup v2 mount in /proc/self/mounts")
    obj, _ = open_producer(OBJECT, transport="ringbuf")
    with obj, scratch.netns(), scratch.cgroup(root) as cg:
        _configure(obj, _config(None, None, None, True, None, False, 1.0))
        with links.attach_cgroup(obj, "bg_tune_sockops", cg), socket.create_server(("127.0.0.1", 0)) as lsn:
            status = _in_cgroup(cg, lambda: _connected_nodelay(lsn.getsockname()))
    if status == 0:
        return None
    if status == 1:
        return "bpf_setsockopt() in a sock_ops program cannot set TCP_NODELAY on this kernel"
    raise BpfgateError("check tune --nodelay", f"the scratch connection failed (status {status})")


def _connected_nodelay(addr) -> int:
    with socket.create_connection(addr, timeout=10) as s:
        return 0 if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) else 1


def _in_cgroup(cgroup: str, fn) -> int:
    """fn() in a forked child moved into `cgroup` (its exit status; 2: it failed). Only the child moves:
    this process stays where it is."""
    pid = os.fork()
    if pid == 0:
        status = 2
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            status = fn()
        finally:
            os._exit(status)
    _, wstatus = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wstatus)


def remove(cgroup: str) -> list[str]:
    return attach.detach_matching(target=cgroups.normalise(cgroup), owner=OWNER, any_netns=True)


# ---- samples: events and counters ---------------------------------------------------------------------


def _sample_fields(rec, ctx: Context) -> dict:
    return {"sample": SAMPLE_KINDS.get(rec.kind, rec.kind), "family": rec.family,
            "src": addr_str(rec.family, rec.saddr), "sport": rec.sport,
            "dst": addr_str(rec.family, rec.daddr), "dport": rec.dport,
            "srtt_us": rec.srtt_us, "cwnd": rec.snd_cwnd, "retransmits": rec.total_retrans,
            "bytes_acked": rec.bytes_acked, "bytes_received": rec.bytes_received}

register_kind(EventKind(C.BG_EV_TUNE, "tcp_sample", "bg_tune_event", _sample_fields))


def _tuned(cgroup: str) -> str:
    pdir = pin_dir(cgroups.normalise(cgroup))
    if not os.path.exists(os.path.join(pdir, "events")):
        raise NotFound(f"TCP samples of {cgroup}", "this cgroup is not tuned",
                       hint="bpfgate tune CGROUP --samples ... first")
    return pdir


def event_source(cgroup: str) -> EventSource:
    """The pinned ring buffer of a tuned cgroup (records only while it was tuned with samples)."""
    pdir = _tuned(cgroup)
    return EventSource.from_pins(f"tune:{cgroups.normalise(cgroup)}", os.path.join(pdir, "events"),
                                 str(packaged_path(OBJECT)), stats_pin=os.path.join(pdir, "bg_stats"))


@dataclass(frozen=True)
class Totals:
    tuned: int   # sockets (connect or listen) the settings were applied to
    failed: int  # bpf_setsockopt calls the kernel refused
    rtt_samples: int
    retransmits: int
    ended: int   # sampled connections that closed
    rtt_hist: tuple[int, ...]   # [i]: smoothed RTTs below 2**i us (not counted in [i-1]); the last: the rest


def totals(cgroup: str) -> Totals:
    m = Map.from_pin(os.path.join(_tuned(cgroup), "bg_tune_stats"), ctypes.c_uint32,
                     contract.struct(OBJECT, "bg_tune_stats"))
    try:
        per_cpu = m.lookup(0)
    finally:
        m.close()
    hist = tuple(sum(v.rtt_hist[i] for v in per_cpu) for i in range(C.BG_TUNE_RTT_BUCKETS))
    return Totals(*(sum(getattr(v, f) for v in per_cpu) for f in ("tuned", "failed", "rtt_samples",
                                                                   "retransmits", "ended")), hist)


def tuned_cgroups() -> list[str]:
    return sorted(cgroups.from_dir_name(os.path.basename(os.path.dirname(p)))
                  for p in glob.glob(os.path.join(pins.pin_path(OWNER), "*", "bg_tune_stats")))


class TuneCollector:
    """Prometheus, read at scrape time from every tuned cgroup: bpfgate_tune_sockets_total{cgroup},
    bpfgate_tune_setsockopt_failures_total{cgroup}, bpfgate_tune_retransmits_total{cgroup},
    bpfgate_tune_connections_ended_total{cgroup} and the histogram bpfgate_tune_srtt_seconds{cgroup}
    (smoothed RTT at each RTT sample; buckets at powers of two microseconds)."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        fams = {f: CounterMetricFamily(f"bpfgate_tune_{name}", why, labels=["cgroup"]) for f, name, why in (
            ("tuned", "sockets", "TCP sockets the cgroup's tuning was applied to"),
            ("failed", "setsockopt_failures", "Settings the kernel refused (bpf_setsockopt)"),
            ("retransmits", "retransmits", "Retransmissions of sampled connections"),
            ("ended", "connections_ended", "Sampled connections that closed"))}
        rtt = HistogramMetricFamily("bpfgate_tune_srtt_seconds", "Smoothed RTT at each RTT sample",
                                    labels=["cgroup"])
        for cg in tuned_cgroups():
            try:
                t = totals(cg)
            except BpfgateError:   # detached meanwhile
                continue
            for f, fam in fams.items():
                fam.add_metric([cg], getattr(t, f))
            cum, buckets = 0, []
            for i, n in enumerate(t.rtt_hist[:-1]):
                cum += n
                buckets.append((repr((1 << i) / 1e6), cum))
            buckets.append(("+Inf", cum + t.rtt_hist[-1]))
            rtt.add_metric([cg], buckets, sum_value=0.0)   # the kernel keeps no sum: a bucket count only
        yield from (*fams.values(), rtt)
