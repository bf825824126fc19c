"""Event delivery from BPF to Python: ring buffer (preferred) and perf buffer (older kernels).

Records are decoded by copying straight into a ctypes struct derived from BTF (`record_type`), the
fastest decode from ctypes (DESIGN.md: ~1.3M/s), and handed to Python in batches: one list per poll.
An exception raised by the handler stops the poll and is re-raised from poll() (ctypes would swallow it).
The ring buffer itself counts no loss; programs count failed reserves in a per-CPU stats map, which
`lost` reads, so loss is visible, not hidden.
"""

from __future__ import annotations

import asyncio
import ctypes
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
    """Consume a BPF_MAP_TYPE_RINGBUF map.

    handler(batch) is called once per poll with the decoded records; without a handler, records are
    kept for iter()/drain(). `lost_map`/`lost_index`: a per-CPU array where the program counts failed
    reserves (bpfgate.h BG_STAT_EVENTS_LOST in the object's bg_stats map).
    """

    def __init__(self, ringbuf: Map, *, record_type: Any = None, handler: Handler | None = None,
                 lost_map: Map | None = None, lost_index: int = 1):
        super().__init__(record_type, handler)
        self._lost_map, self._lost_index = lost_map, lost_index
        self._cb = L.RINGBUF_SAMPLE_FN(self._sample)
        ptr = L.ring_buffer__new(ringbuf.fd, self._cb, None, None)
        if not ptr:
            raise from_errno(f"open ring buffer {ringbuf.name}", L.libc_errno())
        self._ptr = ptr

    def _sample(self, _ctx: int, data: int, size: int) -> int:
        try:
            self._batch.append(self._decode(data, size))
            return 0
        except BaseException as e:  # surfaces from poll(): a ctypes callback cannot raise
            self._error = e
            return -1

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to timeout_ms for records, consume all available; returns how many."""
        n = L.ring_buffer__poll(self._check(), timeout_ms)
        return self._after(n, "poll")

    def consume(self) -> int:
        n = L.ring_buffer__consume(self._check())
        return self._after(n, "consume")

    def _after(self, n: int, what: str) -> int:
        try:
            self._flush()
        except BaseException as e:
            self._error = self._error or e
        self._raise_pending()
        if n < 0 and n != -4:  # -EINTR: a signal; the caller decides
            raise from_errno(f"{what} ring buffer", -n)
        return max(n, 0)

    def _check(self) -> int:
        if not self._ptr:
            raise BpfgateError("use ring buffer", "closed")
        return self._ptr

    def epoll_fd(self) -> int:
        return L.ring_buffer__epoll_fd(self._check())

    @property
    def lost(self) -> int:
        if self._lost_map is None:
            return 0
        return sum(self._lost_map.get(self._lost_index, [0]))

    def close(self) -> None:
        if self._ptr:
            L.ring_buffer__free(self._ptr)
            self._ptr = None

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
