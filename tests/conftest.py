"""Shared fixtures. Kernel tests (`@pytest.mark.kernel`) need root; each test module and the session end
with a leak check: no network namespace, root-namespace veth or sandbox marker of this process, no new pin
under /sys/fs/bpf/bpfgate, no new attachment record or state under /run/bpfgate (engine state, clsact
markers, ...) and, in CI (alone on the machine), no new namespace, root clsact or bg* cgroup may survive
a module or the run. Pins and state carry no owner: a new path counts as ours
unless it names another run's sandbox (so key per-namespace state by the sandbox host's netns name)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bpfgate import families
from bpfgate.sandbox import Sandbox, leftovers, sweep_stale
from bpfgate.sandbox.names import owner_of

PIN_ROOT = "/sys/fs/bpf/bpfgate"
RUN_ROOT = "/run/bpfgate"
RUN_SKIP = ("sandbox",)  # sandbox markers: judged by leftovers() (their owner is in the file)
# bpfgate's own directories under RUN_ROOT, made on first use and kept like RUN_ROOT itself: new ones
# are no leak (on a freshly booted machine the first run makes them)
# the root namespace's control-plane lock (policyctl/-/lock) too: cgroup policies take it, and like any
# lock file it stays
RUN_CONTAINERS = ("attachments", os.path.join("attachments", "clsact"), "policyctl", os.path.join("policyctl", "-"),
                  os.path.join("policyctl", "-", "lock"), *families.with_state())
IS_ROOT = os.geteuid() == 0
NOT_ROOT_REASON = "kernel test: needs root (BPF, network namespaces); run `sudo scripts/run test`"


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason=NOT_ROOT_REASON)
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)


def _paths(root: str, skip: tuple[str, ...] = ()) -> set[str]:
    found = set()
    for parent, dirs, files in os.walk(root):
        if parent == root:
            dirs[:] = [d for d in dirs if d not in skip]
        found.update(os.path.join(parent, n) for n in dirs + files)
    return found


def _trees() -> dict[str, set[str]]:
    """What bpfgate keeps outside namespaces: pins, and records and state under /run/bpfgate."""
    from bpfgate import attach

    attach.records()   # drops the records of links whose process died (nothing is left to undo)
    return {"pin": _paths(PIN_ROOT), "state": _paths(RUN_ROOT, RUN_SKIP)}


def _held_by_another_process(path: str) -> bool:
    """A record of a link another live process holds (its `pid`): not this run's to judge."""
    if not path.endswith(".json") or os.path.basename(os.path.dirname(path)) != "attachments":
        return False
    try:
        with open(path) as f:
            pid = json.load(f).get("pid", 0)
        return bool(pid) and pid != os.getpid() and os.path.exists(f"/proc/{pid}")
    except (OSError, ValueError, AttributeError):
        return False


def _other_runs(path: str, root: str) -> bool:
    """The path names another live run's sandbox (e.g. engine/<tag>-server/eth0/... or a record
    <tag>-server.eth0.tc-ingress-...json, a cgroup path quoted in a record key), or is a record of a link
    another process holds: runs share this machine."""
    if _held_by_another_process(path):
        return True
    for piece in re.split(r"[./]|%2F", os.path.relpath(path, root)):
        o = owner_of(piece)
        if o and o[1] != os.getpid():
            return True
    return False


def _leaked(before: dict[str, set[str]]) -> list[str]:
    """Paths (and empty directories) that appeared since `before`, except other runs'."""
    leaked = []
    for (what, paths), root in zip(_trees().items(), (PIN_ROOT, RUN_ROOT)):
        for path in sorted(paths - before[what]):
            if _other_runs(path, root) or (root == RUN_ROOT and os.path.relpath(path, root) in RUN_CONTAINERS):
                continue
            if os.path.isdir(path) and not os.path.islink(path) and os.listdir(path):
                continue  # a parent: its contents are judged one by one
            leaked.append(f"{what} {path}")
    return leaked


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def _records() -> set[str]:
    from bpfgate import attach

    return {a.key for a in attach.records()}


def _root_clsacts() -> set[str]:
    from bpfgate.kernel import netlink, tc

    return {i.name for i in netlink.interfaces() if tc.has_clsact(i.name)}


def _cgroups() -> set[str]:
    """cgroup v2 directories named bg* (tests name the cgroups they make so), four levels deep at most."""
    from bpfgate import status

    root = status.cgroup2_mount()
    found: set[str] = set()
    if not root:
        return found
    for parent, dirs, _files in os.walk(root):
        depth = os.path.relpath(parent, root).count(os.sep)
        found.update(os.path.join(parent, d) for d in dirs if d.startswith("bg"))
        if depth >= 3:
            dirs[:] = []
    return found


def _host_state() -> dict[str, set[str]]:
    """Machine-wide state a test could leak. Compared only in CI (CI=true), where this run is alone."""
    return {"network namespace": _netns(), "attachment record": _records(), "clsact qdisc on": _root_clsacts(),
            "cgroup": _cgroups()}


def _host_leaks(before: dict[str, set[str]]) -> list[str]:
    """What appeared since `before`, except what names another run's sandbox (a namespace, or a record
    keyed by one): a developer's runs share the machine, CI's do not."""
    out = []
    for what, names in _host_state().items():
        for n in sorted(names - before[what]):
            o = owner_of(os.path.basename(n).split(".", 1)[0])
            if not (o and o[1] != os.getpid()):
                out.append(f"{what} {n}")
    return out


@pytest.fixture(scope="session", autouse=True)
def leak_check():
    """Fails the session (error at teardown of its last test) if this run left anything behind."""
    if not IS_ROOT:
        yield
        return
    sweep_stale()  # what crashed runs left: their owner PIDs are gone, so it is nobody's
    before = _trees()
    alone = bool(os.environ.get("CI"))
    host_before = _host_state() if alone else {}
    yield
    leaks = leftovers(os.getpid()) + _leaked(before)
    if alone:
        leaks += _host_leaks(host_before)
    if leaks:
        pytest.fail("this test run left behind:\n  " + "\n  ".join(leaks), pytrace=False)


@pytest.fixture(scope="module", autouse=True)
def module_leak_check(leak_check):
    """The same check per test module (pins, /run/bpfgate; in CI also namespaces, records, root clsacts
    and cgroups), so a leak names the module that made it."""
    if not IS_ROOT:
        yield
        return
    before = _trees()
    alone = bool(os.environ.get("CI"))
    host_before = _host_state() if alone else {}
    yield
    leaks = _leaked(before) + (_host_leaks(host_before) if alone else [])
    if leaks:
        pytest.fail("this test module left behind:\n  " + "\n  ".join(leaks), pytrace=False)


@pytest.fixture
def sandbox():
    """A fresh Sandbox (see bpfgate.sandbox), torn down after the test, pass or fail."""
    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    with Sandbox() as sb:
        yield sb


@pytest.fixture
def pair(sandbox):
    """client <-> server over one veth pair: (client, server, client's iface, server's iface)."""
    client, server = sandbox.host("client"), sandbox.host("server")
    link = sandbox.link(client, server)
    return client, server, link.end(client), link.end(server)


@pytest.fixture
def engines():
    """attach(dev, hook, policy, netns_name=..., **kw) -> Engine; every engine it attached is detached after
    the test, pass or fail (one detached by the test itself is skipped)."""
    from bpfgate.engine import Engine
    from bpfgate.errors import NotFound

    attached = []

    def attach(dev, hook, policy, **kw):
        eng = Engine.attach(dev, hook, policy, **kw)
        attached.append(eng)
        return eng

    yield attach
    for eng in attached:
        try:
            eng.detach()
        except NotFound:
            pass


@pytest.fixture
def policies_removed(sandbox):
    """remove_after(ns): every bpfgate policy of namespace ns and its control-plane state are removed after
    the test, pass or fail, before the sandbox's namespaces go (a fixture using this one tears down first)."""
    from bpfgate import policyctl

    namespaces = []
    yield namespaces.append
    for ns in namespaces:
        try:
            policyctl.remove(netns=ns)
        finally:
            shutil.rmtree(os.path.join(RUN_ROOT, "policyctl", ns), ignore_errors=True)


@pytest.fixture
def web(request, sandbox, policies_removed):
    """client -- server serving HTTP (both families) on the test module's WEB_PORTS (default 8080 and 8081),
    as an object: client, server, link, dev (the server's interface), ns, ip4, ip6. Every bpfgate policy of
    the server's namespace and its control-plane state are removed after the test, pass or fail."""
    client, server = sandbox.host("client"), sandbox.host("server")
    link = sandbox.link(client, server)
    for port in getattr(request.module, "WEB_PORTS", (8080, 8081)):
        server.http_server(port)
    end = link.end(server)
    n = SimpleNamespace(client=client, server=server, link=link, dev=end.name, ns=server.netns,
                        ip4=end.ip4, ip6=end.ip6)
    policies_removed(n.ns)
    return n


@pytest.fixture
def cgroup():
    """A child cgroup of the cgroup v2 mount, named bg* (the leak check looks for those), removed after the
    test with whatever bpfgate attached to it (rmdir fails, and the test with it, while a child process of
    the test is still in it)."""
    from bpfgate import attach, status
    from bpfgate.sandbox.names import netns_name, new_tag

    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    root = status.cgroup2_mount()
    assert root, "no cgroup v2 mount"
    cg = os.path.join(root, netns_name(new_tag(), "cg"))
    os.mkdir(cg)
    try:
        yield cg
    finally:
        attach.detach_matching(target=cg, any_netns=True)
        os.rmdir(cg)


FRONTEND_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "frontend")


@pytest.fixture(scope="session")
def frontend_binary(tmp_path_factory) -> str:
    """The `bpfgate` command's C front end (frontend/bpfgate.c) built from source as `make install` builds it."""
    build = tmp_path_factory.mktemp("frontend-build")
    subprocess.run(["make", "-s", "-C", FRONTEND_SRC, f"BUILD={build}"], check=True)
    return str(build / "bpfgate")


@pytest.fixture
def frontend(frontend_binary, tmp_path):
    """install(python_cli=None) -> (path, calls): the front end copied into a bin directory of its own, beside a
    `bpfgate-py` that appends its arguments to the file `calls` and runs the shell command `python_cli`
    (default: this Python's bpfgate CLI). `calls` empty after a command: the front end started no Python."""
    def install(python_cli: str | None = None) -> tuple[str, str]:
        bindir = tmp_path / f"bin{len(list(tmp_path.glob('bin*')))}"
        bindir.mkdir()
        calls = bindir / "calls"
        calls.write_text("")
        run = python_cli or f"exec {shlex.quote(sys.executable)} -m bpfgate \"$@\""
        script = bindir / "bpfgate-py"
        script.write_text(f"#!/bin/sh\necho \"$*\" >> {shlex.quote(str(calls))}\n{run}\n")
        script.chmod(0o755)
        shutil.copy(frontend_binary, bindir / "bpfgate")
        return str(bindir / "bpfgate"), str(calls)
    return install
