"""Connection-attempt log at TC ingress (bpf/attempts.bpf.c): each SYN to a watched port becomes a
`conn_attempt` event; exact counts per interface and port are kept in the kernel as well.

    with AttemptLog(ports=[22, 443]) as log:
        log.attach("eth0")                  # TCX link (kernel >= 6.6), else clsact + bpf filter
        log.add_port(8080)                  # live: the port set is a map
        EventStream([log.event_source()])

Events go through the ring buffer, or the perf buffer where the kernel has none (transport="auto").
"""

from __future__ import annotations

from typing import Callable, Iterable

from bpfgate import attach as attach_layer
from bpfgate import contract
from bpfgate.errors import BadInput, BpfgateError, NotSupported
from bpfgate.inspect import events
from bpfgate.inspect.events import EventSource
from bpfgate.kernel import netlink

PROGRAM = "bg_attempts_tc"
ALL_PORTS = contract.constants("attempts").BG_ATTEMPT_ALL_PORTS  # in the port map: watch every port
OWNER = "attempts"   # its tc priority/handle and TCX place: bpfgate.attach.order


def _port(port: int) -> int:
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadInput("watch port", f"not a TCP port: {port!r}")
    return port


class AttemptLog:
    def __init__(self, ports: Iterable[int] = (), *, ring_size: int | None = None, transport: str = "auto"):
        obj, self.transport = events.open_producer("attempts", transport=transport, ring_size=ring_size)
        self.obj = obj
        self.prog = obj.program(PROGRAM)
        self.interfaces: dict[int, str] = {}
        self._undo: list[Callable[[], None]] = []
        for p in ports:
            self.add_port(p)

    # ---- attach ------------------------------------------------------------------------------------

    def attach(self, dev: str | int, netns_name: str | None = None, method: str = "auto") -> int:
        """Attach at TC ingress of `dev` through the attach layer (recorded): a TCX link this process holds
        (kernel >= 6.6), else (or with method "tc") a clsact filter at the attempts slot
        (bpfgate.attach.order: after the policy engine, so only what the policy let through is logged).
        Returns the ifindex. Detached by close()."""
        if method not in ("auto", "tcx", "tc"):
            raise BpfgateError("attach", f"method must be auto, tcx or tc, not {method!r}")
        ifindex = netlink.ifindex(dev, netns_name)
        name = netlink.ifname(dev, netns_name)
        point = attach_layer.Point.device(name, "ingress", netns_name)
        opts = attach_layer.Options(owner=OWNER, replace=False)
        att = None
        if method != "tc":
            try:
                att = attach_layer.tcx.attach(self.prog, point, opts, pinned=False)
            except NotSupported:   # kernels without TCX
                if method == "tcx":
                    raise
        if att is None:
            att = attach_layer.tc.attach(self.prog, point, opts)
        self._undo.append(lambda: att.close() if att.held is not None else attach_layer.detach(att))
        self.interfaces[ifindex] = name
        return ifindex

    def close(self) -> None:
        """Detach everything (best effort for each, so one failure does not leave the rest attached)."""
        errors = []
        while self._undo:
            try:
                self._undo.pop()()
            except BpfgateError as e:
                errors.append(e)
        self.obj.close()
        if errors:
            raise errors[0]

    def __enter__(self) -> "AttemptLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- ports (live) -----------------------------------------------------------------------------------

    def add_port(self, port: int) -> None:
        self.obj.map("attempt_ports")[{"port": _port(port)}] = 1

    def remove_port(self, port: int) -> bool:
        return self.obj.map("attempt_ports").delete({"port": _port(port)})

    def ports(self) -> set[int]:
        return {k.port for k in self.obj.map("attempt_ports").keys()}

    # ---- counters ---------------------------------------------------------------------------------------

    def counts(self) -> dict[tuple[int, int], int]:
        """(ifindex, port) -> attempts seen (exact, even when events were lost)."""
        return {(k.ifindex, k.port): sum(v) for k, v in self.obj.map("attempt_counts").items()}

    def event_source(self) -> EventSource:
        return EventSource.from_object(self.obj, "attempts", transport=self.transport, interfaces=self.interfaces)
