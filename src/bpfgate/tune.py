"""TCP tuning per cgroup (sock_ops): congestion control, send/receive buffer sizes and no-delay for the TCP
sockets a cgroup's processes open (connect or listen) from now on.

    from bpfgate import tune
    att = tune.apply("/sys/fs/cgroup/app", cc="bbr", sndbuf=1 << 20, rcvbuf=1 << 20, nodelay=True)
    tune.remove("/sys/fs/cgroup/app")      # or `bpfgate detach --cgroup PATH`

The settings are checked before anything loads: a congestion control the kernel does not offer is refused
naming those it does (/proc/sys/net/ipv4/tcp_available_congestion_control: loaded ones; bpf_setsockopt
cannot load a module). The program is pinned with its config map under /sys/fs/bpf/bpfgate/tune/<cgroup>/
and recorded (owner "tune"): `status` lists it, `detach` removes it with its pins. Applying again to the same
cgroup replaces the settings.
"""

from __future__ import annotations

import ctypes
import os

from bpfgate import attach, cgroups, contract
from bpfgate.errors import BpfgateError
from bpfgate.kernel import pins
from bpfgate.kernel.objects import BpfObject

OBJECT = OWNER = "tune"
C = contract.constants("tune")
AVAILABLE_CC = "/proc/sys/net/ipv4/tcp_available_congestion_control"
BUF_MAX = 1 << 30


def available_cc() -> list[str]:
    try:
        with open(AVAILABLE_CC) as f:
            return f.read().split()
    except OSError:
        return []


def _check(cc: str | None, sndbuf: int | None, rcvbuf: int | None, nodelay: bool) -> None:
    op = "tune TCP"
    if cc is None and sndbuf is None and rcvbuf is None and not nodelay:
        raise BpfgateError(op, "nothing to set", hint="give --cc, --sndbuf, --rcvbuf and/or --nodelay")
    if cc is not None:
        have = available_cc()
        if cc not in have:
            raise BpfgateError(op, f"congestion control {cc!r} is not available in this kernel",
                               hint=f"available: {', '.join(have) or 'none listed'} (modprobe tcp_{cc} to add it)")
        if len(cc.encode()) >= C.BG_TUNE_CC_MAX:
            raise BpfgateError(op, f"congestion control name {cc!r} is too long")
    for name, v in (("sndbuf", sndbuf), ("rcvbuf", rcvbuf)):
        if v is not None and not 1 <= v <= BUF_MAX:
            raise BpfgateError(op, f"{name} {v} is outside 1..{BUF_MAX} bytes")


def pin_dir(cgroup: str) -> str:
    return pins.pin_path(OWNER, cgroups.dir_name(cgroup))


def apply(cgroup: str, *, cc: str | None = None, sndbuf: int | None = None, rcvbuf: int | None = None,
          nodelay: bool = False) -> attach.Attachment:
    """Tune the TCP sockets the cgroup's processes open from now on (connections already open keep theirs)."""
    cgroup = cgroups.resolve(cgroup)   # before anything loads: a one-line error, nothing attached
    _check(cc, sndbuf, rcvbuf, nodelay)
    cfg = contract.struct(OBJECT, "bg_tune_cfg")()
    cfg.flags = ((C.BG_TUNE_CC if cc else 0) | (C.BG_TUNE_SNDBUF if sndbuf else 0)
                 | (C.BG_TUNE_RCVBUF if rcvbuf else 0) | (C.BG_TUNE_NODELAY if nodelay else 0))
    cfg.sndbuf, cfg.rcvbuf = sndbuf or 0, rcvbuf or 0
    if cc:
        name = cc.encode()
        ctypes.memmove(ctypes.addressof(cfg) + type(cfg).cc.offset, name, len(name))   # NUL-padded by the zeroed struct
    pdir = pin_dir(cgroup)
    cfg_pin = os.path.join(pdir, "bg_tune_cfg")
    with BpfObject.open(OBJECT) as obj:
        obj.load()
        m = obj.map("bg_tune_cfg")
        m.update_batch_raw(bytes(ctypes.c_uint32(0)), bytes(cfg), 1)
        pins.unpin(cfg_pin)
        m.pin(cfg_pin)
        try:
            return attach.attach(obj.program("bg_tune_sockops"), attach.Point.of_cgroup(cgroup),
                                 attach.Options(owner=OWNER, pin=os.path.join(pdir, "link"), pins=[cfg_pin]),
                                 kind="sockops")
        except BaseException:
            pins.unpin(cfg_pin)
            pins.prune_empty(pdir)
            raise


def remove(cgroup: str) -> list[str]:
    return attach.detach_matching(target=cgroups.normalise(cgroup), owner=OWNER, any_netns=True)
