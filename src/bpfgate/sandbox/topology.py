"""Sandbox, hosts (network namespaces), veth links with addresses and routes."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from bpfgate.errors import from_errno
from bpfgate.kernel import netns
from bpfgate.sandbox import cleanup, names, probe, procs
from bpfgate.sandbox.timing import scaled
from bpfgate.sandbox.procs import Process, SandboxError
from bpfgate.signals import signals_deferred

NET4 = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range: never routed anywhere
NET6 = ipaddress.ip_network("fd00::/8")  # unique local addresses
# links between namespaces: 198.18.<n>.0/24 and fd00:0:0:<n>::/64, n = 1..255 (they only meet
# inside our namespaces, so concurrent runs may reuse them). Links that end in the root namespace share
# it with every other run: they get a random, unused /30 of 198.19.0.0/16 and the matching fd00:0:1:<k>::/64.
ROOT_NET4 = ipaddress.ip_network("198.19.0.0/16")
IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40


def _nl(op: str, fn, *args, **kw):
    """Call pyroute2, turning a netlink error into the matching typed error."""
    try:
        return fn(*args, **kw)
    except NetlinkError as e:
        raise from_errno(op, e.code) from None


@dataclass(eq=False)
class Iface:
    """One end of a veth link, in `host`; `ip4`/`ip6` are its addresses, `peer` the other end."""

    host: "Host"
    name: str
    ip4: str
    ip6: str
    net4: ipaddress.IPv4Network
    net6: ipaddress.IPv6Network
    peer: "Iface | None" = field(default=None, repr=False)

    @property
    def index(self) -> int:
        """ifindex inside the host's namespace (what TC/XDP attach calls take)."""
        return self.host.ifindex(self.name)

    def addr(self, family: int) -> str:
        return self.ip6 if family == 6 else self.ip4


@dataclass(eq=False)
class Link:
    a: Iface
    b: Iface
    mtu: int | None = None

    def end(self, host: "Host") -> Iface:
        """This link's interface in `host`."""
        for i in (self.a, self.b):
            if i.host is host:
                return i
        raise ValueError(f"{host.name} is not on link {self.a.name}-{self.b.name}")

    def peer_of(self, host: "Host") -> Iface:
        return self.end(host).peer


class Host:
    """A network namespace (None: the namespace the sandbox was made in, i.e. the root one)."""

    def __init__(self, sandbox: "Sandbox", name: str, ns: str | None):
        self.sandbox = sandbox
        self.name = name
        self.netns = ns
        self.ifaces: list[Iface] = []
        with netns.entered(ns):  # a netlink socket acts in the namespace it was created in
            self.ipr = IPRoute()

    def __repr__(self) -> str:
        return f"<Host {self.name} netns={self.netns}>"

    @property
    def is_root(self) -> bool:
        return self.netns is None

    # ---- Python code and processes inside the host --------------------------------------------------

    def entered(self):
        """`with host.entered(): ...` runs the body (this thread) in the host's network namespace."""
        return netns.entered(self.netns)

    def run(self, argv: Sequence[str], timeout: float = 10.0, *, check: bool = False,
            input: bytes | str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a command to completion in the host (output captured); killed and SandboxError on timeout."""
        return procs.run(self.netns, self.name, argv, timeout, input=input, check=check, env=env)

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Process:
        """Start a background process in the host; stopped (by PID/process group) at teardown."""
        return self.sandbox._spawn(self, argv, env)

    def http_server(self, port: int = 8000, bind: str | None = None, timeout: float = 5.0) -> Process:
        """Serve a small page on `port` (bind None: every address, IPv4 and IPv6); returns once the
        server process listens on the port."""
        www = tempfile.mkdtemp(prefix=f"www-{self.name}-{port}-", dir=self.sandbox.workdir)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write(f"bpfgate sandbox {self.name}\n")
        bind = bind or "::"  # http.server binds '::' dual-stack (IPV6_V6ONLY off): both families
        proc = self.spawn([sys.executable, "-m", "http.server", "--bind", bind, "--directory", www, str(port)])
        timeout = scaled(timeout)  # Python's start: seconds under emulation
        deadline = time.monotonic() + timeout
        while not procs.listens_on(proc.pid, port):
            if not proc.alive or time.monotonic() > deadline:
                out = (proc.output().strip().splitlines() or ["no output"])[-1]
                why = f"exited with {proc.returncode}" if not proc.alive else f"not listening after {timeout:g}s"
                proc.stop()
                raise SandboxError(f"start http server on [{bind}]:{port} in {self.name}", f"{why}: {out}")
            time.sleep(0.01)
        return proc

    def http_get(self, url: str, timeout: float = 3.0) -> probe.HttpResult:
        """GET `url` (literal address) from inside the host: status + body, or error; never raises
        for network failures."""
        self._check_dst(probe.url_host(url))
        return probe.http_get(self.netns, url, timeout)

    def tcp_connect(self, addr: str, port: int, timeout: float = 2.0) -> bool:
        self._check_dst(addr)
        return probe.tcp_connect(self.netns, addr, port, timeout)

    def ping(self, addr: str, timeout: float = 2.0, count: int = 1) -> bool:
        """ICMP/ICMPv6 echo; True when all `count` requests were answered within `timeout` each."""
        self._check_dst(addr)
        return probe.ping(self.netns, addr, timeout, count) == count

    def _check_dst(self, addr: str) -> None:
        # the root namespace has a way out of the machine: from there, probe only loopback and our links
        ip = ipaddress.ip_address(addr)
        if self.is_root and not ip.is_loopback and not any(ip in (i.net6 if ip.version == 6 else i.net4)
                                                           for i in self.ifaces):
            raise SandboxError(f"probe {addr} from the root namespace",
                               "not loopback and not on a sandbox link of the root namespace")

    # ---- configuration -----------------------------------------------------------------------------

    def sysctl(self, key: str, value: str | int) -> None:
        """Write /proc/sys/<key> ('net.ipv4.ip_forward' or 'net/ipv4/ip_forward') in this namespace."""
        if self.is_root:
            raise SandboxError(f"set {key}", "the sandbox does not change the root namespace's sysctls")
        path = "/proc/sys/" + key.replace(".", "/")
        with self.entered():  # /proc/sys/net shows the namespace of the thread that opens it
            with open(path, "w") as f:
                f.write(str(value))

    def set_forwarding(self, on: bool = True) -> None:
        self.sysctl("net.ipv4.ip_forward", int(on))
        self.sysctl("net.ipv6.conf.all.forwarding", int(on))

    def ifindex(self, ifname: str) -> int:
        idx = self.ipr.link_lookup(ifname=ifname)
        if not idx:
            raise SandboxError(f"look up interface {ifname} in {self.name}", "no such interface")
        return idx[0]

    def iface(self, name: str) -> Iface:
        for i in self.ifaces:
            if i.name == name:
                return i
        raise SandboxError(f"look up interface {name} in {self.name}", "not made by this sandbox")

    def route(self, dst: str, via: "str | Iface") -> None:
        """Add a route to `dst` (CIDR or 'default'/'default6') via an address or a peer's interface."""
        v6 = dst == "default6" or (dst != "default" and ipaddress.ip_network(dst).version == 6)
        if isinstance(via, Iface):
            via = via.ip6 if v6 else via.ip4
        dst = {"default": "0.0.0.0/0", "default6": "::/0"}.get(dst, dst)
        _nl(f"add route {dst} via {via} in {self.name}", self.ipr.route, "add", dst=dst, gateway=via)

    def default_route(self, via: "Link | Iface") -> None:
        """Default routes, IPv4 and IPv6, via the other end of `via` (a link of this host) or an Iface."""
        gw = via.peer_of(self) if isinstance(via, Link) else via
        self.route("default", gw)
        self.route("default6", gw)

    def _close(self) -> None:
        self.ipr.close()


@dataclass
class Routed:
    """client -- router -- server, default routes through the router, forwarding on."""

    client: Host
    router: Host
    server: Host
    left: Link
    right: Link


class Sandbox:
    """Throwaway network namespaces linked by veths. See the package docstring."""

    def __init__(self, prefix: str = names.DEFAULT_PREFIX):
        self.prefix = prefix
        for _ in range(10):  # 3 random characters per PID: retry the rare clash
            self.tag = names.new_tag(prefix)
            self.record = cleanup.Record(self.tag, os.getpid(), cleanup.owner_start_time())
            try:
                self.record.claim()
                break
            except FileExistsError:
                continue
        else:
            raise SandboxError("create sandbox", "no free name")
        self.hosts: dict[str, Host] = {}
        self.links: list[Link] = []
        self.processes: list[Process] = []
        self._closed = False
        self._n_links = 0
        self._n_root_ifaces = 0
        try:
            self.workdir = tempfile.mkdtemp(prefix=f"bpfgate-{self.tag}-")
            self.record.workdir = self.workdir
            self.record.save()
            self.root = Host(self, "root", None)
        except BaseException:
            cleanup.remove_record(self.record)
            raise
        cleanup.register(self)

    def __repr__(self) -> str:
        return f"<Sandbox {self.tag} hosts={list(self.hosts)}>"

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- building --------------------------------------------------------------------------------

    def host(self, name: str, *, forwarding: bool = False) -> Host:
        """A new network namespace `<tag>-<name>` with loopback up and IPv6 DAD off."""
        if name in self.hosts or name == "root":
            raise ValueError(f"host {name!r} exists")
        ns = names.netns_name(self.tag, name)
        self.record.netns.append(ns)
        self.record.save()  # before creating: a crash right after still leaves a trace for sweep_stale
        r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=scaled(10))
        if r.returncode != 0:
            raise SandboxError(f"create network namespace {ns}", r.stderr.strip() or f"exit {r.returncode}")
        host = self.hosts[name] = Host(self, name, ns)
        _nl(f"set lo up in {name}", host.ipr.link, "set", index=host.ifindex("lo"), state="up")
        # addresses usable at once, link-local ones included (we also add globals with nodad)
        host.sysctl("net.ipv6.conf.all.accept_dad", 0)
        host.sysctl("net.ipv6.conf.default.accept_dad", 0)
        if forwarding:
            host.set_forwarding(True)
        return host

    def router(self, name: str = "router") -> Host:
        return self.host(name, forwarding=True)

    def link(self, a: Host, b: Host, *, net4: str | None = None, net6: str | None = None,
             mtu: int | None = None, ifnames: tuple[str | None, str | None] = (None, None)) -> Link:
        """A veth pair between hosts `a` and `b` (either may be `sandbox.root`), `a` gets the first
        address of each subnet, `b` the second; both ends up."""
        if a is b:
            raise ValueError("a link needs two different hosts")
        n4, n6 = self._subnets(a.is_root or b.is_root, net4, net6)
        ends = []
        for host, want in ((a, ifnames[0]), (b, ifnames[1])):
            if want and host.is_root:  # teardown deletes it by name: it must be ours beyond doubt
                raise ValueError("root-namespace interface names are chosen by the sandbox (<tag><n>)")
            ends.append(names.check_ifname(want) if want else self._ifname(host))
        if a.is_root or b.is_root:
            self.record.ifaces.append(ends[0] if a.is_root else ends[1])
            self.record.save()
        # create from the side whose namespace owns the netlink socket; the peer moves by fd
        first, second = (a, b) if not b.is_root else (b, a)
        first_name, second_name = (ends[0], ends[1]) if first is a else (ends[1], ends[0])
        fd = os.open(netns.path_of(second.netns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _nl(f"create veth {first_name}@{first.name} -- {second_name}@{second.name}", first.ipr.link,
                "add", ifname=first_name, kind="veth", peer={"ifname": second_name, "net_ns_fd": fd})
        finally:
            os.close(fd)
        ia = Iface(a, ends[0], str(n4[1]), str(n6[1]), n4, n6)
        ib = Iface(b, ends[1], str(n4[2]), str(n6[2]), n4, n6, peer=ia)
        ia.peer = ib
        for i in (ia, ib):
            self._configure(i, mtu)
            i.host.ifaces.append(i)
        for i in (ia, ib):  # or the first packets are dropped or held back for a second
            self._wait_up(i)
        link = Link(ia, ib, mtu)
        self.links.append(link)
        return link

    def routed(self, client: str = "client", router: str = "router", server: str = "server",
               mtu: int | None = None) -> Routed:
        """The usual test topology: client -- router -- server, both families routed."""
        c, r, s = self.host(client), self.router(router), self.host(server)
        left, right = self.link(c, r, mtu=mtu), self.link(r, s, mtu=mtu)
        c.default_route(left)
        s.default_route(right)
        return Routed(c, r, s, left, right)

    def _ifname(self, host: Host) -> str:
        if host.is_root:
            self._n_root_ifaces += 1
            return names.root_ifname(self.tag, self._n_root_ifaces)
        taken = {i.name for i in host.ifaces}
        return next(f"eth{k}" for k in range(len(taken) + 1) if f"eth{k}" not in taken)

    def _subnets(self, touches_root: bool, net4: str | None, net6: str | None):
        if net4 is None and net6 is None:
            if touches_root:
                return self._free_root_subnets()
            self._n_links += 1
            if self._n_links > 255:
                raise SandboxError("allocate link subnet", "more than 255 links in one sandbox")
            return (ipaddress.ip_network(f"198.18.{self._n_links}.0/24"),
                    ipaddress.ip_network(f"fd00:0:0:{self._n_links:x}::/64"))
        if net4 is None or net6 is None:
            raise ValueError("give both net4 and net6, or neither")
        n4, n6 = ipaddress.ip_network(net4), ipaddress.ip_network(net6)
        if not (n4.subnet_of(NET4) and n6.subnet_of(NET6)) or n4.prefixlen > 30 or n6.prefixlen > 126:
            raise ValueError(f"link subnets must lie in {NET4} / {NET6} with room for two hosts")
        return n4, n6

    def _free_root_subnets(self):
        used = [ipaddress.ip_interface(f"{a.get('address')}/{a['prefixlen']}").network
                for a in self.root.ipr.get_addr(family=2)]
        for _ in range(64):
            k = random.randrange(1, ROOT_NET4.num_addresses // 4)
            n4 = ipaddress.ip_network((int(ROOT_NET4.network_address) + 4 * k, 30))
            if not any(n4.overlaps(u) for u in used):
                return n4, ipaddress.ip_network(f"fd00:0:1:{k:x}::/64")
        raise SandboxError("allocate a root-namespace subnet", f"no free /30 in {ROOT_NET4}")

    def _configure(self, i: Iface, mtu: int | None) -> None:
        ipr, idx, where = i.host.ipr, i.host.ifindex(i.name), f"{i.name} in {i.host.name}"
        if i.host.is_root:  # our own interface only: its link-local address usable without DAD's 1 s
            with open(f"/proc/sys/net/ipv6/conf/{i.name}/accept_dad", "w") as f:
                f.write("0")
        if mtu:
            _nl(f"set mtu {mtu} on {where}", ipr.link, "set", index=idx, mtu=mtu)
        _nl(f"add {i.ip4} to {where}", ipr.addr, "add", index=idx, address=i.ip4, prefixlen=i.net4.prefixlen)
        _nl(f"add {i.ip6} to {where}", ipr.addr, "add", index=idx, address=i.ip6,
            prefixlen=i.net6.prefixlen, flags=IFA_F_NODAD)
        _nl(f"set {where} up", ipr.link, "set", index=idx, state="up")

    def _wait_up(self, i: Iface, timeout: float = 3.0) -> None:
        """Until the interface is usable for both families: operstate UP (carrier seen, qdisc attached)
        and an IPv6 link-local address that is no longer tentative. Without the latter, the kernel
        cannot send neighbour solicitations from it (a router forwarding to a new neighbour needs one)
        and retries only after a second."""
        host, what = i.host, f"{i.name} in {i.host.name}"
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            idx = host.ifindex(i.name)
            link = _nl(f"read state of {what}", host.ipr.get_links, idx)[0]
            addrs = _nl(f"read addresses of {what}", host.ipr.get_addr, index=idx, family=socket.AF_INET6)
            flags = {a.get("address"): a.get("IFA_FLAGS", a["flags"]) for a in addrs}
            ready = (link.get("IFLA_OPERSTATE") == "UP"
                     and any(a.startswith("fe80:") for a in flags)
                     and not any(f & IFA_F_TENTATIVE for f in flags.values()))
            if ready:
                return
            if time.monotonic() > deadline:
                raise SandboxError(f"bring up {what}", f"not ready after {timeout:g}s")
            time.sleep(0.002)

    def _spawn(self, host: Host, argv: Sequence[str], env: dict[str, str] | None) -> Process:
        if self._closed:
            raise SandboxError(f"start {argv[0]} in {host.name}", "sandbox is closed")
        fd, log = tempfile.mkstemp(prefix=f"{host.name}-{os.path.basename(str(argv[0]))}-", suffix=".log",
                                   dir=self.workdir)
        os.close(fd)
        proc = procs.spawn(host.netns, host.name, argv, log, env)
        self.processes.append(proc)
        self.record.procs.append((proc.pid, proc.start_time))
        self.record.save()
        return proc

    # ---- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything: processes (by PID, whole process groups), namespaces, root interfaces,
        the work dir, bpfgate's state and pins of the namespaces. Safe to call twice; raises SandboxError
        naming what could not be removed."""
        if self._closed:
            return
        problems: list[str] = []
        with signals_deferred():
            self._stop_processes(problems)
            for h in [self.root, *self.hosts.values()]:
                h._close()  # an open netlink socket would keep its namespace alive
            left = cleanup.remove_record(self.record)
            if not left:   # the namespaces are gone: so is what bpfgate kept for them (a policy left attached)
                cleanup.remove_run_state(lambda tag, _pid: tag == self.tag, self.prefix)
            problems += left
            self._closed = True
            cleanup.unregister(self)
        if problems:
            raise SandboxError(f"tear down sandbox {self.tag}", "; ".join(problems))

    def _stop_processes(self, problems: list[str]) -> None:
        for p in self.processes:  # all at once, then one shared deadline
            p.terminate()
        deadline = time.monotonic() + scaled(2)
        for p in self.processes:
            try:
                p.finish(deadline)
            except subprocess.TimeoutExpired:
                problems.append(f"process {p.pid} ({p.argv[0]}) survived SIGKILL")
