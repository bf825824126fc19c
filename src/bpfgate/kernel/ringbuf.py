"""Event delivery from BPF to Python: ring buffer (preferred) and perf buffer (older kernels).

Records are decoded by copying straight into a ctypes struct derived from BTF (`record_type`, or
`types` by record type id), and handed to Python in batches: one list per poll.
An exception raised by the handler stops the poll and is re-raised from poll() (ctypes would swallow it).
The ring buffer itself counts no loss; programs count failed reserves in a per-CPU stats map, which
`lost` reads, so loss is visible, not hidden.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import select
import struct
import time
from typing import Any, AsyncIterator, Callable, Iterator

from bpfgate.errors import BpfgateError, from_errno
from bpfgate.kernel import libbpf as L
from bpfgate.kernel.maps import Map

Handler = Callable[[list[Any]], None]


class _Consumer:
    """What RingBuffer and PerfBuffer share: batching, error propagation, iteration, asyncio."""

    def __init__(self, record_type: Any | None, handler: Handler | None):
        self.record_type = record_type
        self._handler = handler
        self._batch: list[Any] = []
        self._error: BaseException | None = None
        self.received = 0
        self._pending: list[Any] = []
        self._ptr = None

    def _decode(self, addr: int, size: int) -> Any:
        rt = self.record_type
        if rt is not None and size >= ctypes.sizeof(rt):
            return rt.from_buffer_copy((ctypes.c_char * ctypes.sizeof(rt)).from_address(addr))
        return ctypes.string_at(addr, size)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self.received += len(batch)
        if batch and self._handler is not None:
            self._handler(batch)
        elif batch:
            self._pending.extend(batch)

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    # poll/epoll_fd are provided by subclasses
    def poll(self, timeout_ms: int = 100) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def epoll_fd(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        return self.iter()

    def iter(self, timeout: float | None = None, poll_ms: int = 100) -> Iterator[Any]:
        """Yield records as they arrive; stop after `timeout` seconds (None: forever)."""
        if self._handler is not None:
            raise BpfgateError("iterate events", "this consumer has a handler; iterate a consumer without one")
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            self.poll(poll_ms)
            yield from self.drain()

    def drain(self) -> list[Any]:
        """Records collected so far without a handler (after poll/consume)."""
        out, self._pending = self._pending, []
        return out

    async def aiter(self) -> AsyncIterator[Any]:
        """asyncio: wait on the epoll fd, then consume what is there."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = self.epoll_fd()
        loop.add_reader(fd, ready.set)
        try:
            while True:
                await ready.wait()
                ready.clear()
                self.poll(0)
                for rec in self.drain():
                    yield rec
        finally:
            loop.remove_reader(fd)


class RingBuffer(_Consumer):
    """Consume a BPF_MAP_TYPE_RINGBUF map by reading its mmap'd pages directly, the way libbpf does,
    minus libbpf's ctypes callback per record: one copy of everything committed per consume(), then a
    plain Python loop (header check, from_buffer_copy). ~1.3-1.5M records/s decoded here.

    Layout (kernel/bpf/ringbuf.c): page 0 consumer position (we write it), page 1 producer position, then
    the data area mapped twice in a row, so a record that wraps is contiguous. Each record has an 8-byte
    header: u32 length with BUSY (not committed yet) and DISCARD bits, u32 page offset.

    Decoding: `types` {type id: ctypes struct} dispatches on the record's leading u16 (struct
    bg_event_hdr.type), else `record_type` for every record, else raw bytes. handler(batch) is called once
    per consume with the decoded records; without a handler they are kept for iter()/drain().
    `lost_map`/`lost_index`: the per-CPU array where the program counts failed reserves (bg_stats).
    """

    BUSY, DISCARD = 1 << 31, 1 << 30

    def __init__(self, ringbuf: Map, *, record_type: Any = None, types: dict[int, Any] | None = None,
                 handler: Handler | None = None, lost_map: Map | None = None, lost_index: int = 1):
        super().__init__(record_type, handler)
        size = ringbuf.max_entries
        op = f"open ring buffer {ringbuf.name}"
        if size & (size - 1) or size < mmap.PAGESIZE:
            raise BpfgateError(op, f"not a ring buffer of a power-of-2 size ({size})")
        self.name, self.fd, self._mask, self._page = ringbuf.name, ringbuf.fd, size - 1, mmap.PAGESIZE
        self._types = dict(types or {})
        self._min = {t: ctypes.sizeof(rt) for t, rt in self._types.items()}
        self._lost_map, self._lost_index = lost_map, lost_index
        self._cons = self._data = None
        try:
            self._cons = mmap.mmap(self.fd, self._page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._data = mmap.mmap(self.fd, self._page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=self._page)
            self._ep = select.epoll()
            self._ep.register(self.fd, select.EPOLLIN)  # readable while committed records wait
        except OSError as e:
            self.close()
            raise from_errno(op, e.errno or errno.EINVAL) from None
        self._ptr = True  # open

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to timeout_ms for records, consume all available; returns how many."""
        self.wait(timeout_ms)
        return self.consume()

    def wait(self, timeout_ms: int = 100) -> None:
        """Wait up to timeout_ms for a committed record without consuming anything: a signal that
        ends the wait leaves every record in the ring."""
        self._check()
        try:
            self._ep.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        except InterruptedError:
            pass

    def consume(self) -> int:
        """Decode every committed record; returns how many (to the handler, or kept for drain())."""
        self._check()
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(self._data, 0)[0]
        if cons == prod:
            return 0
        start = self._page + (cons & self._mask)
        buf = self._data[start:start + (prod - cons)]
        out: list[Any] = []
        append, types, mins, fixed = out.append, self._types, self._min, self.record_type
        fixed_min = ctypes.sizeof(fixed) if fixed is not None else 0
        hdr, busy, discard, end, pos = _REC_HDR.unpack_from, self.BUSY, self.DISCARD, len(buf), 0
        try:
            while pos + 8 <= end:
                hlen, rtype = hdr(buf, pos) if pos + 10 <= end else (_U32.unpack_from(buf, pos)[0], -1)
                if hlen & busy:
                    break  # not committed yet: it and everything after it wait for the next call
                n = hlen & ~(busy | discard)
                if not hlen & discard:
                    rt = types.get(rtype) if types else None
                    if rt is not None and n >= mins[rtype]:
                        append(rt.from_buffer_copy(buf, pos + 8))
                    elif fixed is not None and n >= fixed_min and not types:
                        append(fixed.from_buffer_copy(buf, pos + 8))
                    else:
                        append(buf[pos + 8:pos + 8 + n])
                pos += (n + 15) & ~7  # 8-byte header + data, rounded up to 8
        finally:
            _U64.pack_into(self._cons, 0, cons + pos)  # frees the space for the producer
        self._batch = out
        try:
            self._flush()
        except BaseException as e:
            self._error = e
        self._raise_pending()
        return len(out)

    def _check(self) -> None:
        if not self._ptr:
            raise BpfgateError(f"use ring buffer {self.name}", "closed")

    def epoll_fd(self) -> int:
        self._check()
        return self._ep.fileno()

    @property
    def lost(self) -> int:
        if self._lost_map is None:
            return 0
        return sum(self._lost_map.get(self._lost_index, [0]))

    def close(self) -> None:
        self._ptr = None
        for m in (self._cons, self._data):
            if m is not None and not m.closed:
                m.close()
        ep = getattr(self, "_ep", None)
        if ep is not None:
            ep.close()

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_REC_HDR = struct.Struct("<I4xH")  # record length word, page offset, then the event's leading u16 type


class PerfBuffer(_Consumer):
    """Consume a BPF_MAP_TYPE_PERF_EVENT_ARRAY (per-CPU buffers); the kernel reports lost samples."""

    def __init__(self, perf_map: Map, *, record_type: Any = None, handler: Handler | None = None,
                 page_cnt: int = 64):
        super().__init__(record_type, handler)
        self.lost = 0
        self._sample_cb = L.PERF_SAMPLE_FN(self._sample)
        self._lost_cb = L.PERF_LOST_FN(self._lost)
        ptr = L.perf_buffer__new(perf_map.fd, page_cnt, self._sample_cb, self._lost_cb, None, None)
        if not ptr:
            raise from_errno(f"open perf buffer {perf_map.name}", L.libc_errno())
        self._ptr = ptr

    def _sample(self, _ctx: int, _cpu: int, data: int, size: int) -> None:
        if self._error is not None:
            return
        try:
            self._batch.append(self._decode(data, size))
        except BaseException as e:
            self._error = e

    def _lost(self, _ctx: int, _cpu: int, count: int) -> None:
        self.lost += count

    def poll(self, timeout_ms: int = 100) -> int:
        if not self._ptr:
            raise BpfgateError("use perf buffer", "closed")
        n = L.perf_buffer__poll(self._ptr, timeout_ms)
        self._flush()
        self._raise_pending()
        if n < 0 and n != -4:
            raise from_errno("poll perf buffer", -n)
        return max(n, 0)

    def epoll_fd(self) -> int:
        return L.perf_buffer__epoll_fd(self._ptr)

    def close(self) -> None:
        if self._ptr:
            L.perf_buffer__free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "PerfBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
