"""Throwaway network topologies for tests and `bpfgate demo`: hosts are network namespaces, linked by
veth pairs, with real processes and real traffic inside; everything goes away at the end.

    from bpfgate.sandbox import Sandbox

    with Sandbox() as sb:                       # names: bg<pid36>-<rand>-<host>, unique per run
        t = sb.routed()                         # client -- router -- server, v4 + v6, forwarding on
        t.server.http_server(8080)              # python http.server on [::]:8080, waits until it accepts
        r = t.client.http_get(f"http://[{t.right.b.ip6}]:8080/")
        assert r.status == 200
        assert t.client.ping(t.right.b.ip4) and t.client.tcp_connect(t.right.b.ip4, 8080)
        with t.router.entered():                # this thread in the router's namespace (e.g. attach BPF)
            idx = t.left.b.index                # ifindex of the router's interface towards the client

Building by hand: `sb.host(name)`, `sb.router(name)` (forwarding on), `sb.link(a, b, mtu=...)`
(`sb.root` is the namespace the sandbox was made in; links to it get a random free /30 of 198.19/16),
`host.default_route(link)`, `host.route(cidr, via)`, `host.sysctl(key, value)`.
Addresses: links between namespaces get 198.18.<n>.0/24 and fd00:0:0:<n>::/64 (IPv6 with nodad), the
first host given to `link` takes .1/::1, the second .2/::2. `link.a`, `link.b` are `Iface`s with
`name`, `ip4`, `ip6`, `index`, `peer`.
Processes: `host.run(argv, timeout)` -> CompletedProcess (SandboxError on timeout, process group killed),
`host.spawn(argv)` -> Process (`.stop()`, `.wait(t)`, `.alive`, `.output()`), stopped by PID at teardown.
Links are returned ready (operstate UP, IPv6 link-local usable): the first packet is not lost or held.

Teardown (`close()`, the `with` exit, atexit, SIGTERM turned into SystemExit; Ctrl-C is held until
teardown ends) kills the processes, removes root-namespace veths and the namespaces. A run killed with
SIGKILL leaves a marker in /run/bpfgate/sandbox/; `sweep_stale()` removes what dead runs left, and
`leftovers(pid)` lists what a live process still has (the test suite's leak check).
"""

import atexit

from bpfgate.sandbox.cleanup import close_all, leftovers, sweep_stale
from bpfgate.sandbox.probe import HttpResult
from bpfgate.sandbox.procs import Process, SandboxError
from bpfgate.sandbox.topology import Host, Iface, Link, Routed, Sandbox

atexit.register(close_all)

__all__ = ["Sandbox", "Host", "Iface", "Link", "Routed", "Process", "HttpResult", "SandboxError",
           "sweep_stale", "leftovers"]
