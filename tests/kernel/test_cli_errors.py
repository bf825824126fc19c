"""User errors from the CLI: one line naming the operation and the cause, non-zero exit, no traceback."""

import json
import subprocess
import sys

import pytest

from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]


def bpfgate(*args, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "bpfgate", *args], capture_output=True, text=True,
                          timeout=scaled(60))


@pytest.mark.parametrize("cmd", [["status"], ["detach"], ["demo"]])
def test_missing_privileges_one_line(cmd):
    r = bpfgate(*cmd, prefix=NO_CAPS)
    assert r.returncode == 4
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "missing CAP_" in lines[0]


def test_unknown_namespace():
    r = bpfgate("status", "--netns", "bg-nonexistent-ns")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no such network namespace" in r.stderr


def test_usage_error_is_not_a_traceback():
    r = bpfgate("detach", "--hook", "bogus")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bogus" in r.stderr


@pytest.mark.parametrize("args, says", [
    (["detach", "--dev", "bg-nosuch0"], "no such interface"),          # a typo is not "nothing attached"
    (["detach", "--cgroup", "/sys/fs/cgroup/bg-nosuch"], "no such cgroup directory"),
    (["capture", "--dev", "lo", "-w", "/", "--count", "1"], "Is a directory"),
    (["flows", "--dev", "lo", "--duration", "abc"], "'abc' is not a number of seconds"),
    (["tune", "/tmp", "--cc", "cubic"], "not a cgroup v2 directory"),     # a path, not a missing feature
])
def test_what_does_not_exist_or_is_no_file_is_bad_input(args, says):
    r = bpfgate(*args)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr


@pytest.mark.parametrize("args, says, json_empty", [
    (["nat", "list"], "bpfgate runs no NAT", []),
    (["lb", "list"], "bpfgate runs no NAT", []),
    (["steer", "list"], "steering is not attached", {"rules": [], "interfaces": [], "stats": {}}),
])
def test_listing_nothing_says_so_and_a_missing_namespace_is_not_found(sandbox, args, says, json_empty):
    # as `rules` (and `nft list ruleset`): a namespace where nothing runs lists nothing, exit 0, and says so
    # rather than printing a bare header; a namespace that does not exist is not found (exit 2), not "nothing"
    ns = sandbox.host("empty").netns
    r = bpfgate(*args, "--netns", ns)
    assert r.returncode == 0 and says in r.stdout and r.stderr == "", r
    r = bpfgate(*args, "--netns", ns, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == json_empty, r
    r = bpfgate(*args, "--netns", "bg-nonexistent-ns")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "no such network namespace" in lines[0], r.stderr


def test_explain_with_no_policy_is_not_found(sandbox):
    # as `policy classifier` and `policy export`: nothing decides the packet, which is not an answer
    ns = sandbox.host("empty").netns
    for extra in ([], ["--json"]):
        r = bpfgate("policy", "explain", "--netns", ns, *extra, "tcp 198.18.0.1:1234 -> 198.18.0.2:80 syn")
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "no bpfgate policy is running" in lines[0], r.stderr
        assert r.stdout == ""


def test_steering_a_device_without_ethernet_is_bad_input(sandbox):
    # the user named a device steering cannot use (no MAC to address): bad input (2), not a missing feature
    ns = sandbox.host("empty").netns
    r = bpfgate("steer", "attach", "lo", "--netns", ns)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "not an Ethernet device" in lines[0], r.stderr
    r = bpfgate("steer", "list", "--netns", ns, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["interfaces"] == [], r   # nothing was attached
