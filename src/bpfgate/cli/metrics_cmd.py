"""`bpfgate metrics`: attach the SYN counter and the attempt log, export them for Prometheus."""

from __future__ import annotations

from contextlib import ExitStack

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds
from bpfgate.cli.events_cmd import (
    DURATION_HELP,
    dev_options,
    exit_on_signals,
    flood_event,
    open_attempts,
    open_syn,
    pump,
)


def register(app: click.Group) -> None:
    from bpfgate.inspect.metrics import DEFAULT_LISTEN

    @app.command("metrics")
    @dev_options
    @click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="ADDR:PORT",
                  help="where to serve /metrics (loopback unless you name another address; port 0: any free)")
    @click.option("--port", "ports", type=click.IntRange(0, 65535), multiple=True,
                  help="count connection attempts to this port (repeatable; default: every port)")
    @click.option("--syn-rate", type=click.IntRange(min=0), default=0, help="SYN flood threshold (SYNs/s/source)")
    @click.option("--block", type=Seconds(min=0), default=0.0, metavar="SECONDS",
                  help="drop a flooding source for this long (needs --syn-rate)")
    @click.option("--top", "top_n", type=click.IntRange(min=0), default=20, show_default=True,
                  help="export per-source SYN counts for this many of the busiest sources")
    @click.option("--duration", type=Seconds(min=0), default=None, help=DURATION_HELP)
    @click.option("--json", "as_json", is_flag=True, help="print the listen address as JSON")
    def metrics(devs, netns, listen, ports, syn_rate, block, top_n, duration, as_json):
        """Serve Prometheus metrics: SYNs, connection attempts, event loss, BPF program run stats.

        Metrics: bpfgate_syn_total{interface}, bpfgate_syn_blocked_total{interface},
        bpfgate_syn_source_total{interface,source}, bpfgate_syn_blocked_sources,
        bpfgate_connection_attempts_total{interface,port}, bpfgate_events_total{source},
        bpfgate_events_lost_total{source}, bpfgate_program_runs_total{program,id},
        bpfgate_program_run_seconds_total{program,id} (this command's programs and the policy
        engines'); from every policy engine attached in the
        namespace (read at scrape time): bpfgate_rule_packets_total{interface,hook,rule},
        bpfgate_rule_bytes_total{interface,hook,rule}, bpfgate_rule_drops_total{interface,hook},
        bpfgate_rule_log_events_total{interface,hook}, bpfgate_rule_log_events_lost_total{interface,hook};
        from egress steering in the namespace: bpfgate_steer_packets_total{outcome},
        bpfgate_steer_rule_packets_total{rule,source,dev,result}; from every tuned cgroup (`tune --samples`):
        bpfgate_tune_sockets_total{cgroup}, bpfgate_tune_setsockopt_failures_total{cgroup},
        bpfgate_tune_retransmits_total{cgroup}, bpfgate_tune_connections_ended_total{cgroup},
        bpfgate_tune_srtt_seconds{cgroup} (histogram); from every NAT in the namespace:
        bpfgate_nat_translations_total{interface,direction}, bpfgate_nat_flows_total{interface},
        bpfgate_nat_snat_port_collisions_total, bpfgate_nat_snat_port_exhausted_total,
        bpfgate_nat_table_full_total, bpfgate_nat_rewrite_failures_total, bpfgate_nat_no_state_total,
        bpfgate_nat_icmp_errors_translated_total, bpfgate_nat_table_entries, bpfgate_nat_table_capacity
        {interface}; per load-balanced service: bpfgate_lb_backend_flows_total{interface,service,backend},
        bpfgate_lb_last_change_moved_slots{interface,service}, bpfgate_lb_table_slots{interface,service},
        bpfgate_lb_no_backend_total{interface}, bpfgate_lb_repicks_total{interface}.
        """
        from bpfgate.errors import BadInput
        from bpfgate.inspect import metrics as M
        from bpfgate.inspect.events import EventStream
        from bpfgate.inspect.rules import RuleCollector
        from bpfgate.kernel.stats import stats_enabled
        from bpfgate.nat import NatCollector
        from bpfgate.steer import SteerCollector
        from bpfgate.tune import TuneCollector

        if block and not syn_rate:
            raise BadInput("bpfgate metrics", "--block needs --syn-rate")
        M.parse_listen(listen)  # a bad address fails before anything is attached
        with exit_on_signals(), ExitStack() as stack:
            syn = open_syn(stack, devs, netns, rate=syn_rate, block=block)
            log = open_attempts(stack, devs, netns, ports)
            sources = [syn.event_source(), log.event_source()]
            # consume the events so the loss counters mean "fell behind", not "nobody reads"
            stream = stack.enter_context(EventStream(sources))
            stack.enter_context(stats_enabled())
            exp = stack.enter_context(M.Exporter())
            for c in (M.SynCollector(syn, top_n), M.AttemptCollector(log), M.EventCollector(sources),
                      M.ProgramCollector([syn.prog, log.prog], engines_in=[netns])):
                exp.add(c)
            rules = exp.add(RuleCollector(netns))
            stack.callback(rules.close)
            exp.add(SteerCollector(netns))
            exp.add(TuneCollector())
            exp.add(NatCollector(netns))
            host, port = exp.serve(listen)
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
            if as_json:
                term.print_json_line({"listen": f"{host}:{port}", "url": url})
            else:
                term.info(f"serving {url} (Ctrl-C to stop)")
            def on_record(rec) -> bool:
                flood_event(syn, stream.describe(rec))   # blocks through the engine where one runs
                return False

            pump(stream, duration, on_record if syn.engine_blockers else None, syn.sweep if block else None)
