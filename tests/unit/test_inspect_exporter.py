"""The exporter without a kernel: listen-address parsing (loopback by default), collectors over stand-in
counters render conventional Prometheus names and labels, the registry accepts other modules' collectors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from bpfgate.errors import BpfgateError
from bpfgate.inspect import metrics as M
from bpfgate.inspect.syn import Block, SynSource, SynTotal


@pytest.mark.parametrize("listen,expect", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("[::1]:9000", ("::1", 9000)),
    (":9100", ("127.0.0.1", 9100)),
    ("9100", ("127.0.0.1", 9100)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_parse_listen(listen, expect):
    assert M.parse_listen(listen) == expect


@pytest.mark.parametrize("listen", ["localhost:9464", "127.0.0.1:x", "127.0.0.1:65536", "1.2.3:80", ""])
def test_parse_listen_rejects(listen):
    with pytest.raises(BpfgateError):
        M.parse_listen(listen)


def test_default_listen_is_loopback():
    assert M.parse_listen(M.DEFAULT_LISTEN)[0] == "127.0.0.1"


@dataclass
class FakeSyn:
    interfaces: dict = field(default_factory=lambda: {2: "eth0"})

    def totals(self):
        return {2: SynTotal(10, 4)}

    def top(self, n):
        return [SynSource(2, 4, "198.18.0.9", 8, 0), SynSource(2, 6, "fd00::1", 2, 0)][:n]

    def blocks(self):
        return [Block("198.18.0.9", 1)]


class FakeLog:
    interfaces = {2: "eth0"}

    def counts(self):
        return {(2, 22): 5, (3, 443): 1}


@dataclass
class FakeSource:
    name: str
    sent: int
    lost: int

    def counters(self):
        return self.sent, self.lost


def _samples(exp: M.Exporter) -> dict:
    out = {}
    for fam in text_string_to_metric_families(exp.render()):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def test_collectors_render_conventional_names():
    exp = M.Exporter()
    exp.add(M.SynCollector(FakeSyn(), top=1))
    exp.add(M.AttemptCollector(FakeLog()))
    exp.add(M.EventCollector([FakeSource("syn", 3, 0), FakeSource("attempts", 7, 2)]))
    m = _samples(exp)
    assert m[("bpfgate_syn_total", ("interface", "eth0"))] == 10
    assert m[("bpfgate_syn_blocked_total", ("interface", "eth0"))] == 4
    assert m[("bpfgate_syn_source_total", ("interface", "eth0"), ("source", "198.18.0.9"))] == 8
    assert not any(k[0] == "bpfgate_syn_source_total" and ("source", "fd00::1") in k for k in m)  # top=1
    assert m[("bpfgate_syn_blocked_sources",)] == 1
    assert m[("bpfgate_connection_attempts_total", ("interface", "eth0"), ("port", "22"))] == 5
    assert m[("bpfgate_connection_attempts_total", ("interface", "if3"), ("port", "443"))] == 1
    assert m[("bpfgate_events_total", ("source", "attempts"))] == 7
    assert m[("bpfgate_events_lost_total", ("source", "attempts"))] == 2


def test_other_modules_add_collectors():
    class Rules:
        def collect(self):
            c = CounterMetricFamily("bpfgate_rule_hits", "hits", labels=["rule"])
            c.add_metric(["ssh"], 3)
            yield c

    exp = M.Exporter()
    rules = exp.add(Rules())
    assert _samples(exp)[("bpfgate_rule_hits_total", ("rule", "ssh"))] == 3
    exp.remove(rules)
    assert _samples(exp) == {}
