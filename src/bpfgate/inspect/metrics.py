"""Prometheus exporter: one registry that capabilities add collectors to, served over HTTP.

    exp = Exporter()
    exp.add(SynCollector(syn)); exp.add(AttemptCollector(log)); exp.add(EventCollector(sources))
    exp.add(ProgramCollector([syn.prog, log.prog]))      # run_cnt/run_time_ns: needs kernel.stats
    host, port = exp.serve("127.0.0.1:9464")              # loopback unless the user names another address

A collector is any object with collect() yielding prometheus_client metric families, read at scrape
time straight from the maps (nothing cached). Names follow Prometheus conventions: bpfgate_<what>_total
for counters, label `interface` for devices, `source` for addresses, `program` for BPF programs.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from bpfgate.errors import BadInput, BpfgateError, from_errno

DEFAULT_LISTEN = "127.0.0.1:9464"


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464', ':9464' (loopback), '9464' -> (host, port)."""
    op = f"parse listen address {listen!r}"
    host, sep, port_s = listen.rpartition(":")
    if not sep:
        host, port_s = "", listen
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
        ipaddress.ip_address(host)
    except ValueError:
        raise BadInput(op, "expected ADDRESS:PORT with a numeric address, e.g. 127.0.0.1:9464") from None
    if not 0 <= port <= 65535:
        raise BadInput(op, f"port {port} out of range")
    return host, port


class Exporter:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._server: Any = None
        self._thread: Any = None

    def add(self, collector: Any) -> Any:
        self.registry.register(collector)
        return collector

    def remove(self, collector: Any) -> None:
        self.registry.unregister(collector)

    def render(self) -> str:
        """The text exposition, as a scrape would return it."""
        return generate_latest(self.registry).decode()

    def serve(self, listen: str = DEFAULT_LISTEN) -> tuple[str, int]:
        """Serve /metrics in a daemon thread; returns the bound (host, port) (port 0: one is picked)."""
        host, port = parse_listen(listen)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            hint = "another process listens there; pick another --listen" if e.errno == errno.EADDRINUSE else None
            raise from_errno(f"listen on {listen}", e.errno or errno.EINVAL, hint=hint) from None
        return host, self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "Exporter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _name(interfaces: dict[int, str], ifindex: int) -> str:
    return interfaces.get(ifindex, f"if{ifindex}")


class SynCollector:
    """bpfgate_syn_total, bpfgate_syn_blocked_total per interface; bpfgate_syn_source_total for the
    `top` busiest sources (bounded: label cardinality must not follow an attacker's address space)."""

    def __init__(self, syn: Any, top: int = 20):
        self.syn, self.top = syn, top

    def collect(self) -> Iterator[Metric]:
        names = self.syn.interfaces
        syns = CounterMetricFamily("bpfgate_syn", "TCP SYNs without ACK seen at XDP", labels=["interface"])
        blocked = CounterMetricFamily("bpfgate_syn_blocked", "SYNs dropped because their source was blocked",
                                      labels=["interface"])
        for ifindex, t in sorted(self.syn.totals().items()):
            syns.add_metric([_name(names, ifindex)], t.syns)
            blocked.add_metric([_name(names, ifindex)], t.blocked)
        per_src = CounterMetricFamily("bpfgate_syn_source", f"SYNs per source (the {self.top} busiest)",
                                      labels=["interface", "source"])
        for s in self.syn.top(self.top):
            per_src.add_metric([_name(names, s.ifindex), s.source], s.syns)
        active = GaugeMetricFamily("bpfgate_syn_blocked_sources", "Sources blocked right now for SYN flooding")
        active.add_metric([], len(self.syn.blocks()))
        yield from (syns, blocked, per_src, active)


class AttemptCollector:
    """bpfgate_connection_attempts_total per interface and destination port."""

    def __init__(self, log: Any):
        self.log = log

    def collect(self) -> Iterator[Metric]:
        m = CounterMetricFamily("bpfgate_connection_attempts", "SYNs to watched ports seen at TC ingress",
                                labels=["interface", "port"])
        for (ifindex, port), n in sorted(self.log.counts().items()):
            m.add_metric([_name(self.log.interfaces, ifindex), str(port)], n)
        yield m


class EventCollector:
    """bpfgate_events_total and bpfgate_events_lost_total per event source (exact, kernel-counted)."""

    def __init__(self, sources: Iterable[Any]):
        self.sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily("bpfgate_events", "Events submitted to the ring buffer", labels=["source"])
        lost = CounterMetricFamily("bpfgate_events_lost", "Events lost: the ring buffer was full",
                                   labels=["source"])
        for s in self.sources:
            n, l = s.counters()
            sent.add_metric([s.name], n)
            lost.add_metric([s.name], l)
        yield from (sent, lost)


class ProgramCollector:
    """bpfgate_program_runs_total and bpfgate_program_run_seconds_total (kernel run stats; they only
    advance while stats are enabled: kernel.stats.stats_enabled()): of `programs`, and of the policy
    engines attached in the `engines_in` namespaces, found at each scrape (engines come and go)."""

    def __init__(self, programs: Iterable[Any], engines_in: Iterable[str | None] = ()):
        self.programs = list(programs)
        self.engines_in = list(engines_in)

    def _engine_programs(self) -> list[Any]:
        from bpfgate import status

        if not self.engines_in:
            return []
        try:
            entries = status.collect(self.engines_in, cgroups=False)
        except BpfgateError:   # the namespace went away meanwhile: nothing of it to report
            return []
        return [e for e in entries if e.bpfgate and e.owner.startswith("engine")]

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily("bpfgate_program_runs", "Times the BPF program ran", labels=["program", "id"])
        secs = CounterMetricFamily("bpfgate_program_run_seconds", "Time spent in the BPF program",
                                   labels=["program", "id"])
        seen = set()
        for p in self.programs:
            info = p.info()
            seen.add(info.id)
            runs.add_metric([info.name, str(info.id)], info.run_cnt)
            secs.add_metric([info.name, str(info.id)], info.run_time_ns / 1e9)
        for e in self._engine_programs():
            if e.prog_id not in seen:   # one program at two hooks (an engine's ct program) is one series
                seen.add(e.prog_id)
                runs.add_metric([e.prog_name, str(e.prog_id)], e.run_cnt)
                secs.add_metric([e.prog_name, str(e.prog_id)], e.run_time_ns / 1e9)
        yield from (runs, secs)
