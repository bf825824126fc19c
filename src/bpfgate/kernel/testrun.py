"""BPF_PROG_TEST_RUN: run a program on a packet in the kernel without a device (tests, benchmarks).

XDP live frames (BPF_F_TEST_XDP_LIVE_FRAMES) really transmits/redirects the frames the program returns
XDP_TX/XDP_REDIRECT for: the datapath benchmark's traffic generator.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from bpfgate.errors import from_errno
from bpfgate.kernel import libbpf as L

BPF_F_TEST_RUN_ON_CPU = 1 << 0
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

SKB_CTX = None  # struct __sk_buff is not needed for our tests: the kernel builds one


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    duration_ns: int  # kernel's average per repetition
    data_out: bytes
    ctx_out: bytes = b""


def test_run(prog: Any, data: bytes, *, repeat: int = 1, ctx: bytes | None = None, flags: int = 0,
             cpu: int = 0, batch_size: int = 0, out_size: int | None = None) -> TestRunResult:
    """Run `prog` (a Program or fd) on `data` `repeat` times; returns retval, ns/run and output data."""
    fd = prog if isinstance(prog, int) else prog.fd
    din = ctypes.create_string_buffer(data, len(data))
    live = bool(flags & BPF_F_TEST_XDP_LIVE_FRAMES)
    out_len = 0 if live else (out_size if out_size is not None else len(data) + 256)
    dout = ctypes.create_string_buffer(max(out_len, 1))
    opts = L.TestRunOpts(
        sz=ctypes.sizeof(L.TestRunOpts),
        data_in=ctypes.addressof(din),
        data_size_in=len(data),
        data_out=ctypes.addressof(dout) if out_len else None,
        data_size_out=out_len,
        repeat=repeat,
        flags=flags,
        cpu=cpu,
        batch_size=batch_size,
    )
    cin = cout = None
    if ctx is not None:
        cin = ctypes.create_string_buffer(ctx, len(ctx))
        cout = ctypes.create_string_buffer(len(ctx))
        opts.ctx_in, opts.ctx_size_in = ctypes.addressof(cin), len(ctx)
        if not live:
            opts.ctx_out, opts.ctx_size_out = ctypes.addressof(cout), len(ctx)
    if L.bpf_prog_test_run_opts(fd, ctypes.byref(opts)) != 0:
        raise from_errno("BPF_PROG_TEST_RUN", L.libc_errno())
    return TestRunResult(
        retval=opts.retval,
        duration_ns=opts.duration,
        data_out=dout.raw[: opts.data_size_out] if out_len else b"",
        ctx_out=cout.raw[: opts.ctx_size_out] if (cout is not None and not live) else b"",
    )


class XdpMd(ctypes.Structure):
    """struct xdp_md as a test_run context: selects the ingress interface for live frames."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


def xdp_live_frames(prog: Any, frame: bytes, *, repeat: int, ifindex: int, batch_size: int = 64) -> TestRunResult:
    """Inject `repeat` copies of `frame` as if received on `ifindex`; XDP_TX/REDIRECT really send them."""
    ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=ifindex)
    return test_run(prog, frame, repeat=repeat, ctx=bytes(ctx), flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                    batch_size=batch_size)
