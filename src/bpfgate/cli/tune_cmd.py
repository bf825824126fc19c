"""`bpfgate tune`: TCP tuning per cgroup (sock_ops): congestion control, buffer sizes, no-delay, initial
congestion window; RTT/retransmit samples as events (`--watch`) and metrics (`bpfgate metrics`)."""

from __future__ import annotations

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds


def register(app: click.Group) -> None:
    @app.command("tune")
    @click.argument("cgroup")
    @click.option("--cc", metavar="NAME", help="Congestion control (one the kernel offers: "
                  "/proc/sys/net/ipv4/tcp_available_congestion_control).")
    @click.option("--sndbuf", type=int, metavar="BYTES", help="SO_SNDBUF (the kernel doubles it, as for setsockopt).")
    @click.option("--rcvbuf", type=int, metavar="BYTES", help="SO_RCVBUF (doubled likewise).")
    @click.option("--nodelay", is_flag=True,
                  help="TCP_NODELAY on established connections (Linux >= 6.1: refused before that).")
    @click.option("--iw", type=int, metavar="SEGMENTS", help="Initial congestion window (TCP_BPF_IW).")
    @click.option("--samples", is_flag=True, help="Per-connection RTT, retransmit and end samples: events "
                  "(--watch) and metrics (bpfgate metrics: bpfgate_tune_*).")
    @click.option("--sample-gap", type=Seconds(min=0), default=1.0, show_default=True, metavar="SECONDS",
                  help="At most one RTT event per connection per this many seconds (0: every sample).")
    @click.option("--watch", is_flag=True, help="Print the cgroup's samples as JSON lines (after tuning, if "
                  "settings are given).")
    @click.option("--duration", type=Seconds(min=0), default=None, help="--watch: stop after this many seconds.")
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def tune_cmd(cgroup, cc, sndbuf, rcvbuf, nodelay, iw, samples, sample_gap, watch, duration, as_json):
        """Tune the TCP sockets that processes of CGROUP (a cgroup v2 path, or relative to its mount) open
        from now on; again on the same cgroup replaces the settings; `bpfgate detach --cgroup` removes it."""
        from bpfgate import tune

        settings = {"cc": cc, "sndbuf": sndbuf, "rcvbuf": rcvbuf, "iw": iw}
        if not watch or any(v is not None for v in settings.values()) or nodelay or samples:
            att = tune.apply(cgroup, cc=cc, sndbuf=sndbuf, rcvbuf=rcvbuf, nodelay=nodelay, iw=iw,
                             samples=samples, sample_gap=sample_gap)
            if as_json:
                term.print_json_line({"cgroup": att.cgroup, "prog_id": att.prog_id, **settings,
                                      "nodelay": nodelay, "samples": samples})
            else:
                term.ok(f"TCP tuning on {att.cgroup}: " + ", ".join(
                    [f"{k} {v}" for k, v in settings.items() if v] + (["nodelay"] if nodelay else [])
                    + (["samples"] if samples else [])))
        if watch:
            _watch(tune, cgroup, duration)


def _watch(tune, cgroup: str, duration: float | None) -> None:
    from bpfgate.cli.events_cmd import exit_on_signals, pump
    from bpfgate.inspect.events import EventStream

    with exit_on_signals(), EventStream([tune.event_source(cgroup)]) as stream:
        def show(rec) -> bool:
            term.print_json_line(stream.describe(rec))
            return False

        pump(stream, duration, show, tick=lambda: [term.print_json_line(e) for e in stream.loss_events()])
