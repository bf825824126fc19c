"""`apply --confirm`: a real detached watcher restores the previous policy unless confirmed (real traffic)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bpfgate import policyctl
from bpfgate.errors import NotFound
from bpfgate.policy.model import Policy
from bpfgate.policyctl import pending
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
T = 1.0
WEB_PORTS = (80, 8080)


@pytest.fixture
def net(web):
    """client -- server with HTTP on 80 and 8080; no confirm timer left pending when `web` removes the policies
    (this fixture tears down first)."""
    yield web
    _wait_no_pending(web.ns, 15)


def _wait_no_pending(ns, limit):
    deadline = time.monotonic() + limit
    path = pending.pending_path(ns)
    while (os.path.exists(path) or os.path.exists(path + ".rollback")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not os.path.exists(path) and not os.path.exists(path + ".rollback")


def served(n, port):
    return n.client.http_get(f"http://{n.ip4}:{port}/", 3.0).ok


def dropped(n, port):
    return n.client.http_get(f"http://{n.ip4}:{port}/", T).status is None


def pol(dev, port):
    return Policy.model_validate({"interfaces": [dev], "hooks": {"tc-ingress": {"rules": [
        {"name": "drop", "protocol": "tcp", "dst_port": port, "action": "drop"}]}}})


def test_unconfirmed_change_is_rolled_back(net):
    n = net
    policyctl.apply(pol(n.dev, 80), netns=n.ns)
    before = policyctl.running(n.ns)
    r = policyctl.apply(pol(n.dev, 8080), netns=n.ns, confirm=4)
    assert r.pending and r.pending.watcher_pid > 0
    assert served(n, 80) and dropped(n, 8080)          # the new policy runs ...
    assert _wait_no_pending(n.ns, 15), "the watcher did not act"
    last = pending.last_rollback(n.ns)
    assert last and last["ok"], last
    assert policyctl.running(n.ns) == before              # ... and the old one is back
    assert dropped(n, 80) and served(n, 8080)
    with pytest.raises(NotFound, match="no change is waiting"):
        policyctl.confirm(n.ns)


def test_first_apply_unconfirmed_detaches(net):
    n = net
    policyctl.apply(pol(n.dev, 80), netns=n.ns, confirm=3)
    assert dropped(n, 80)
    assert _wait_no_pending(n.ns, 15)
    assert policyctl.running(n.ns) == {}
    assert served(n, 80)


def test_confirmed_change_stays(net):
    n = net
    policyctl.apply(pol(n.dev, 80), netns=n.ns)
    r = policyctl.apply(pol(n.dev, 8080), netns=n.ns, confirm=4)
    policyctl.confirm(n.ns)
    time.sleep(r.pending.remaining + 0.5)
    assert not os.path.exists(pending.pending_path(n.ns) + ".rollback")
    assert served(n, 80) and dropped(n, 8080)
    try:
        os.kill(r.pending.watcher_pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive or _zombie_or_gone(r.pending.watcher_pid)


def _zombie_or_gone(pid):
    deadline = time.monotonic() + scaled(3)
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "bpfgate", *argv], capture_output=True, text=True, timeout=scaled(60),
                          check=False)


def test_cli_confirm_outlives_the_command_and_apply_confirmed(net, tmp_path):
    n = net
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    for f, port in ((old, 80), (new, 8080)):
        f.write_text(f"interfaces: [{n.dev}]\nhooks:\n  tc-ingress:\n    rules:\n"
                     f"      - {{name: drop, protocol: tcp, dst_port: {port}, action: drop}}\n")
    assert _cli("apply", "--netns", n.ns, str(old)).returncode == 0
    r = _cli("apply", "--netns", n.ns, "--confirm", "30", str(new))
    assert r.returncode == 0 and "rolls back in" in r.stdout, r.stderr
    r = _cli("apply", "--netns", n.ns, str(old))           # another change while one waits: refused
    assert r.returncode == 1 and "waiting for confirmation" in r.stderr
    r = _cli("apply", "--netns", n.ns, "--confirmed", str(new))
    assert r.returncode == 0 and "confirmed" in r.stdout and "no change" in r.stdout, r.stdout + r.stderr
    assert served(n, 80) and dropped(n, 8080)
    # and the command's watcher, started by a process that has exited, rolls back on its own
    r = _cli("apply", "--netns", n.ns, "--confirm", "3", str(old))
    assert r.returncode == 0
    assert dropped(n, 80)
    assert _wait_no_pending(n.ns, 15)
    assert served(n, 80) and dropped(n, 8080)
