"""Processes inside a host: one-shot `run`, background `spawn`, and killing by PID / process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Sequence

from bpfgate.errors import BpfgateError
from bpfgate.kernel import netns
from bpfgate.sandbox.names import proc_start_time
from bpfgate.sandbox.timing import scaled

# tools such as curl honour these; a proxy would send test traffic out of the sandbox
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}


class SandboxError(BpfgateError):
    """Building, using or tearing down a sandbox failed."""


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.update(extra or {})
    return env


def in_netns(ns: str | None, argv: Sequence[str]) -> list[str]:
    # `ip netns exec` execs argv (same PID) after also remounting /sys for the namespace
    argv = [str(a) for a in argv]
    return argv if ns is None else ["ip", "netns", "exec", ns, *argv]


def kill_group(pid: int, sig: int) -> None:
    """Signal the process group led by `pid` (we start every process in its own session)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


class Process:
    """A background process started in a host, leader of its own process group. `stop()` ends the
    group. The leader is reaped only by `stop()`: until then its PID (= the group's ID) cannot be
    reused, so signalling the group never hits a stranger."""

    def __init__(self, popen: subprocess.Popen, argv: list[str], host: str, log_path: str):
        self.popen = popen
        self.argv = argv
        self.host = host
        self.log_path = log_path
        self.pid = popen.pid
        self.start_time = proc_start_time(popen.pid)

    def __repr__(self) -> str:
        return f"<Process {self.pid} in {self.host}: {' '.join(self.argv)}>"

    def _exit_status(self) -> int | None:
        """Exit code (negative: killed by that signal) once the leader ended, without reaping it."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    @property
    def alive(self) -> bool:
        return self._exit_status() is None

    @property
    def returncode(self) -> int | None:
        return self._exit_status()

    def output(self) -> str:
        """What it wrote so far (stdout and stderr, interleaved)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float) -> int:
        """Until the leader exits (not reaped; see the class docstring); SandboxError after `timeout`."""
        deadline = time.monotonic() + timeout
        while (rc := self._exit_status()) is None:
            if time.monotonic() > deadline:
                raise SandboxError(f"wait for {self!r}", f"still running after {timeout:g}s")
            time.sleep(0.01)
        return rc

    def wait_for_output(self, text: str, seconds: float = 10.0) -> None:
        """Until the process has written TEXT (a peer's "ready", a tool's "listening on"); SandboxError when it
        exits without, or after scaled(seconds): a Python peer's start takes seconds on a loaded or emulated
        machine."""
        deadline = time.monotonic() + scaled(seconds)
        while True:
            alive = self.alive   # before reading: a peer that wrote TEXT and then exited is not an error
            out = self.output()
            if text in out:
                return
            if not alive or time.monotonic() > deadline:
                why = "exited" if not alive else f"not after {scaled(seconds):g}s"
                raise SandboxError(f"wait for {text!r} from {self!r}", f"{why}: {out.strip()[-500:] or 'no output'}")
            time.sleep(0.02)

    def terminate(self) -> None:
        if self.popen.returncode is None:
            kill_group(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = 3.0) -> int:
        """SIGTERM the group, SIGKILL whatever is left after `timeout`, reap; returns the exit code."""
        self.terminate()
        return self.finish(time.monotonic() + scaled(timeout))

    def finish(self, deadline: float) -> int:
        if self.popen.returncode is None:
            try:
                self.wait(max(0.0, deadline - time.monotonic()))
            except SandboxError:
                pass
            # children of a well-behaved leader may outlive it; the unreaped leader keeps the group ID ours
            kill_group(self.pid, signal.SIGKILL)
        return self.popen.wait(5)


def run(ns: str | None, host: str, argv: Sequence[str], timeout: float, *, input: bytes | str | None = None,
        check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = in_netns(ns, argv)
    timeout = scaled(timeout)  # commands run to completion: a slow machine takes longer, never less
    text = not isinstance(input, bytes)
    p = subprocess.Popen(full, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text,
                         env=clean_env(env), start_new_session=True)
    what = f"run {' '.join(map(str, argv))!r} in {host}"
    try:
        out, err = p.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _reap(p)
        raise SandboxError(what, f"timed out after {timeout:g}s") from None
    except BaseException:  # Ctrl-C: nothing we started may outlive us
        _reap(p)
        raise
    cp = subprocess.CompletedProcess(full, p.returncode, out, err)
    if check and p.returncode != 0:
        tail = (err or out or "").strip().splitlines()[-1:] or [""]
        raise SandboxError(what, f"exit status {p.returncode}: {tail[0]}")
    return cp


def _reap(p: subprocess.Popen) -> None:
    kill_group(p.pid, signal.SIGKILL)
    try:  # bounded: a grandchild that left the group could hold our pipes open
        p.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        pass


def spawn(ns: str | None, host: str, argv: Sequence[str], log_path: str,
          env: dict[str, str] | None = None) -> Process:
    full = in_netns(ns, argv)
    with open(log_path, "wb") as log:  # a file, not a pipe: a chatty server can never block on us
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=clean_env(env), start_new_session=True)
    return Process(p, [str(a) for a in argv], host, log_path)


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself holds a TCP socket listening on `port` (a connect probe could be
    answered by someone else already on that port)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return False
    for table in ("tcp", "tcp6"):  # /proc/<pid>/net shows that process's namespace
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            # local_address is ADDR:PORT in hex, state 0A is LISTEN, column 9 the socket's inode
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A" and cols[9] in inodes:
                return True
    return False


def pids_in_netns(ns: str) -> list[int]:
    """PIDs whose network namespace is the named one (what `ip netns pids` reports)."""
    try:
        st = os.stat(netns.path_of(ns))
    except FileNotFoundError:
        return []
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            ns_st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ns_st.st_dev, ns_st.st_ino) == (st.st_dev, st.st_ino):
            found.append(int(entry))
    return found


def kill_netns_pids(ns: str, deadline: float) -> list[int]:
    """SIGKILL every process still in the namespace (it cannot go away while they live)."""
    pids = pids_in_netns(ns)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}") and _not_zombie(p)]
        if pids:
            time.sleep(0.01)
    return pids


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
