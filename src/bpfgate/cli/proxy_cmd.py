"""`bpfgate proxy`: a TCP proxy whose data path is in the kernel (sk_skb verdicts on a sockhash)."""

from __future__ import annotations

import click

from bpfgate.cli import term
from bpfgate.cli.params import Seconds


def register(app: click.Group) -> None:
    @app.command("proxy")
    @click.option("--listen", required=True, metavar="ADDR:PORT", help="Where clients connect (port 0: any free).")
    @click.option("--to", "to", required=True, metavar="ADDR:PORT", help="The backend each client is connected to.")
    @click.option("--mode", type=click.Choice(["auto", "kernel", "relay"]), default="auto", show_default=True,
                  help="kernel: refuse unless the kernel path passes its self-test; relay: user space only "
                       "(splice(2)); auto: the kernel path if its self-test passes, else relay.")
    @click.option("--duration", type=Seconds(min=0), default=None, help="Stop after this many seconds "
                  "(default: until Ctrl-C).")
    @click.option("--json", "as_json", is_flag=True, help="Print the listen address (and the path) as JSON.")
    def proxy_cmd(listen, to, mode, duration, as_json):
        """Accept clients on ADDR:PORT, connect each to the backend, and let the kernel move the bytes both
        ways (sk_skb stream verdict redirecting between the two sockets in a sockhash: no copy through this
        process). A self-test on scratch pairs runs first (bytes waiting before a socket joins, concurrent
        1 MiB exchanges, half-close); if it fails, the reason is printed and the proxy relays in user space
        (--mode kernel refuses instead). Half-closes are passed on once the bytes before them are; a pair
        that makes no progress for 30 s is reset and counted as stalled."""
        from bpfgate import proxy
        from bpfgate.cli.events_cmd import exit_on_signals

        lst, dst = proxy.parse_addr(listen, "--listen"), proxy.parse_addr(to, "--to")

        def text(addr):
            return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"

        with exit_on_signals(), proxy.Proxy(lst, dst, mode=mode) as p:
            path = "relay" if p.splicer is None else "kernel"

            def ready(addr):
                if as_json:
                    term.print_json_line({"listen": text(addr), "to": text(dst),
                                          "path": path, "refusal": p.refusal})
                    return
                if p.refusal and mode != "relay":
                    term.warning(f"not using the kernel path: {p.refusal}")
                where = "in the kernel" if path == "kernel" else "in user space (splice(2))"
                term.ok(f"proxying {text(addr)} -> {text(dst)} {where} (Ctrl-C stops)")

            try:
                p.serve(duration, on_ready=ready)
            finally:   # Ctrl-C or the end of --duration: what the kernel carried
                summary = {"spliced": p.spliced, "relayed": p.relayed, "stalled": p.stalled}
                if as_json:
                    term.print_json_line(summary)
                else:
                    term.ok(f"{p.spliced} connections spliced in the kernel, {p.relayed} relayed in user space, "
                            f"{p.stalled} stalled (reset)")
