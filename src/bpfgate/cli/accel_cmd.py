"""`bpfgate accel`: sockmap acceleration of local TCP between sockets of an opted-in cgroup."""

from __future__ import annotations

import click

from bpfgate.cli import term


def register(app: click.Group) -> None:
    @app.command("accel")
    @click.argument("cgroup", required=False)
    @click.option("--port", "ports", type=int, multiple=True, metavar="PORT",
                  help="Accelerate connections with this local or remote port (repeatable).")
    @click.option("--all-ports", is_flag=True, help="Accelerate every local connection of the cgroup.")
    @click.option("--selftest", is_flag=True, help="Only run the kernel self-test (byte integrity, stalls, "
                  "half-close on a scratch connection pair) and say whether acceleration would be enabled.")
    @click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
    def accel_cmd(cgroup, ports, all_ports, selftest, as_json):
        """Move the messages of TCP connections between local sockets of CGROUP's processes (a cgroup v2
        path, or relative to its mount) straight into the peer socket (sockmap, sk_msg), for connections
        established from now on. The kernel is self-tested first and refused with the reason when it fails;
        `bpfgate detach --cgroup` drains and removes it, the connections carry on as plain TCP."""
        from bpfgate import accel
        from bpfgate.errors import BadInput

        if selftest:
            detail = accel.selftest()
            term.print_json_line({"selftest": "ok", "detail": detail}) if as_json else term.ok(detail)
            return
        if cgroup is None:
            raise BadInput("bpfgate accel", "no cgroup given", hint="bpfgate accel CGROUP --port PORT")
        att = accel.enable(cgroup, ports=ports, all_ports=all_ports)
        what = "every port" if all_ports else "ports " + ", ".join(map(str, sorted(set(ports))))
        if as_json:
            term.print_json_line({"cgroup": att.cgroup, "prog_id": att.prog_id, "ports": sorted(set(ports)),
                                  "all_ports": all_ports})
        else:
            term.ok(f"local TCP of {att.cgroup} accelerated on {what} (kernel self-test passed)")
