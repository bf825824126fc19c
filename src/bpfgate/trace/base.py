"""What the tcp and drop tracers share: load with a backend per hook, one event stream, filters, loss
reported as events, and close() that detaches everything (also on Ctrl-C: use `with`)."""

from __future__ import annotations

import time
from typing import Any, Iterator

from bpfgate.inspect.events import EventSource, EventStream
from bpfgate.trace import backend, format  # noqa: F401  (format registers the record kinds)
from bpfgate.trace.filters import Filter


# The programs wake us only once this much is waiting (a wakeup per event cost ~30% of a loopback
# connect loop's rate, bench/bench_trace_tcp.py); poll() consumes on its timeout, so an event waits at
# most one poll interval. 0: a wakeup per event (lowest latency).
WAKEUP_BYTES = 64 * 1024


class Tracer:
    OBJECT = ""
    WHAT = ""
    HOOKS: tuple[backend.Hook, ...] = ()

    def __init__(self, *, filters: Filter | None = None, prefer: str = "auto", rodata: dict | None = None,
                 setup=None, wakeup_bytes: int = WAKEUP_BYTES):
        self.filters = filters or Filter()
        rodata = {**(rodata or {}), "cfg_wakeup_bytes": wakeup_bytes,
                  "cfg_netns_filter": int(bool(self.filters.netns))}
        self.obj, self.links, self.choices = backend.load(self.OBJECT, self.HOOKS, what=self.WHAT,
                                                          prefer=prefer, rodata=rodata, setup=setup)
        try:
            for ns in self.filters.netns:  # until filled, the kernel sends nothing at all: never too much
                self.obj.map("netns_filter")[ns] = 1
            self.stream = EventStream([EventSource.from_object(self.obj, self.OBJECT)])
        except BaseException:
            self.close()
            raise

    # ---- what runs ---------------------------------------------------------------------------------------

    def backends(self) -> list[dict]:
        """Per hook: the backend used (tp_btf / tracepoint / null: missing), what it gives, notes."""
        return [c.describe() for c in self.choices]

    def missing(self) -> list[str]:
        return [f"{c.hook.name} ({c.hook.gives}): {c.note}" for c in self.choices if c.backend is None]

    def degraded(self) -> list[str]:
        """What the running hooks do not give on this kernel (arguments newer kernels added)."""
        return [line for c in self.choices if c.backend for line in c.lost]

    # ---- events -------------------------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        """Events that arrived within timeout_ms (JSON form, filtered), then an events_lost record if
        the kernel failed to hand over some since the last call."""
        out = [d for d in map(self.stream.describe, self.poll_raw(timeout_ms)) if self._keep(d)]
        return out + self.stream.loss_events()

    def poll_raw(self, timeout_ms: int = 100) -> list[Any]:
        """The records as ctypes structs, unfiltered (for consumers that decode only what they need)."""
        self.stream.poll(timeout_ms)
        for rb in self.stream._rings:  # records below the wakeup threshold: nobody signalled them
            rb.consume()
        return self.stream.drain()

    def _keep(self, ev: dict) -> bool:
        return self.filters.match(ev)

    def events(self, timeout: float | None = None, poll_ms: int = 100) -> Iterator[dict]:
        """poll() as an iterator, for `timeout` seconds (None: until the caller stops)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is None or time.monotonic() < deadline:
            yield from self.poll(poll_ms)

    @property
    def lost(self) -> int:
        return self.stream.lost

    @property
    def submitted(self) -> int:
        return self.stream.submitted

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Detach every hook, free the ring buffer and the object (idempotent)."""
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.close()
        for link in self.links:
            link.close()
        self.links = []
        if self.obj is not None:
            self.obj.close()
            self.obj = None

    def __enter__(self) -> "Tracer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
