"""SIGKILL at random points (seeded: BG_CRASH_SEED) of the commands that change kernel state: `apply` of a
large policy, `rule add`, `rule del`, `capture`, `syn --block`. After each kill the kernel enforces the
old or the new policy, whole (real traffic and the rule listing agree, never a mix), the next command
converges, and `detach` leaves nothing (the module's leak check: filters, pins, /run/bpfgate).
The deterministic kill points inside a swap are test_engine_crash_safety.py's; these are the random ones."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
import yaml
from clirun import run_cli

from bpfgate import policyctl
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel
SEED = int(os.environ.get("BG_CRASH_SEED", "0"))
TRIES = int(os.environ.get("BG_CRASH_TRIES", "6"))
T, T_OK = 1.0, 3.0


def policy(dev: str, drop_port: int, fillers: int = 400) -> dict:
    """Drop tcp `drop_port` (rule no-PORT) behind `fillers` rules of ports and prefixes that match none of
    the test's traffic: enough entries that an apply takes a while to write."""
    rules = [{"name": f"f{drop_port}-{i}", "protocol": "tcp", "dst_port": f"{20000 + i * 50}-{20049 + i * 50}",
              "src": [f"10.{i % 200}.{j}.0/24" for j in range(8)], "action": "drop"} for i in range(fillers)]
    rules.append({"name": f"no-{drop_port}", "protocol": "tcp", "dst_port": drop_port, "action": "drop"})
    return {"interfaces": [dev], "hooks": {"tc-ingress": {"default": "allow", "rules": rules}}}


def dropped(n, port: int) -> bool:
    return n.client.http_get(f"http://{n.ip4}:{port}/", T).status is None


def served(n, port: int) -> bool:
    return n.client.http_get(f"http://{n.ip4}:{port}/", T_OK).ok


def enforced(n) -> tuple[set[str], bool, bool]:
    """The rules `rules` lists (a cut-short edit is repaired by this first read) and what traffic sees."""
    names = {r.name for r in policyctl.rules(n.dev, netns=n.ns)}
    return names, dropped(n, 8080), dropped(n, 8081)


def kill_after(argv: list[str], delay: float) -> int | None:
    """Run `bpfgate ARGV`, SIGKILL it `delay` seconds after its start; its exit status (None: killed)."""
    p = subprocess.Popen([sys.executable, "-m", "bpfgate.cli.main", *argv],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=30)
        return None
    assert p.returncode == 0, p.stderr.read()
    return p.returncode


def timed(argv: list[str], stdin: str | None = None) -> float:
    """`bpfgate ARGV` to its end (it must succeed); how long it took."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bpfgate.cli.main", *argv], input=stdin, text=True,
                       capture_output=True, timeout=scaled(300), check=False)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t0


def test_apply_killed_anywhere_leaves_the_old_or_the_new_policy(web, tmp_path):
    n, rng = web, random.Random(SEED)
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(yaml.safe_dump(policy(n.dev, 8080)))
    new.write_text(yaml.safe_dump(policy(n.dev, 8081)))
    apply_old, apply_new = ["apply", "--netns", n.ns, str(old)], ["apply", "--netns", n.ns, str(new)]
    timed(apply_old)
    full = max(timed(apply_new), timed(apply_old))   # a whole swap, start to end
    landed = 0
    for i in range(TRIES):
        status = kill_after(apply_new, rng.uniform(0.1, full))
        landed += status is None
        names, d80, d81 = enforced(n)
        assert (("no-8080" in names, "no-8081" in names, d80, d81) in
                ((True, False, True, False), (False, True, False, True))), (i, status, d80, d81)
        assert len([x for x in names if x.startswith("f")]) == 400, "filler rules of both policies listed"
        timed(apply_old)   # converges
        assert dropped(n, 8080) and served(n, 8081)
    print(f"\napply ({full:.2f} s): {landed} of {TRIES} kills landed before the end")
    assert landed >= TRIES // 2, "the kills all came after the end: nothing was tested"
    assert run_cli(["detach", "--netns", n.ns]).returncode == 0


@pytest.mark.parametrize("verb", ["add", "del"])
def test_rule_edit_killed_anywhere_is_all_or_nothing(web, verb):
    n, rng = web, random.Random(SEED + (verb == "del"))
    timed(["apply", "--netns", n.ns, "-"], yaml.safe_dump(policy(n.dev, 8080, fillers=100)))
    add = ["rule", "add", "--netns", n.ns, "--dev", n.dev, "--proto", "tcp", "--dport", "8081", "--action",
           "drop", "--position", "0", "no-8081"]
    delete = ["rule", "del", "--netns", n.ns, "--dev", n.dev, "no-8081"]
    full = timed(add)
    timed(delete)
    landed = 0
    for i in range(TRIES):
        if verb == "del":
            timed(add)
        status = kill_after(add if verb == "add" else delete, rng.uniform(0.05, full))
        landed += status is None
        names, d80, d81 = enforced(n)
        assert d80 and "no-8080" in names, "the rule the edit did not touch is gone"
        assert ("no-8081" in names) == d81, (i, status, "the listing and the data plane disagree")
        if "no-8081" in names:
            timed(delete)   # converges
        assert served(n, 8081)
    print(f"\nrule {verb} ({full:.2f} s): {landed} of {TRIES} kills landed before the end")
    assert landed >= 1
    assert run_cli(["detach", "--netns", n.ns]).returncode == 0


@pytest.mark.parametrize("argv", [["capture", "--count", "100000", "--duration", "60", "-w", "{tmp}/c.pcap"],
                                  ["capture", "--engine", "--count", "100000", "--duration", "60", "-w", "{tmp}/e.pcap"],
                                  ["syn", "--rate", "3", "--block", "60", "--json", "--duration", "60"]],
                         ids=["capture", "capture-engine", "syn-block"])
def test_inspection_killed_anywhere_then_next_run_and_detach_clean_up(web, tmp_path, argv):
    n, rng = web, random.Random(SEED + len(argv))
    timed(["apply", "--netns", n.ns, "-"], yaml.safe_dump(policy(n.dev, 8080, fillers=10)))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--dev", n.dev, "--netns", n.ns]
    for i in range(max(2, TRIES // 2)):
        p = subprocess.Popen([sys.executable, "-m", "bpfgate.cli.main", *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + rng.uniform(0.2, scaled(3.0))
            while time.monotonic() < deadline and p.poll() is None:
                n.client.tcp_connect(n.ip4, 8081, timeout=0.2)   # SYNs for syn, packets for capture
        finally:
            p.kill()
            p.wait(timeout=30)
        # the policy is untouched by whatever the killed command left (a SYN block the killed `syn` added
        # stays until the next `syn` run ends or it expires there)
        names, d80, d81 = enforced(n)
        blocks = {x for x in names if x.startswith("syn-flood-")}
        assert d80 and "no-8080" in names and d81 == bool(blocks), (i, sorted(names))
    i = argv.index("--duration")
    r = run_cli(argv[:i + 1] + ["1"] + argv[i + 2:])   # the next run of the same command
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert not [x for x in enforced(n)[0] if x.startswith("syn-flood-")], "a dead run's SYN block outlived the next run"
    r = run_cli(["detach", "--netns", n.ns])
    assert r.returncode == 0, r.stderr
    assert served(n, 8080) and served(n, 8081)
    assert policyctl.running(n.ns) == {}
