"""Commands that meet on one device: two `apply` at once, `rule add` during an `apply`, `detach` while
`top` and `events` run. The control plane serialises them (one lock per namespace): the end state is
one whole policy whose listing and real traffic agree, every command ends without a traceback, and
nothing is left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from clirun import run_cli
from test_reliability_crash import dropped, enforced, policy, served, timed

from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel


def _start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bpfgate.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=scaled(timeout))
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"{p.args[3:6]} still running after {timeout} s: {err[-2000:]}")
    assert "Traceback" not in err, err[-3000:]
    return p.returncode, out, err


def test_two_applies_at_once_end_in_one_whole_policy(web, tmp_path):
    n = web
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(policy(n.dev, 8080, fillers=300)))
    b.write_text(yaml.safe_dump(policy(n.dev, 8081, fillers=300)))
    for _ in range(3):
        procs = [_start("apply", "--netns", n.ns, str(f)) for f in (a, b)]
        codes = [_finish(p)[0] for p in procs]
        assert codes == [0, 0], codes
        names, d80, d81 = enforced(n)
        fillers = {x.split("-")[0] for x in names if x.startswith("f")}
        assert (("no-8080" in names, "no-8081" in names, d80, d81, fillers) in
                ((True, False, True, False, {"f8080"}), (False, True, False, True, {"f8081"}))), sorted(names)[-3:]
    assert run_cli(["detach", "--netns", n.ns]).returncode == 0


def test_rule_add_during_apply_is_serialised(web, tmp_path):
    """The edit lands before the apply (which then replaces the whole hook with its file: the rule goes)
    or after it (the rule stays): either way listing and traffic agree."""
    n = web
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(policy(n.dev, 8080, fillers=300)))
    b.write_text(yaml.safe_dump(policy(n.dev, 8080, fillers=301)))
    timed(["apply", "--netns", n.ns, str(a)])
    outcomes = set()
    for i, f in enumerate((b, a, b)):
        apply = _start("apply", "--netns", n.ns, str(f))
        time.sleep(0.3 * i)
        add = _start("rule", "add", "--netns", n.ns, "--dev", n.dev, "--proto", "tcp", "--dport", "8081",
                     "--action", "drop", "--position", "0", "no-8081")
        assert _finish(apply)[0] == 0
        code, _, err = _finish(add)
        assert code == 0 or "exists" in err, err
        names, d80, d81 = enforced(n)
        assert d80 and ("no-8081" in names) == d81, sorted(names)[:3]
        outcomes.add("no-8081" in names)
        if "no-8081" in names:
            timed(["rule", "del", "--netns", n.ns, "--dev", n.dev, "no-8081"])
    print(f"\nrule add during apply: the rule stayed {sorted(outcomes)}")
    assert run_cli(["detach", "--netns", n.ns]).returncode == 0


def test_detach_while_top_and_events_run(web, tmp_path):
    n = web
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy(n.dev, 8080, fillers=5)))
    timed(["apply", "--netns", n.ns, str(tmp_path / "p.yaml")])
    top = _start("top", "--dev", n.dev, "--netns", n.ns, "--json", "--interval", "60")
    events = _start("events", "--dev", n.dev, "--netns", n.ns, "--json", "--duration", "120")
    try:
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() < deadline:
            st = json.loads(run_cli(["status", "--netns", n.ns, "--json"]).stdout)["attachments"]
            if {"flows", "engine"} <= {a.get("owner") for a in st} and events.poll() is None:
                break
            time.sleep(0.2)
        assert served(n, 8081) and dropped(n, 8080)
        r = run_cli(["detach", "--netns", n.ns])
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert served(n, 8080)
        for p in (top, events):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            code, _, err = _finish(p, 60)
            assert code in (0, 1, 128 + signal.SIGTERM), (p.args[3], code, err[-1500:])
    finally:
        for p in (top, events):
            if p.poll() is None:
                p.kill()
                p.communicate()
    st = json.loads(run_cli(["status", "--netns", n.ns, "--json"]).stdout)["attachments"]
    assert [a for a in st if a.get("bpfgate")] == [], st
