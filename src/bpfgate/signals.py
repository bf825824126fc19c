"""Signal handling shared by commands that change kernel or on-disk state."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the length of the block and re-deliver the first one afterwards: a
    Ctrl-C or SIGTERM must not land between a change and the bookkeeping that lets it be undone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda n, f: pending.append(n)) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in pending[:1]:
            signal.raise_signal(s)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the block as Ctrl-C does (KeyboardInterrupt): a command stopped by `timeout`, systemd
    or kill detaches what it attached and prints what it counted instead of dying mid-way. Only the main
    thread may set handlers: elsewhere, signals are left alone."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
