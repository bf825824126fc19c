"""Per-rule counters of policy engines in Prometheus, scraped over HTTP after real traffic: every engine
attached in the namespace (two hooks), counts equal to the engine's own counters, an engine attached after
the exporter started, and `bpfgate metrics` serving them."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys

import pytest
from test_inspect_engine_events import connect
from test_inspect_metrics import scrape

from bpfgate.inspect import metrics as M
from bpfgate.inspect.rules import RuleCollector
from bpfgate.policy.model import HookPolicy
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
WAIT = scaled(10.0)


@pytest.fixture
def net(sandbox, engines):
    c, s = sandbox.host("cli"), sandbox.host("srv")
    link = sandbox.link(c, s)

    def attach(policy, hook):
        return engines(link.b.name, hook, HookPolicy.model_validate(policy), netns_name=s.netns)

    return c, s, link, attach


def key(name: str, dev: str, hook: str, rule: str) -> tuple:
    return (name, ("hook", hook), ("interface", dev), ("rule", rule))


def test_rule_counters_scraped_over_http(net):
    client, server, link, attach = net
    dev = link.b.name
    ing = attach({"default": "allow", "rules": [
        {"name": "open-7070", "protocol": "tcp", "dst_port": 7070, "log": True},
        {"name": "shut-7071", "protocol": "tcp", "dst_port": 7071, "action": "drop"},
    ]}, "tc-ingress")
    with M.Exporter() as exp:
        collector = exp.add(RuleCollector(server.netns))
        try:
            host, port = exp.serve("127.0.0.1:0")
            url = f"http://{host}:{port}/metrics"
            for _ in range(3):
                assert connect(client, link.b.ip4, 7070) == "refused"   # exactly one SYN in, one RST out
            assert connect(client, link.b.ip4, 7071, timeout=0.3) == "timeout"
            # an engine attached after the exporter started is scraped too
            egr = attach({"default": "allow", "rules": [{"name": "rst-out", "protocol": "tcp", "tcp_flags": "rst"}]},
                         "tc-egress")
            assert connect(client, link.b.ip6, 7070) == "refused"
            m = scrape(url)
            c_in, c_out = ing.counters(), egr.counters()
            assert m[key("bpfgate_rule_packets_total", dev, "tc-ingress", "open-7070")] == 4 == \
                c_in["open-7070"].packets
            assert m[key("bpfgate_rule_bytes_total", dev, "tc-ingress", "open-7070")] == c_in["open-7070"].bytes > 4 * 60
            dropped = m[key("bpfgate_rule_packets_total", dev, "tc-ingress", "shut-7071")]
            assert dropped >= 1 and dropped == c_in["shut-7071"].packets
            assert m[key("bpfgate_rule_packets_total", dev, "tc-ingress", "(default)")] == c_in["(default)"].packets
            assert m[key("bpfgate_rule_packets_total", dev, "tc-egress", "rst-out")] == 1 == c_out["rst-out"].packets
            assert m[("bpfgate_rule_drops_total", ("hook", "tc-ingress"), ("interface", dev))] == dropped
            assert m[("bpfgate_rule_drops_total", ("hook", "tc-egress"), ("interface", dev))] == 0
            # log events of open-7070: 4 submitted (nobody reads them here, the ring has room: none lost)
            assert m[("bpfgate_rule_log_events_total", ("hook", "tc-ingress"), ("interface", dev))] == 4
            assert m[("bpfgate_rule_log_events_lost_total", ("hook", "tc-ingress"), ("interface", dev))] == 0
            assert m[("bpfgate_rule_log_events_total", ("hook", "tc-egress"), ("interface", dev))] == 0
            # a detached engine disappears from the next scrape
            egr.detach()
            m = scrape(url)
            assert not [k for k in m if ("hook", "tc-egress") in k]
            assert m[key("bpfgate_rule_packets_total", dev, "tc-ingress", "open-7070")] == 4
        finally:
            collector.close()


def _serve(dev: str, netns_name: str) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "bpfgate.cli.main", "metrics", "--dev", dev, "--netns", netns_name,
            "--listen", "127.0.0.1:0", "--port", "1", "--json"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = select.select([p.stdout], [], [], WAIT * 3)[0]
    first = json.loads(p.stdout.readline() or "null") if ready else None
    if not first:
        p.kill()
        pytest.fail(f"bpfgate metrics did not start: {p.communicate()[1][-2000:]}")
    return p, first["url"]


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            _, err = p.communicate(timeout=WAIT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            pytest.fail("bpfgate metrics ignored SIGTERM")
        assert p.returncode == 128 + signal.SIGTERM, err
        assert "Traceback" not in err


def test_cli_metrics_serves_rule_counters(net):
    client, server, link, attach = net
    dev = link.b.name
    eng = attach({"default": "allow", "rules": [{"name": "web", "protocol": "tcp", "dst_port": 7080}]}, "tc-ingress")
    # traffic before the command starts: counters are read from the engine, whenever they were made
    for _ in range(2):
        assert connect(client, link.b.ip4, 7080) == "refused"
    p, url = _serve(dev, server.netns)
    try:
        m = scrape(url)
        assert m[key("bpfgate_rule_packets_total", dev, "tc-ingress", "web")] == 2 == eng.counters()["web"].packets
        assert m[key("bpfgate_rule_bytes_total", dev, "tc-ingress", "web")] == eng.counters()["web"].bytes
    finally:
        _stop(p)


def test_cli_metrics_with_traffic_while_serving(net):
    client, server, link, attach = net
    dev = link.b.name
    eng = attach({"default": "allow", "rules": [{"name": "web", "protocol": "tcp", "dst_port": 7080}]}, "tc-ingress")
    p, url = _serve(dev, server.netns)
    try:
        for _ in range(2):
            assert connect(client, link.b.ip4, 7080) == "refused"
        assert eng.counters()["web"].packets == 2
        m = scrape(url)
        assert m[key("bpfgate_rule_packets_total", dev, "tc-ingress", "web")] == 2
        # the engine's own programs' run statistics (stats are on while metrics serves): its packets ran it
        runs = {dict(k[1:])["program"]: v for k, v in m.items() if k[0] == "bpfgate_program_runs_total"}
        assert runs.get("bg_engine_tc", 0) >= 2, runs
    finally:
        _stop(p)


def test_reattached_engine_is_read_afresh_and_detached_one_leaves_nothing(net):
    client, server, link, attach = net
    pol = {"default": "allow", "rules": [{"name": "r", "protocol": "tcp", "dst_port": 7090}]}
    eng = attach(pol, "tc-ingress")
    collector = RuleCollector(server.netns)
    try:
        assert connect(client, link.b.ip4, 7090) == "refused"
        m = {(s.name, s.labels.get("rule")): s.value for f in collector.collect() for s in f.samples}
        assert m[("bpfgate_rule_packets_total", "r")] == 1
        store_dir = eng.store.dir
        eng.detach()
        assert [s for f in collector.collect() for s in f.samples] == []
        assert not __import__("os").path.exists(store_dir)    # reading did not recreate the engine's state
        eng2 = attach(pol, "tc-ingress")
        for _ in range(2):
            assert connect(client, link.b.ip4, 7090) == "refused"
        m = {(s.name, s.labels.get("rule")): s.value for f in collector.collect() for s in f.samples}
        assert m[("bpfgate_rule_packets_total", "r")] == 2 == eng2.counters()["r"].packets
    finally:
        collector.close()
