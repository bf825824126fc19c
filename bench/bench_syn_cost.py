"""Per-packet cost of SYN counting (XDP) and of the connection-attempt log (TC), by BPF_PROG_TEST_RUN,
against the empty program of the same hook in the same run (selftest's bg_empty_xdp / bg_empty_tc).

Each rep runs every case once, side by side, `REPEAT` packets per case; figures are medians of the
reps (min-max), the cost above the empty floor, and the ratio to the floor. Run as root:
    .venv/bin/python bench/bench_syn_cost.py
"""

from __future__ import annotations

import os
import socket
import sys

import dpkt

sys.path.insert(0, os.path.dirname(__file__))
from common import fmt, header, median  # noqa: E402

from bpfgate.inspect.attempts import AttemptLog  # noqa: E402
from bpfgate.inspect.events import EventStream  # noqa: E402
from bpfgate.inspect.syn import SynCounter  # noqa: E402
from bpfgate.kernel.objects import BpfObject  # noqa: E402
from bpfgate.kernel.testrun import test_run  # noqa: E402

REPEAT = 2_000_000
REPS = 7


def frame(flags: int, src: str = "198.18.0.1", dport: int = 443, v6: bool = False) -> bytes:
    tcp = dpkt.tcp.TCP(sport=40000, dport=dport, flags=flags, win=64240)
    if v6:
        ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, "fd00::1"),
                          dst=socket.inet_pton(socket.AF_INET6, "fd00::2"), nxt=6, hlim=64, data=tcp,
                          plen=len(bytes(tcp)))
        return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + bytes(ip)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton("198.18.0.2"), p=6, data=tcp)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + bytes(ip)


SYN, ACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK


def main() -> None:
    header(f"bench_syn_cost: ns/packet by BPF_PROG_TEST_RUN, {REPEAT} packets per case, {REPS} reps")
    with BpfObject.open("selftest") as self_obj, SynCounter(rate=0) as syn, \
            SynCounter(rate=10**12) as syn_detect, SynCounter(rate=0) as syn_block, AttemptLog([443]) as att:
        self_obj.load()
        syn_block.block("198.18.0.66", 3600)
        empty_xdp, empty_tc = self_obj.program("bg_empty_xdp"), self_obj.program("bg_empty_tc")
        # name -> (program, packet, floor name)
        cases = {
            "xdp empty (floor)": (empty_xdp, frame(SYN), None),
            "syn: ACK (parse only)": (syn.prog, frame(ACK), "xdp empty (floor)"),
            "syn: SYN v4 counted": (syn.prog, frame(SYN), "xdp empty (floor)"),
            "syn: SYN v6 counted": (syn.prog, frame(SYN, v6=True), "xdp empty (floor)"),
            "syn: SYN v4 + flood detector": (syn_detect.prog, frame(SYN), "xdp empty (floor)"),
            "syn: SYN v4 from blocked src": (syn_block.prog, frame(SYN, src="198.18.0.66"), "xdp empty (floor)"),
            "tc empty (floor)": (empty_tc, frame(SYN), None),
            "attempts: SYN unwatched port": (att.prog, frame(SYN, dport=80), "tc empty (floor)"),
            "attempts: ACK watched port": (att.prog, frame(ACK), "tc empty (floor)"),
        }
        results: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(REPS + 1):  # the first rep warms up and is dropped
            for name, (prog, pkt, _) in cases.items():
                results[name].append(test_run(prog, pkt, repeat=REPEAT).duration_ns)
        verdicts = {name: test_run(prog, pkt).retval for name, (prog, pkt, _) in cases.items()}
        for name in results:
            results[name] = results[name][1:]

        width = max(map(len, cases)) + 2
        for name, (_, _, floor) in cases.items():
            line = f"{name:<{width}} {fmt(results[name], 'ns', digits=1)}  verdict {verdicts[name]}"
            if floor:
                extra = median(results[name]) - median(results[floor])
                line += f"  +{extra:.1f} ns over floor, x{median(results[name]) / median(results[floor]):.2f}"
            print(line)
        emitted(empty_tc, width)


def emitted(floor_prog, width: int) -> None:
    """A watched SYN emits a 64-byte event: a 16 MiB ring drained between reps, so every run submits."""
    n = 100_000
    with AttemptLog([443], ring_size=16 << 20) as att:
        stream = EventStream([att.event_source()], handler=lambda batch: None)
        ours, floor = [], []
        for i in range(REPS + 1):
            ours.append(test_run(att.prog, frame(SYN), repeat=n).duration_ns)
            floor.append(test_run(floor_prog, frame(SYN), repeat=n).duration_ns)
            stream.poll(0)
        submitted, lost = stream.submitted, stream.lost
        stream.close()
    ours, floor = ours[1:], floor[1:]
    print(f"{'attempts: SYN watched, event':<{width}} {fmt(ours, 'ns', digits=1)}  "
          f"+{median(ours) - median(floor):.1f} ns over floor, x{median(ours) / median(floor):.2f}  "
          f"({submitted} events submitted, {lost} lost)")


if __name__ == "__main__":
    main()
