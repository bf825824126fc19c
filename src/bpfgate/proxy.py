"""TCP proxy whose data path is in the kernel (sk_skb stream parser + verdict on a sockhash):
`bpfgate proxy --listen A --to B`.

    with Proxy(("127.0.0.1", 8080), ("127.0.0.1", 9000)) as p:   # runs the self-test first
        p.serve(duration=None)        # accept clients, connect each to the backend, pair them

Each accepted client gets its own backend connection; both sockets join a sockhash under their own 4-tuple,
each with the other's key as peer, and from then on the verdict program sends what one receives out of the
other (egress redirect: no copy through this process).

What the kernel does not do, and this module does instead (found on 6.1 and 6.18):
- bytes that reached a socket before it joined the map are not parsed until the next data_ready, and with
  the receive window then full none comes: the stream stalls. Setting SO_RCVLOWAT after joining calls
  tcp_data_ready() on the socket, which wakes the stream parser for them (a "kick").
- the redirect does not pass a FIN on: when a socket's stream ends (EPOLLRDHUP), the peer is half-closed
  here once every byte the socket received has gone through the verdict (its per-socket count against
  TCP_INFO bytes_received) and reached the peer's send path (bytes_acked + SIOCOUTQ); never blocking the
  loop, and bounded: a pair that makes no progress for STALL_LIMIT is closed and counted as stalled.
Before the kernel path is used, selftest() runs scratch pairs through it (data waiting before the join,
1 MiB both ways, concurrent pairs, half-close each way, byte-exact, bounded time); when it fails, the proxy
refuses the kernel path with the reason and relays in user space (splice(2) through a pipe) instead.
The proxy runs in the foreground: the maps and programs are this process's and go with it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import random
import select
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass, field

from bpfgate import attach
from bpfgate.accel import key_of
from bpfgate.errors import BadInput, BpfgateError, NotSupported, from_errno
from bpfgate.kernel import libbpf as L
from bpfgate.kernel.objects import BpfObject

OBJECT = OWNER = "proxy"
FEATURE = "kernel splice proxy"
STALL_LIMIT = 30.0   # seconds an ended stream may wait for its bytes to reach the peer before the pair is cut
KICK_EVERY = 0.05    # seconds between wake-ups of the stream parser while an end of stream waits
TCP_INFO_LEN = 232
TCP_CLOSE = 7
TCP_INFO_BYTES_ACKED = 120      # offsetof(struct tcp_info, tcpi_bytes_acked), Linux >= 4.1
TCP_INFO_BYTES_RECEIVED = 128   # offsetof(struct tcp_info, tcpi_bytes_received), Linux >= 4.1
SELFTEST_PAIRS = 4
SELFTEST_BYTES = 1 << 20
SELFTEST_EARLY = 200_000   # bytes a scratch client sends before its socket joins (more than the window)
SELFTEST_WAIT = 20.0
# The oldest Linux the kernel path is known to work on. Debian 11's 5.10 (5.10.0-32) stopped running anything
# (tests, timers, the console) while the self-test's pairs went through the sockhash, twice, under qemu: on an
# older kernel the self-test is not run, the kernel path is refused and the proxy relays in user space.
KERNEL_PATH_SINCE = (6, 1)


def parse_addr(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        p = int(port)
    except (OSError, ValueError):
        raise BadInput(f"proxy {what} {text!r}", "expected ADDRESS:PORT with a numeric address") from None
    if not sep or not 0 <= p <= 65535 or (what == "--to" and p == 0):
        raise BadInput(f"proxy {what} {text!r}", "port out of range")
    return host, p


def _tcp_info(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)


def written(sock: socket.socket) -> int:
    """Bytes handed to the socket's TCP send path: acknowledged + still queued (SIOCOUTQ). The handshake
    counts as one acknowledged byte on some sockets: compare differences."""
    outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return struct.unpack_from("Q", _tcp_info(sock), TCP_INFO_BYTES_ACKED)[0] + outq


def received(sock: socket.socket) -> int:
    """Sequence space received (data bytes, and one for a FIN)."""
    return struct.unpack_from("Q", _tcp_info(sock), TCP_INFO_BYTES_RECEIVED)[0]


def kick(sock: socket.socket) -> None:
    """Wake the socket's stream parser for bytes already in its receive queue: setting SO_RCVLOWAT runs
    tcp_data_ready(), i.e. the sockmap's data_ready (an unchanged value of 1 changes nothing else)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


# ---- user-space relay (the fallback, and the bench's baseline) ---------------------------------------------


def _pump(src: socket.socket, dst: socket.socket, done) -> None:
    """src -> dst with splice(2) through a pipe until src's end, then half-close dst."""
    r, w = os.pipe()
    try:
        while n := os.splice(src.fileno(), w, 1 << 16):
            while n:
                n -= os.splice(r, dst.fileno(), n)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        done()


def relay(client: socket.socket, backend: socket.socket) -> None:
    """Relay a pair in user space (two threads); both sockets are closed once both ways ended."""
    left = [2]
    lock = threading.Lock()

    def done():
        with lock:
            left[0] -= 1
            if left[0]:
                return
        client.close()
        backend.close()

    for s in (client, backend):
        s.setblocking(True)
    for a, b in ((client, backend), (backend, client)):
        threading.Thread(target=_pump, args=(a, b, done), daemon=True).start()


# ---- the kernel path --------------------------------------------------------------------------------------


@dataclass
class Pair:
    client: socket.socket
    backend: socket.socket
    keys: dict = field(default_factory=dict)   # fileno -> its sockhash key
    base: dict = field(default_factory=dict)   # fileno -> written() before joining
    ending: dict = field(default_factory=dict)  # fileno whose stream ended -> (last progress, its figures)
    ended: set = field(default_factory=set)    # filenos whose end of stream was passed on
    forwarded: dict = field(default_factory=dict)  # fileno -> bytes this process forwarded from it
    leftover: dict = field(default_factory=dict)   # fileno -> of those, what its peer has not taken yet

    def peer(self, s: socket.socket) -> socket.socket:
        return self.backend if s is self.client else self.client

    def sock(self, fd: int) -> socket.socket:
        return self.client if self.client.fileno() == fd else self.backend


class Splicer:
    """The sockhash, its two programs, and the pairs in it."""

    def __init__(self):
        self.obj = BpfObject.open(OBJECT)
        self.atts: list = []
        self.pairs: dict[int, Pair] = {}   # fileno -> pair
        self.stalled = 0
        try:
            self.obj.load()
            self.socks, self.peers, self.moved = (self.obj.map(n) for n in ("bg_proxy_socks", "bg_proxy_peer",
                                                                            "bg_proxy_bytes"))
            for prog in ("bg_proxy_parser", "bg_proxy_verdict"):   # both before any socket joins
                self.atts.append(attach.attach(self.obj.program(prog), attach.Point.of_map(self.socks),
                                               attach.Options(owner=OWNER), kind="sockmap"))
        except BaseException:
            self.close()
            raise

    def _put(self, m, key: bytes, value) -> None:
        if L.bpf_map_update_elem(m.fd, key, value, 0) != 0:
            raise from_errno(f"update map {m.name}", L.libc_errno())

    def join(self, client: socket.socket, backend: socket.socket) -> bool:
        """Hand a connected pair to the kernel; False (nothing left in the maps) when a socket cannot join
        (one that is no longer established: the caller relays that pair)."""
        pair = Pair(client, backend)
        ck, bk = key_of(client), key_of(backend)
        pair.keys = {client.fileno(): ck, backend.fileno(): bk}
        pair.base = {s.fileno(): written(s) for s in (client, backend)}
        try:
            for own, peer in ((ck, bk), (bk, ck)):
                self._put(self.peers, own, peer)
                self._put(self.moved, own, ctypes.byref(ctypes.c_uint64(0)))
            # the backend first: once the client is in, what it sent is redirected to the backend
            for s, k in ((backend, bk), (client, ck)):
                self._put(self.socks, k, ctypes.byref(ctypes.c_uint64(s.fileno())))
        except BpfgateError:
            self._forget(pair)
            return False
        for s in (client, backend):
            kick(s)   # bytes that arrived before the join
            s.setblocking(False)
            self.pairs[s.fileno()] = pair
        return True

    def _moved(self, pair: Pair, s: socket.socket) -> int:
        v = ctypes.c_uint64(0)
        L.bpf_map_lookup_elem(self.moved.fd, pair.keys[s.fileno()], ctypes.byref(v))
        return v.value

    def ended(self, fd: int) -> None:
        """`fd`'s stream ended (EPOLLRDHUP): its peer is half-closed once the bytes before the end are out."""
        pair = self.pairs.get(fd)
        if pair is not None and fd not in pair.ending and fd not in pair.ended:
            pair.ending[fd] = (time.monotonic(), None)

            kick(pair.sock(fd))

    def busy(self) -> bool:
        return any(p.ending for p in self.pairs.values())

    def tick(self) -> None:
        """Pass on the ends of stream whose bytes are all out; cut pairs that stopped making progress."""
        for pair in {id(p): p for p in self.pairs.values()}.values():
            for fd in list(pair.ending):
                if not self._end(pair, fd):
                    break

    def _end(self, pair: Pair, fd: int) -> bool:
        """One step of passing `fd`'s end of stream on; False once the pair is gone."""
        since, seen = pair.ending[fd]
        s = pair.sock(fd)
        peer = pair.peer(s)
        try:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            info = _tcp_info(s)
            got = struct.unpack_from("Q", info, TCP_INFO_BYTES_RECEIVED)[0] - 1   # the FIN takes one
            moved = self._moved(pair, s) + pair.forwarded.get(fd, 0)
            if info[0] == TCP_CLOSE and moved < got and fd not in pair.leftover and \
                    written(peer) - pair.base[peer.fileno()] >= moved:
                # the socket reached TIME_WAIT (its own FIN was out and the peer's came with the last bytes):
                # the kernel took it out of the sockhash before the parser saw those bytes. They are still
                # in its receive queue: forwarded from here, after everything the kernel moved.
                pair.leftover[fd] = self._drain(s)
                pair.forwarded[fd] = pair.forwarded.get(fd, 0) + len(pair.leftover[fd])
                moved += len(pair.leftover[fd])
            if pair.leftover.get(fd):
                del pair.leftover[fd][:peer.send(pair.leftover[fd])]
            out = written(peer) - pair.base[peer.fileno()]
        except BlockingIOError:
            return True
        except OSError:
            err = 1
        if err:   # a reset: nothing more will come either way
            self._drop(pair)
            return False
        if moved >= got and out >= moved:
            try:
                peer.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            del pair.ending[fd]
            pair.ended.add(fd)
            if len(pair.ended) == 2:
                self._drop(pair)
                return False
            return True
        now = time.monotonic()
        if seen != (moved, out):
            pair.ending[fd] = (now, (moved, out))
        elif now - since > STALL_LIMIT:   # bounded: no progress for that long is a stall
            self.stalled += 1
            self._drop(pair, reset=True)
            return False
        elif moved < got:
            kick(s)
        return True

    @staticmethod
    def _drain(s: socket.socket) -> bytearray:
        data = bytearray()
        try:
            while chunk := s.recv(1 << 16, socket.MSG_DONTWAIT):
                data += chunk
        except OSError:
            pass
        return data

    def _forget(self, pair: Pair) -> None:
        for key in pair.keys.values():
            for m in (self.socks, self.peers, self.moved):
                L.bpf_map_delete_elem(m.fd, key)

    def _drop(self, pair: Pair, reset: bool = False) -> None:
        self._forget(pair)
        for s in (pair.client, pair.backend):
            if self.pairs.get(s.fileno()) is pair:
                del self.pairs[s.fileno()]
            if reset:   # the peer learns at once instead of waiting for bytes that will not come
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    def close(self) -> None:
        for pair in {id(p): p for p in self.pairs.values()}.values():
            self._drop(pair)
        for att in self.atts:
            attach.detach(att)
        self.atts = []
        self.obj.close()


# ---- the self-test ---------------------------------------------------------------------------------------


def selftest() -> str:
    """Run scratch pairs through a scratch splicer (bounded time); return what passed, raise NotSupported
    naming what failed. Each pair: a scratch client sends SELFTEST_EARLY bytes before its socket joins,
    then both ends send SELFTEST_BYTES at once and half-close; every byte is compared."""
    from bpfgate.doctor import scratch

    why = kernel_path_refused()
    if why:
        raise NotSupported(FEATURE, why, min_kernel=".".join(map(str, KERNEL_PATH_SINCE)))
    try:
        sp = Splicer()
    except BpfgateError as e:
        raise NotSupported(FEATURE, f"{OBJECT}.o does not load or attach: {e}") from None
    failures: list[str] = []
    threads: list[threading.Thread] = []
    try:
        with scratch.netns(), socket.create_server(("127.0.0.1", 0)) as front, \
                socket.create_server(("127.0.0.1", 0)) as back:
            ends = []
            for i in range(SELFTEST_PAIRS):
                c = socket.create_connection(front.getsockname(), timeout=SELFTEST_WAIT)
                c.setblocking(False)
                early = random.randbytes(SELFTEST_EARLY)
                try:   # as much as fits: it waits in the proxy's receive queue, the window then full
                    early = early[:c.send(early)]
                except BlockingIOError:
                    early = b""
                c.settimeout(SELFTEST_WAIT)
                pc, _ = front.accept()
                pb = socket.create_connection(back.getsockname(), timeout=SELFTEST_WAIT)
                b, _ = back.accept()
                b.settimeout(SELFTEST_WAIT)
                ends.append((c, b, early))
                if not sp.join(pc, pb):
                    raise NotSupported(FEATURE, "self-test: a scratch socket could not join the sockhash")
            for i, (c, b, early) in enumerate(ends):
                # even pairs: both ways at once; odd ones: the backend answers after the client's end (its
                # last bytes then come with its FIN to a socket that has sent its own: TIME_WAIT)
                after = threading.Event() if i % 2 else None
                for tx, rx, first, what, start, done in ((c, b, early, "client to backend", None, after),
                                                         (b, c, b"", "backend to client", after, None)):
                    threads.append(threading.Thread(target=_selftest_way, daemon=True,
                                                    args=(tx, rx, first, i, what, failures, start, done)))
            for t in threads:
                t.start()
            _selftest_run(sp, threads)
            for c, b, _ in ends:
                c.close()
                b.close()
    finally:
        sp.close()
    if any(t.is_alive() for t in threads):
        failures.append(f"stalled: not done within {SELFTEST_WAIT:g} s")
    if failures or sp.stalled:
        raise NotSupported(FEATURE, "self-test: " + "; ".join(failures[:3] or ["a pair stalled"]))
    return (f"{SELFTEST_PAIRS} concurrent pairs, bytes waiting before the join, {SELFTEST_BYTES} B each way, "
            "half-close each way: byte-exact")


def kernel_path_refused() -> str | None:
    """Why the kernel path is not tried on this kernel (None: it is, through selftest())."""
    from bpfgate.doctor.probes import _older_than

    if _older_than(*KERNEL_PATH_SINCE):
        return ("sockmap stream parser/verdict redirects froze Linux 5.10 in the self-test (the oldest kernel "
                "the kernel path is checked on is 6.1)")
    return None


def _selftest_way(tx: socket.socket, rx: socket.socket, first: bytes, i: int, what: str, failures: list[str],
                  start: threading.Event | None, done: threading.Event | None) -> None:
    """Send SELFTEST_BYTES on tx (once `start` is set) and half-close; read rx to its end (then set
    `done`) and compare."""
    data = random.randbytes(SELFTEST_BYTES)
    want = first + data   # what was sent before the join comes first
    got = bytearray()

    def send():
        if start is None or start.wait(SELFTEST_WAIT):
            tx.sendall(data[:-1000])
            tx.sendall(data[-1000:], socket.MSG_MORE)   # corked: the FIN leaves in the same segment
            tx.shutdown(socket.SHUT_WR)

    try:
        threading.Thread(target=send, daemon=True).start()
        while chunk := rx.recv(1 << 20):
            got += chunk
    except OSError as e:
        failures.append(f"pair {i} {what}: {e} after {len(got)} bytes")
        return
    finally:
        if done is not None:
            done.set()
    if bytes(got) != want:
        at = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        failures.append(f"pair {i} {what}: {len(got)} of {len(want)} bytes, first difference at {at}")


def _selftest_run(sp: Splicer, threads: list[threading.Thread]) -> None:
    ep = select.epoll()
    try:
        for fd in sp.pairs:
            ep.register(fd, select.EPOLLRDHUP)
        deadline = time.monotonic() + SELFTEST_WAIT
        while time.monotonic() < deadline and (sp.pairs or any(t.is_alive() for t in threads)):
            for fd, _ in ep.poll(0.01):
                ep.unregister(fd)
                sp.ended(fd)
            sp.tick()
    finally:
        ep.close()


# ---- the proxy ---------------------------------------------------------------------------------------------


class Proxy:
    """mode: "auto" (kernel path if its self-test passes, else relay), "kernel" (refuse without it),
    "relay" (user space only)."""

    def __init__(self, listen: tuple[str, int], to: tuple[str, int], mode: str = "auto"):
        self.to = to
        self.splicer: Splicer | None = None
        self.refusal: str | None = None   # why the kernel path is not used
        self.spliced = self.relayed = 0
        self.ep = select.epoll()
        self.listener = None
        try:
            fam = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
            try:
                self.listener = socket.create_server(listen, family=fam)
            except OSError as e:
                raise BadInput(f"proxy --listen {listen[0]}:{listen[1]}", e.strerror or str(e)) from None
            if mode != "relay":
                try:
                    selftest()
                    self.splicer = Splicer()
                except NotSupported as e:
                    if mode == "kernel":
                        raise
                    self.refusal = str(e)
            else:
                self.refusal = "user-space relay asked for"
            self.listener.setblocking(False)
            self.ep.register(self.listener.fileno(), select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    @property
    def stalled(self) -> int:
        return self.splicer.stalled if self.splicer else 0

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        try:
            backend = socket.create_connection(self.to, timeout=5)
        except OSError:
            client.close()   # the backend refused: so does the proxy, to this client
            return
        for s in (client, backend):   # the proxy adds no delay of its own to small messages
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.splicer and self.splicer.join(client, backend):
            self.spliced += 1
            for s in (client, backend):
                # never read here (that could take bytes ahead of ones the kernel still holds): only the
                # end of the stream is watched
                self.ep.register(s.fileno(), select.EPOLLRDHUP)
            return
        self.relayed += 1
        relay(client, backend)

    def serve(self, duration: float | None = None, on_ready=None) -> None:
        end = None if duration is None else time.monotonic() + duration
        if on_ready:
            on_ready(self.address)
        while end is None or time.monotonic() < end:
            wait = 0.01 if self.splicer and self.splicer.busy() else 0.2
            if end is not None:
                wait = max(0.0, min(wait, end - time.monotonic()))
            for fd, _ in self.ep.poll(wait):
                if fd == self.listener.fileno():
                    self._accept()
                else:
                    self.ep.unregister(fd)
                    self.splicer.ended(fd)
            if self.splicer:
                self.splicer.tick()

    def close(self) -> None:
        if self.splicer:
            self.splicer.close()
            self.splicer = None
        if self.listener is not None:
            self.listener.close()
        self.ep.close()

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
