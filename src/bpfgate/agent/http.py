"""The agent's HTTP endpoints (loopback by default): /healthz (the loop runs), /readyz (the first round is
done and every policy file applied), /metrics (Prometheus: the agent's own figures, and every policy
engine's rule counters, the steering's and the NAT's counters in its namespace, read at scrape time)."""

from __future__ import annotations

import errno
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from bpfgate.agent.daemon import Agent
from bpfgate.errors import from_errno
from bpfgate.inspect.metrics import Exporter, parse_listen


class AgentCollector:
    def __init__(self, agent: Agent):
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        a = self.agent
        c = CounterMetricFamily("bpfgate_agent_reconciles", "Reconcile rounds, by result", labels=["result"])
        c.add_metric(["ok"], a.rounds - a.failed_rounds)
        c.add_metric(["error"], a.failed_rounds)
        yield c
        yield CounterMetricFamily("bpfgate_agent_drift_repairs", "Engines found missing in the kernel and "
                                  "attached again", value=a.repairs)
        g = GaugeMetricFamily("bpfgate_agent_policy_files", "Policy files in the directory, by state",
                              labels=["state"])
        errors = a.last_round.errors if a.last_round else {}
        bad = len([f for f in a.files if f.path in errors])
        g.add_metric(["ok"], len(a.files) - bad)
        g.add_metric(["error"], bad)
        yield g
        yield GaugeMetricFamily("bpfgate_agent_last_reconcile_timestamp_seconds",
                                "When the last reconcile round ended (Unix time)", value=a.last_round_time)


class Server:
    def __init__(self, agent: Agent, interval: float):
        from bpfgate.inspect.rules import RuleCollector
        from bpfgate.nat import NatCollector
        from bpfgate.steer import SteerCollector

        self.agent, self.interval = agent, interval
        self.exporter = Exporter()
        self.exporter.add(AgentCollector(agent))
        self.rules = self.exporter.add(RuleCollector(agent.netns))
        # the namespace's steering and NAT, whoever set them up (a policy file's steer: section, the CLI)
        self.exporter.add(SteerCollector(agent.netns))
        self.exporter.add(NatCollector(agent.netns))
        self._httpd: ThreadingHTTPServer | None = None

    def serve(self, listen: str) -> tuple[str, int]:
        host, port = parse_listen(listen)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:   # noqa: N802 (http.server's name)
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.exporter.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = server.agent.healthy(server.interval)
                    self._send(200 if ok else 503, b"ok\n" if ok else b"reconcile loop stalled\n")
                elif path == "/readyz":
                    code, body = server.readiness()
                    self._send(code, body.encode())
                else:
                    self._send(404, b"not found: /healthz /readyz /metrics\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:   # scrapes are not worth a log line each
                pass

        family = ThreadingHTTPServer
        if ":" in host:
            family = type("V6Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        try:
            self._httpd = family((host, port), Handler)
        except OSError as e:
            hint = "another process listens there; pick another --listen" if e.errno == errno.EADDRINUSE else None
            raise from_errno(f"listen on {listen}", e.errno or errno.EINVAL, hint=hint) from None
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="agent-http", daemon=True).start()
        return host, self._httpd.server_address[1]

    def readiness(self) -> tuple[int, str]:
        a = self.agent
        if not a.ready.is_set():
            return 503, "first reconcile not done yet\n"
        errors = a.last_round.errors if a.last_round else {}
        if errors:
            return 503, "".join(f"{path}: {err}\n" for path, err in sorted(errors.items()))
        return 200, "ok\n"

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.rules.close()
