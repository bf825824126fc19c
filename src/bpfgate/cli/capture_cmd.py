"""`bpfgate capture`: matching packets copied in the kernel, written to pcap/pcapng (and/or JSON lines)."""

from __future__ import annotations

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds
from bpfgate.errors import BadInput
from bpfgate.inspect.capture import (
    MAX_SNAPLEN,
    VERDICTS,
    CaptureFilter,
    capture_to_file,
    engine_capture,
    engine_has_capture,
    rule_capture,
)


def register(app: click.Group) -> None:
    @app.command("capture")
    @click.option("--dev", required=True, help="Interface to capture on.")
    @click.option("--netns", help="The interface is in this named network namespace.")
    @click.option("--rule", help="Capture the packets this policy rule (of an engine attached on DEV) decides, "
                                 "with the engine's real verdict.")
    @click.option("--engine", "all_engine", is_flag=True,
                  help="Capture every packet the engine attached on DEV decides, with its verdict and rule.")
    @click.option("--proto", help="tcp, udp, icmp, icmpv6, sctp or a protocol number.")
    @click.option("--port", type=int, help="Source or destination port (tcp/udp).")
    @click.option("--host", help="Source or destination address or CIDR (IPv4 or IPv6).")
    @click.option("--snaplen", type=click.IntRange(1, MAX_SNAPLEN), default=MAX_SNAPLEN, show_default=True,
                  help="Bytes kept of each packet.")
    @click.option("--count", type=click.IntRange(min=1), help="Stop after N packets.")
    @click.option("--duration", type=Seconds(min=0, min_open=True), metavar="SECONDS", help="Stop after this long.")
    @click.option("--direction", type=click.Choice(["ingress", "egress", "both"]), default=None,
                  help="Default: both, or the rule's hook direction with --rule.")
    @click.option("-w", "--write", "path", metavar="FILE", help="Write packets to FILE (pcap; pcapng with --pcapng).")
    @click.option("--pcapng", is_flag=True, help="pcapng, with each packet's hook/direction/verdict as a comment.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON line per packet on stdout, then a summary line.")
    @click.argument("expression", nargs=-1)
    def capture_cmd(dev, netns, rule, all_engine, proto, port, host, snaplen, count, duration, direction, path, pcapng,
                    as_json, expression):
        """Capture packets on DEV in the kernel: only matching packets, cut to the snaplen, reach user space.

        EXPRESSION: a tcpdump-style filter, its common subset (host, net, port, portrange, src/dst,
        tcp/udp/sctp/icmp/icmp6, ip/ip6, and/or/not, parentheses), e.g. 'tcp port 443 and not net
        198.18.0.0/16'; compiled to the kernel-side filter, and with --proto/--port/--host.

        Stops after --count packets, --duration seconds, Ctrl-C or SIGTERM; the file is complete either way
        and nothing stays attached."""
        if not path and not as_json:
            raise BadInput("capture", "nowhere to put packets", hint="give -w FILE and/or --json")
        engine = None
        if all_engine and rule is not None:
            raise BadInput("capture", "--engine and --rule exclude each other",
                               hint="--engine: every packet; --rule NAME: the packets that rule decides")
        expression = " ".join(expression)
        if (rule is not None or all_engine) and (proto or port or host or expression):
            raise BadInput("capture", f"{'--rule' if rule else '--engine'} and match options "
                               "(--proto/--port/--host, a filter expression) exclude each other")
        if all_engine or rule is not None:
            hook, rule_id, names, eng_dir = engine_capture(dev, netns, rule)
            if rule is not None and not engine_has_capture(dev, hook, netns):
                engine = None       # an engine attached by an older bpfgate: the capture program's label
            else:
                engine = (hook, rule_id, names)
        if engine is not None:
            if direction not in (None, eng_dir):
                what = f"rule {rule}" if rule else "the engine"
                raise BadInput("capture", f"{what} runs at {eng_dir}: --direction {direction} sees "
                                   "none of its packets")
            direction = eng_dir
            filt = CaptureFilter(rule=rule)
        elif rule is not None:
            filt, rule_dir, shadows = rule_capture(rule, dev, netns)
            if shadows:
                term.err.print(f"bpfgate: warning: rules before {rule} may match some of these packets first "
                               f"({', '.join(shadows)}): those are labelled verdict={VERDICTS[filt.verdict]} "
                               f"(rule {rule}) all the same", markup=False)
            if direction not in (None, rule_dir):
                raise BadInput("capture", f"rule {rule} runs at {rule_dir}: --direction {direction} sees "
                                   "none of its packets")
            direction = rule_dir
        else:
            filt = CaptureFilter.parse(proto, port, host, expression)
        direction = direction or "both"

        def ready() -> None:
            if not as_json:
                what = filt.describe() if engine is None else (
                    f"packets rule {rule} decides" if rule else "every packet the engine decides")
                term.err.print(f"capturing {what} on {dev} ({direction}), Ctrl-C to stop", markup=False)

        def show(pkt, clock) -> None:
            term.print_json_line({"type": "packet", "interface": dev, **pkt.to_json(clock)})

        summary = capture_to_file(path, dev, filt, netns_name=netns, snaplen=snaplen, count=count,
                                  duration=duration, direction=direction, pcapng=pcapng,
                                  on_packet=show if as_json else None, on_ready=ready, engine=engine)
        if as_json:
            term.print_json_line({"type": "summary", **summary.to_json()})
        else:
            where = f" to {path}" if path else ""
            term.err.print(f"{summary.written} packets written{where} ({summary.matched} matched, "
                           f"{summary.lost} lost)", markup=False)
