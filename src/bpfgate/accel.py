"""sockmap acceleration of local TCP (sock_ops + sk_msg): connections between local sockets of an opted-in
cgroup (and opted-in ports) skip the TCP/IP stack: each message goes straight into the peer's receive queue.

    from bpfgate import accel
    accel.selftest()                                   # raises NotSupported naming what failed
    accel.enable("/sys/fs/cgroup/app", ports=[8080])   # or all_ports=True
    accel.totals("/sys/fs/cgroup/app")                 # sockets added, messages/bytes redirected, passed
    accel.remove("/sys/fs/cgroup/app")                 # or `bpfgate detach --cgroup PATH`

This kernel feature has a history of bugs elsewhere (lost or reordered bytes, stalls, FIN before data), so
enable() first runs selftest(): a scratch connection pair in a scratch network namespace, its two sockets in
a fresh sockhash with the real sk_msg program, messages of 1 B .. 1 MiB both ways, then a half-close each
way; every byte compared, every wait bounded. A failure refuses with what went wrong, nothing attached.

Only sockets of the cgroup's processes are candidates (the sock_ops program is attached to that cgroup
only), only connections whose peer is on this machine, only opted-in ports; a message whose peer socket is
not in the map goes the normal way. Removal drains first (no new sockets, every new message the normal
way), waits DRAIN_GRACE for readers to take what was already moved, then releases the map: the sockets
return to plain TCP and keep working. What a peer had been handed but had not read by then is lost with the
map (the kernel frees a socket's redirected queue when it leaves the map).

Known limits (kernel): redirected bytes bypass tcp_rmem/tcp_wmem accounting; SO_RCVLOWAT, MSG_PEEK of
redirected data and TCP_INFO byte counters do not see them.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass

from bpfgate import attach, cgroups, contract
from bpfgate.errors import BadInput, BpfgateError, NotSupported
from bpfgate.kernel import libbpf as L
from bpfgate.kernel import pins
from bpfgate.kernel.maps import Map
from bpfgate.kernel.objects import BpfObject
from bpfgate.attach.sockmap import ATTACH_TYPES

MSG_VERDICT = ATTACH_TYPES["sk_msg_verdict"]

OBJECT = OWNER = "accel"
C = contract.constants(OBJECT)
PINNED_MAPS = ("bg_accel_socks", "bg_accel_cfg", "bg_accel_ports", "bg_accel_stats")
DRAIN_GRACE = 0.5   # seconds readers get to take what was moved before the map goes
SELFTEST_SIZES = (1, 2, 7, 100, 1448, 4096, 16383, 65536, 65537, 200_000, 1 << 20)
SELFTEST_WAIT = 10.0   # seconds one transfer of the self-test may take before it counts as a stall
FEATURE = "sockmap acceleration"


def pin_dir(cgroup: str) -> str:
    return pins.pin_path(OWNER, cgroups.dir_name(cgroup))


def key_of(sock: socket.socket) -> bytes:
    """The sockhash key of a connected socket, as the sock_ops program computes it (its own view)."""
    k = contract.struct(OBJECT, "bg_accel_key")()
    fam = sock.family
    (laddr, lport, *_), (raddr, rport, *_) = sock.getsockname(), sock.getpeername()
    k.family, k.lport, k.rport = (4 if fam == socket.AF_INET else 6), lport, rport
    for field, addr in (("laddr", laddr), ("raddr", raddr)):
        raw = socket.inet_pton(fam, addr)
        ctypes.memmove(ctypes.addressof(k) + getattr(type(k), field).offset, raw, len(raw))
    return bytes(k)


def _set_cfg(m: Map, mode: int) -> None:
    cfg = contract.struct(OBJECT, "bg_accel_cfg")()
    cfg.mode = mode
    m.update_batch_raw(bytes(ctypes.c_uint32(0)), bytes(cfg), 1)


# ---- the self-test --------------------------------------------------------------------------------------


def _transfer(tx: socket.socket, rx: socket.socket, data: bytes, what: str) -> None:
    """Send `data` on tx while reading it on rx; raise naming the stall or the first wrong byte."""
    got = bytearray()
    failure: list[BaseException] = []

    def send() -> None:
        try:
            tx.sendall(data)
        except OSError as e:
            failure.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    deadline = time.monotonic() + SELFTEST_WAIT
    try:
        while len(got) < len(data):
            rx.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = rx.recv(1 << 20)
            if not chunk:
                raise NotSupported(FEATURE, f"self-test: {what}: end of stream after {len(got)} of {len(data)} bytes")
            got += chunk
    except socket.timeout:
        raise NotSupported(FEATURE, f"self-test: {what}: stalled, {len(got)} of {len(data)} bytes arrived "
                                    f"within {SELFTEST_WAIT:g} s") from None
    finally:
        t.join(SELFTEST_WAIT)
    if failure:
        raise NotSupported(FEATURE, f"self-test: {what}: send failed: {failure[0]}")
    if bytes(got) != data:
        at = next(i for i, (a, b) in enumerate(zip(got, data)) if a != b)
        raise NotSupported(FEATURE, f"self-test: {what}: byte {at} of {len(data)} differs")


def _eof(rx: socket.socket, what: str) -> None:
    rx.settimeout(SELFTEST_WAIT)
    try:
        extra = rx.recv(1)
    except socket.timeout:
        raise NotSupported(FEATURE, f"self-test: {what}: no end of stream within {SELFTEST_WAIT:g} s") from None
    if extra:
        raise NotSupported(FEATURE, f"self-test: {what}: data after the end")


def selftest() -> str:
    """Byte-integrity and stall self-test of sk_msg redirection on a scratch connection pair (bounded
    time); returns what passed, raises NotSupported naming what failed."""
    from bpfgate.doctor import scratch

    with BpfObject.open(OBJECT) as obj:
        try:
            obj.load()
        except BpfgateError as e:
            raise NotSupported(FEATURE, f"accel.o does not load: {e}") from None
        socks, prog = obj.map("bg_accel_socks"), obj.program("bg_accel_msg")
        _set_cfg(obj.map("bg_accel_cfg"), C.BG_ACCEL_ON | C.BG_ACCEL_ALL_PORTS)
        with scratch.netns(), scratch.tcp_pair(SELFTEST_WAIT) as (a, b):
            # not recorded: the scratch map and program go when this function returns
            if L.bpf_prog_attach(prog.fd, socks.fd, MSG_VERDICT, 0) != 0:
                raise NotSupported(FEATURE, f"self-test: attach sk_msg to a sockhash: {os.strerror(L.libc_errno())}")
            try:
                for s in (a, b):
                    if L.bpf_map_update_elem(socks.fd, key_of(s), ctypes.byref(ctypes.c_uint64(s.fileno())), 0) != 0:
                        raise NotSupported(FEATURE, "self-test: a TCP socket cannot join a sockhash: "
                                                    f"{os.strerror(L.libc_errno())}")
                for size in SELFTEST_SIZES:
                    _transfer(a, b, secrets.token_bytes(size), f"{size} B client to server")
                    _transfer(b, a, secrets.token_bytes(size), f"{size} B server to client")
                moved = sum(v.redirected_bytes for v in obj.map("bg_accel_stats").lookup(0))
                if moved < 2 * sum(SELFTEST_SIZES):
                    raise NotSupported(FEATURE, f"self-test: only {moved} of {2 * sum(SELFTEST_SIZES)} bytes "
                                                "were redirected (the kernel sent the rest the normal way)")
                a.shutdown(socket.SHUT_WR)   # half-close: the other way still carries data
                _eof(b, "half-close client to server")
                _transfer(b, a, secrets.token_bytes(100_000), "100000 B server to client after half-close")
                b.shutdown(socket.SHUT_WR)
                _eof(a, "half-close server to client")
            finally:
                L.bpf_prog_detach2(prog.fd, socks.fd, MSG_VERDICT)
    return (f"sk_msg redirection byte-exact both ways for {len(SELFTEST_SIZES)} sizes "
            f"({SELFTEST_SIZES[0]} B .. {SELFTEST_SIZES[-1] >> 20} MiB) and through half-close")


# ---- enabling and removing ------------------------------------------------------------------------------


def _check_ports(ports, all_ports: bool) -> list[int]:
    op = "accelerate local TCP"
    ports = sorted(set(ports))
    if not ports and not all_ports:
        raise BadInput(op, "no port given", hint="give --port PORT (repeatable) or --all-ports")
    if ports and all_ports:
        raise BadInput(op, "--port and --all-ports together", hint="one or the other")
    bad = [p for p in ports if not 1 <= p <= 65535]
    if bad:
        raise BadInput(op, f"port {bad[0]} is outside 1..65535")
    if len(ports) > C.BG_ACCEL_PORTS_MAX:
        raise BadInput(op, f"{len(ports)} ports: at most {C.BG_ACCEL_PORTS_MAX}")
    return ports


def enable(cgroup: str, *, ports=(), all_ports: bool = False) -> attach.Attachment:
    """Accelerate connections between local sockets of the cgroup's processes established from now on,
    on `ports` (local or remote port) or every port; refused when the kernel fails selftest()."""
    cgroup = cgroups.resolve(cgroup)   # before anything loads: a one-line error, nothing attached
    ports = _check_ports(ports, all_ports)
    if attach.find(target=cgroup, any_netns=True, owner=OWNER):
        raise BpfgateError(f"accelerate local TCP of {cgroup}", "already accelerated",
                           hint=f"bpfgate detach --cgroup {cgroup} first")
    selftest()
    pdir = pin_dir(cgroup)
    map_pins = [os.path.join(pdir, m) for m in PINNED_MAPS]
    with BpfObject.open(OBJECT) as obj:
        obj.load()
        for p in ports:
            obj.map("bg_accel_ports").update_batch_raw(bytes(ctypes.c_uint32(p)), bytes(ctypes.c_uint8(1)), 1)
        _set_cfg(obj.map("bg_accel_cfg"), C.BG_ACCEL_ON | (C.BG_ACCEL_ALL_PORTS if all_ports else 0))
        msg = None
        try:
            for name, path in zip(PINNED_MAPS, map_pins):
                pins.unpin(path)
                obj.map(name).pin(path)
            # the message program first: it applies to the sockets added after it
            msg = attach.attach(obj.program("bg_accel_msg"), attach.Point.of_map(obj.map("bg_accel_socks")),
                                attach.Options(owner=OWNER, pins=map_pins[:1]), kind="sockmap")
            return attach.attach(obj.program("bg_accel_sockops"), attach.Point.of_cgroup(cgroup),
                                 attach.Options(owner=OWNER, pin=os.path.join(pdir, "link"), pins=map_pins),
                                 kind="sockops")
        except BaseException:
            if msg is not None:
                attach.detach(msg)
            for path in map_pins:
                pins.unpin(path)
            pins.prune_empty(pdir)
            raise


def detach(att: attach.Attachment) -> list[str]:
    """`bpfgate detach` of an accelerated cgroup (either of its two records): drain (no new sockets, every
    message the normal way), stop collecting, give readers DRAIN_GRACE, then release the sk_msg program and
    the maps: the sockets leave the map and carry on as plain TCP."""
    pdir = os.path.dirname(att.pins[0]) if att.pins else None
    group = [a for a in attach.find(owner=OWNER, any_netns=True)
             if pdir and a.pins and os.path.dirname(a.pins[0]) == pdir] or [att]
    cfg_pin = os.path.join(pdir, "bg_accel_cfg") if pdir else ""
    if cfg_pin and os.path.exists(cfg_pin):
        m = Map.from_pin(cfg_pin)
        try:
            _set_cfg(m, C.BG_ACCEL_DRAIN)
        finally:
            m.close()
    done: list[str] = []
    for a in sorted(group, key=lambda a: a.method != "cgroup"):   # the cgroup's sock_ops first
        if a.method == "sockmap" and any(x.method == "cgroup" for x in group):
            time.sleep(DRAIN_GRACE)
        done.extend(attach.detach(a))
    if pdir:
        pins.prune_empty(pdir)
    return done


def remove(cgroup: str) -> list[str]:
    return attach.detach_matching(target=cgroups.normalise(cgroup), owner=OWNER, any_netns=True)


@dataclass(frozen=True)
class Totals:
    sockets: int
    add_failed: int
    redirected: int
    redirected_bytes: int
    passed: int


def totals(cgroup: str) -> Totals:
    m = Map.from_pin(os.path.join(pin_dir(cgroups.normalise(cgroup)), "bg_accel_stats"), ctypes.c_uint32,
                     contract.struct(OBJECT, "bg_accel_stats"))
    try:
        per_cpu = m.lookup(0)
    finally:
        m.close()
    return Totals(*(sum(getattr(v, f) for v in per_cpu)
                    for f in ("sockets", "add_failed", "redirected", "redirected_bytes", "passed")))
