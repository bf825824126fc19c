"""Prometheus, read at scrape time from every NAT of a namespace (nothing when none is attached): the
program's counters (nat_stats), the translation table's fill, and per load-balanced service the flows each
backend was given and the slots its last change moved."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bpfgate.errors import NotFound

from .gateway import Gateway, running

# nat_stats counter -> (metric, help, extra label values); the label `interface` always comes first
COUNTERS = {
    "xlate_in": ("bpfgate_nat_translations", "Packets translated, by hook direction", ("ingress",)),
    "xlate_out": ("bpfgate_nat_translations", "Packets translated, by hook direction", ("egress",)),
    "flows": ("bpfgate_nat_flows", "Translated flows created", ()),
    "icmp_xlate": ("bpfgate_nat_icmp_errors_translated", "ICMP errors quoting a translated flow, translated", ()),
    "port_collision": ("bpfgate_nat_snat_port_collisions", "SNAT: a source port was taken, another one tried", ()),
    "port_exhausted": ("bpfgate_nat_snat_port_exhausted", "SNAT: no free source port found, packet dropped", ()),
    "ct_full": ("bpfgate_nat_table_full", "A new flow found the translation table full: packet passed "
                "untranslated", ()),
    "no_state": ("bpfgate_nat_no_state", "TCP packets for a stateful rule that open no flow and have none: "
                 "passed untranslated", ()),
    "rewrite_fail": ("bpfgate_nat_rewrite_failures", "A checksum or store helper failed: packet dropped", ()),
    "lb_no_backend": ("bpfgate_lb_no_backend", "A service's table slot held no live backend: passed "
                      "untranslated", ()),
    "lb_repick": ("bpfgate_lb_repicks", "Flows whose backend was removed, chosen again", ()),
}


class NatCollector:
    """The metrics of every NAT attached by bpfgate in `netns` (see the module docstring)."""

    def __init__(self, netns: str | None = None):
        self.netns = netns

    def collect(self) -> Iterator[Any]:
        families: dict[str, CounterMetricFamily] = {}

        def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
            if name not in families:
                families[name] = CounterMetricFamily(name, doc, labels=labels)
            return families[name]

        for _stat, (name, doc, extra) in COUNTERS.items():
            counter(name, doc, ["interface"] + (["direction"] if extra else []))
        entries = GaugeMetricFamily("bpfgate_nat_table_entries", "Entries in the translation table (two per "
                                    "stateful flow)", labels=["interface"])
        capacity = GaugeMetricFamily("bpfgate_nat_table_capacity", "Size of the translation table",
                                     labels=["interface"])
        be_flows = counter("bpfgate_lb_backend_flows", "New flows the load balancer gave a backend",
                           ["interface", "service", "backend"])
        moved = GaugeMetricFamily("bpfgate_lb_last_change_moved_slots", "Table slots whose backend the service's "
                                  "last change moved", labels=["interface", "service"])
        slots = GaugeMetricFamily("bpfgate_lb_table_slots", "Slots of the service's Maglev table",
                                  labels=["interface", "service"])
        for dev in running(self.netns):
            with contextlib.suppress(NotFound), Gateway.open(dev, self.netns, create=False) as gw:  # detached meanwhile
                st = gw.stats()
                for stat, (name, _doc, extra) in COUNTERS.items():
                    families[name].add_metric([dev, *extra], st.get(stat, 0))
                entries.add_metric([dev], st["ct_entries"])
                capacity.add_metric([dev], st["ct_capacity"])
                for (svc, backend), n in gw.backend_flows().items():
                    be_flows.add_metric([dev, svc, backend], n)
                for svc, (n, size) in gw.cfg.moved.items():
                    moved.add_metric([dev, svc], n)
                    slots.add_metric([dev, svc], size)
        yield from families.values()
        yield from (entries, capacity, moved, slots)
