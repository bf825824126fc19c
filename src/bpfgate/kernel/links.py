"""Attachments made through libbpf and bpf(2): BPF links (TCX, XDP, tracepoints, cgroups), and the libbpf
`bpf_tc_*` netlink helpers. (The netlink filter recipe `tc` users know lives in kernel/tc.py.)

Links detach when their last reference goes away, unless pinned: pin a link to keep an attachment after
the process exits, unpin it (or `detach()`) to remove it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import Any

from bpfgate.errors import AttachError, BpfgateError, NotSupported, from_errno
from bpfgate.kernel import libbpf as L
from bpfgate.kernel.pins import ensure_parent

BPF_LINK_CREATE = 28
BPF_XDP = 37
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47
LINK_TYPES = {1: "raw_tracepoint", 2: "tracing", 3: "cgroup", 4: "iter", 5: "netns", 6: "xdp",
              7: "perf_event", 8: "kprobe_multi", 9: "struct_ops", 10: "netfilter", 11: "tcx",
              12: "uprobe_multi", 13: "netkit", 14: "sockmap"}

# XDP attach flags (uapi if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST, XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 1, 2, 4
XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE, "auto": 0}

# libbpf enum bpf_tc_attach_point
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TC_F_REPLACE = 1


def _prog_fd(prog: Any) -> int:
    return prog if isinstance(prog, int) else prog.fd


def _direction(direction: str) -> str:
    if direction not in ("ingress", "egress"):
        raise BpfgateError("attach", f"direction must be 'ingress' or 'egress', not {direction!r}")
    return direction


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: str
    prog_id: int
    ifindex: int = 0
    attach_type: int = 0


def link_info(fd: int) -> LinkInfo:
    info = L.LinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise from_errno("read link info", L.libc_errno())
    ltype = LINK_TYPES.get(info.type, str(info.type))
    ifindex = attach_type = 0
    u = bytes(info.union)
    if ltype == "xdp":
        ifindex = int.from_bytes(u[0:4], "little")
    elif ltype in ("tcx", "netkit"):
        ifindex, attach_type = int.from_bytes(u[0:4], "little"), int.from_bytes(u[4:8], "little")
    return LinkInfo(info.id, ltype, info.prog_id, ifindex, attach_type)


class Link:
    """A BPF link: an attachment the kernel tracks as an object (fd, id, pinnable)."""

    def __init__(self, fd: int, *, what: str, libbpf_ptr: int | None = None):
        self._fd = fd
        self._ptr = libbpf_ptr
        self.what = what

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise BpfgateError(f"use link {self.what}", "already detached")
        return self._fd

    def info(self) -> LinkInfo:
        return link_info(self.fd)

    def pin(self, path: str) -> None:
        ensure_parent(path)
        if L.bpf_obj_pin(self.fd, path.encode()) != 0:
            raise from_errno(f"pin link {self.what} at {path}", L.libc_errno())

    @classmethod
    def from_pin(cls, path: str) -> "Link":
        fd = L.bpf_obj_get(path.encode())
        if fd < 0:
            raise from_errno(f"open pinned link {path}", L.libc_errno())
        return cls(fd, what=path)

    @classmethod
    def from_id(cls, link_id: int) -> "Link":
        fd = L.bpf_link_get_fd_by_id(link_id)
        if fd < 0:
            raise from_errno(f"open link id {link_id}", L.libc_errno())
        return cls(fd, what=f"id {link_id}")

    def detach(self) -> None:
        """Detach now, even if pinned elsewhere (BPF_LINK_DETACH), then close."""
        if self._fd >= 0 and L.bpf_link_detach(self._fd) != 0:
            err = L.libc_errno()
            if err not in (errno.ENOLINK, errno.EINVAL, errno.EOPNOTSUPP):
                raise from_errno(f"detach link {self.what}", err)
        self.close()

    def close(self) -> None:
        """Drop our reference (the attachment stays only if pinned)."""
        if self._ptr:
            L.bpf_link__destroy(self._ptr)  # closes the fd too
            self._ptr = None
        elif self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Link({self.what}, fd={self._fd})"


def _from_libbpf(ptr: int, what: str) -> Link:
    if not ptr:
        err = L.libc_errno() or errno.EINVAL
        hint = "kernel lacks kprobes/fentry? see `bpfgate doctor`" if err in (errno.ENOENT, errno.EOPNOTSUPP) else None
        raise from_errno(f"attach {what}", err, hint=hint)
    return Link(L.bpf_link__fd(ptr), what=what, libbpf_ptr=ptr)


# ---- tracing / cgroup via libbpf's section-driven attach -------------------------------------------


def attach_auto(obj: Any, prog_name: str) -> Link:
    """Attach by the program's SEC() (tp_btf/..., tracepoint/..., raw_tp/..., kprobe/...)."""
    with L.captured_log():
        ptr = L.bpf_program__attach(obj.program_ptr(prog_name))
    return _from_libbpf(ptr, prog_name)


def attach_cgroup(obj: Any, prog_name: str, cgroup_path: str) -> Link:
    op = f"attach {prog_name} to cgroup {cgroup_path}"
    try:
        cg_fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise from_errno(op, errno.ENOENT) from None
    try:
        with L.captured_log():
            ptr = L.bpf_program__attach_cgroup(obj.program_ptr(prog_name), cg_fd)
        return _from_libbpf(ptr, op)
    finally:
        os.close(cg_fd)


# ---- raw BPF_LINK_CREATE: TCX and XDP links ---------------------------------------------------------


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("relative_fd", ctypes.c_uint32),  # tcx.relative_fd / relative_id
        ("_pad", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * 96),  # the rest of union bpf_attr: must be zero
    ]


BPF_F_BEFORE = 1 << 3  # TCX: put the new link first in the chain (with no relative target)
BPF_LINK_UPDATE = 29
BPF_F_REPLACE = 1 << 2   # link update: only if old_prog_fd is the program the link runs


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("new_prog_fd", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("old_prog_fd", ctypes.c_uint32), ("_rest", ctypes.c_uint8 * 112)]


def link_update(link: Link, prog: Any, old_prog: Any = None) -> None:
    """BPF_LINK_UPDATE: the link runs `prog` from now on, atomically (no packet or call sees neither);
    with `old_prog`, only if that is the program it runs (EPERM otherwise)."""
    attr = _LinkUpdateAttr(link_fd=link.fd, new_prog_fd=_prog_fd(prog))
    if old_prog is not None:
        attr.flags, attr.old_prog_fd = BPF_F_REPLACE, _prog_fd(old_prog)
    rc = L.sys_bpf(BPF_LINK_UPDATE, attr)
    if rc < 0:
        raise from_errno(f"replace the program of link {link.what}", -rc)


def link_create(prog: Any, target: int, attach_type: int, what: str, flags: int = 0) -> Link:
    """BPF_LINK_CREATE: `target` is an ifindex (TCX, XDP) or a file descriptor (a cgroup directory)."""
    attr = _LinkCreateAttr(prog_fd=_prog_fd(prog), target_ifindex=target, attach_type=attach_type, flags=flags)
    fd = L.sys_bpf(BPF_LINK_CREATE, attr)
    if fd < 0:
        err = -fd
        if attach_type in (BPF_TCX_INGRESS, BPF_TCX_EGRESS) and err == errno.EINVAL:
            raise NotSupported("TCX", "the kernel rejects TCX links", min_kernel="6.6", errno=err)
        raise from_errno(f"attach {what}", err)
    return Link(fd, what=what)


def attach_tcx(prog: Any, ifindex: int, direction: str, *, first: bool = False) -> Link:
    """A TCX link (kernel >= 6.6): tc without qdiscs, ordered, owned by a link. `first`: run before every
    program already there (observers such as flow accounting and capture must see what a gate drops)."""
    at = BPF_TCX_INGRESS if _direction(direction) == "ingress" else BPF_TCX_EGRESS
    return link_create(prog, ifindex, at, f"tcx {direction} ifindex {ifindex}", BPF_F_BEFORE if first else 0)


def attach_xdp_link(prog: Any, ifindex: int) -> Link:
    """An XDP link: detaches with the link instead of lingering on the device."""
    return link_create(prog, ifindex, BPF_XDP, f"xdp link ifindex {ifindex}")


# ---- XDP and TC through libbpf's netlink helpers -----------------------------------------------------


def xdp_attach(prog: Any, ifindex: int, mode: str = "auto", *, replace: bool = True) -> None:
    if mode not in XDP_MODES:
        raise BpfgateError("attach xdp", f"mode must be one of {', '.join(XDP_MODES)}, not {mode!r}")
    flags = XDP_MODES[mode] | (0 if replace else XDP_FLAGS_UPDATE_IF_NOEXIST)
    rc = L.bpf_xdp_attach(ifindex, _prog_fd(prog), flags, None)
    if rc != 0:
        hint = "the driver has no native XDP: try mode generic" if mode == "native" and -rc == errno.EOPNOTSUPP else None
        raise from_errno(f"attach xdp ({mode}) to ifindex {ifindex}", -rc, hint=hint)


def xdp_detach(ifindex: int, mode: str = "auto") -> None:
    rc = L.bpf_xdp_detach(ifindex, XDP_MODES.get(mode, 0), None)
    if rc != 0:
        raise from_errno(f"detach xdp from ifindex {ifindex}", -rc)


def xdp_query(ifindex: int) -> dict[str, int]:
    opts = L.XdpQueryOpts(sz=ctypes.sizeof(L.XdpQueryOpts))
    rc = L.bpf_xdp_query(ifindex, 0, ctypes.byref(opts))
    if rc != 0:
        raise from_errno(f"query xdp on ifindex {ifindex}", -rc)
    return {"prog_id": opts.prog_id, "drv_prog_id": opts.drv_prog_id, "skb_prog_id": opts.skb_prog_id,
            "hw_prog_id": opts.hw_prog_id, "attach_mode": opts.attach_mode}


def _tc_hook(ifindex: int, direction: str) -> L.TcHook:
    point = BPF_TC_INGRESS if _direction(direction) == "ingress" else BPF_TC_EGRESS
    return L.TcHook(sz=ctypes.sizeof(L.TcHook), ifindex=ifindex, attach_point=point)


def tc_attach_libbpf(prog: Any, ifindex: int, direction: str, *, handle: int = 1, priority: int = 1,
                     replace: bool = False) -> tuple[int, bool]:
    """clsact + direct-action filter via libbpf's bpf_tc_*; returns (prog_id, created_qdisc)."""
    hook = _tc_hook(ifindex, direction)
    hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS  # the clsact qdisc itself
    rc = L.bpf_tc_hook_create(ctypes.byref(hook))
    if rc != 0 and -rc != errno.EEXIST:
        raise from_errno(f"create clsact on ifindex {ifindex}", -rc)
    created = rc == 0
    hook = _tc_hook(ifindex, direction)
    opts = L.TcOpts(sz=ctypes.sizeof(L.TcOpts), prog_fd=_prog_fd(prog), handle=handle, priority=priority,
                    flags=BPF_TC_F_REPLACE if replace else 0)
    rc = L.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if rc != 0:
        if created:
            tc_destroy_clsact_libbpf(ifindex)
        raise AttachError(f"attach tc {direction} filter (handle {handle} prio {priority}) on ifindex {ifindex}", -rc)
    return opts.prog_id, created


def tc_detach_libbpf(ifindex: int, direction: str, *, handle: int = 1, priority: int = 1) -> None:
    hook = _tc_hook(ifindex, direction)
    opts = L.TcOpts(sz=ctypes.sizeof(L.TcOpts), handle=handle, priority=priority)
    rc = L.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if rc != 0:
        raise from_errno(f"detach tc {direction} filter (handle {handle} prio {priority})", -rc)


def tc_destroy_clsact_libbpf(ifindex: int) -> None:
    hook = _tc_hook(ifindex, "ingress")
    hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS
    rc = L.bpf_tc_hook_destroy(ctypes.byref(hook))
    if rc != 0 and -rc != errno.ENOENT:
        raise from_errno(f"remove clsact on ifindex {ifindex}", -rc)
