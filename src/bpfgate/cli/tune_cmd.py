"""`bpfgate tune`: TCP tuning per cgroup (sock_ops): congestion control, buffer sizes, no-delay."""

from __future__ import annotations

import click

from bpfgate.cli import term


def register(app: click.Group) -> None:
    @app.command("tune")
    @click.argument("cgroup")
    @click.option("--cc", metavar="NAME", help="Congestion control (one the kernel offers: "
                  "/proc/sys/net/ipv4/tcp_available_congestion_control).")
    @click.option("--sndbuf", type=int, metavar="BYTES", help="SO_SNDBUF (the kernel doubles it, as for setsockopt).")
    @click.option("--rcvbuf", type=int, metavar="BYTES", help="SO_RCVBUF (doubled likewise).")
    @click.option("--nodelay", is_flag=True, help="TCP_NODELAY on established connections.")
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def tune_cmd(cgroup, cc, sndbuf, rcvbuf, nodelay, as_json):
        """Tune the TCP sockets that processes of CGROUP (a cgroup v2 path, or relative to its mount) open
        from now on; again on the same cgroup replaces the settings; `bpfgate detach --cgroup` removes it."""
        from bpfgate import tune

        att = tune.apply(cgroup, cc=cc, sndbuf=sndbuf, rcvbuf=rcvbuf, nodelay=nodelay)
        if as_json:
            term.print_json({"cgroup": att.cgroup, "prog_id": att.prog_id, "cc": cc, "sndbuf": sndbuf,
                             "rcvbuf": rcvbuf, "nodelay": nodelay})
        else:
            term.ok(f"TCP tuning on {att.cgroup}: " + ", ".join(
                f"{k} {v}" for k, v in (("cc", cc), ("sndbuf", sndbuf), ("rcvbuf", rcvbuf)) if v)
                + (", nodelay" if nodelay else ""))
