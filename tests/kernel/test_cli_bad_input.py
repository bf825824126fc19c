"""Bad input, command by command, against a real policy engine in a sandbox: every case gives one line on
stderr ("bpfgate: error: ..."), the exit code README documents (2 bad input / not found, 4 privileges),
no traceback, and nothing changed: `rules --json` and `status --json` of the namespace are the same before
and after (counters aside: the kernel's own IPv6 chatter moves them), and no control-plane state appears
for a namespace that does not exist. Cases run in-process through the CLI's entry point (its error
mapping included); the privilege cases run as child processes without capabilities / as nobody."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from bpfgate import policyctl
from bpfgate.cli import main
from bpfgate.policyctl.pending import STATE_DIR
from bpfgate.sandbox import Sandbox
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
interfaces: [{dev}]
hooks:
  tc-ingress:
    default: deny
    rules:
      - name: est
        ct: [established, related]
      - name: web
        protocol: tcp
        dst_port: 80
"""

# a few hundred bytes that expand to 9**9 nodes if nothing bounds the aliases
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def _files(d, dev: str) -> dict[str, str]:
    """name -> path of the bad policy files."""
    good = POLICY.format(dev=dev)
    texts = {
        "bomb": BOMB,
        "deep": "a: " + "[" * 60 + "]" * 60 + "\n",
        "pytag": "interfaces: !!python/object/apply:os.system [true]\n",
        "empty": "# nothing\n",
        "list": "- a\n- b\n",
        "unknown-field": good.replace("dst_port: 80", "dst_port: 80\n        colour: red"),
        "unknown-hook": good.replace("tc-ingress:", "tc-sideways:"),
        "port-range": good.replace("dst_port: 80", "dst_port: 70000"),
        "port-no-proto": good.replace("        protocol: tcp\n", ""),
        "proto-markup": good.replace("protocol: tcp", 'protocol: "[tcp]"'),
        "bad-cidr": good.replace("protocol: tcp", "src: 198.18.0.1/99\n        protocol: tcp"),
        "dup-key": good.replace("protocol: tcp", "protocol: tcp\n        protocol: udp"),
        "dup-rule": good.replace("name: web", "name: est"),
        "owner": good.replace("name: web", "name: web\n        owner: me"),
        "two-docs": good + "---\n" + good,
        "no-ct": good.replace("ct: [established, related]", "protocol: udp"),
        "no-dev": good.replace(f"[{dev}]", "[bg-nodev0]"),
        "redirect-nodev": good.replace("dst_port: 80", "dst_port: 80\n        action: {redirect: {interface: bg-nodev0}}"),
        "xdp-mark": good.replace("tc-ingress:", "xdp:").replace("dst_port: 80", "dst_port: 80\n        mark: 1"),
        "bad-yaml": "interfaces: [eth0\n",
        "latin1": None,
        "binary": None,
    }
    out = {}
    for name, text in texts.items():
        p = d / f"{name}.yaml"
        if name == "latin1":
            p.write_bytes(good.replace("# ", "").encode() + b"# caf\xe9\n")
        elif name == "binary":
            p.write_bytes(open(sys.executable, "rb").read(4096))
        else:
            p.write_text(text)
        out[name] = str(p)
    return out


class Gate:
    ns: str
    dev: str
    files: dict[str, str]
    missing_ns: str


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with Sandbox() as sb:
        host, peer = sb.host("gate"), sb.host("peer")
        link = sb.link(peer, host)
        g = Gate()
        g.ns, g.dev = host.netns, link.end(host).name
        g.missing_ns = f"{host.netns}-nosuch"   # named after our sandbox: the leak check knows it as ours
        d = tmp_path_factory.mktemp("bad")
        g.files = _files(d, g.dev)
        good = d / "good.yaml"
        good.write_text(POLICY.format(dev=g.dev))
        g.files["good"] = str(good)
        policyctl.apply(str(good), netns=g.ns)
        try:
            yield g
        finally:
            try:
                policyctl.remove(netns=g.ns)
            finally:
                shutil.rmtree(os.path.join(STATE_DIR, g.ns), ignore_errors=True)


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main.run(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _strip(obj):
    """The JSON without what traffic moves (counters, run statistics)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if k not in ("packets", "bytes", "run_cnt", "run_time_ns", "avg_ns")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def snapshot(capsys, g: Gate):
    code, rules, err = run(capsys, ["rules", "--json", "--netns", g.ns])
    assert code == 0, err
    # cgroups left out: other test runs attach there meanwhile; this namespace is ours alone
    code, status, err = run(capsys, ["status", "--json", "--netns", g.ns, "--no-cgroups"])
    assert code == 0, err
    return _strip(json.loads(rules)), _strip(json.loads(status)), os.path.exists(os.path.join(STATE_DIR, g.missing_ns))


# (id, argv with {ns} {dev} {nons} {f:NAME} placeholders, exit code, text the one line must contain)
CASES = [
    # policy files
    ("file-binary", "apply --netns {ns} {f:binary}", 2, "not UTF-8 text"),
    ("file-latin1", "apply --netns {ns} {f:latin1}", 2, "not UTF-8 text"),
    ("file-dev-zero", "apply --netns {ns} /dev/zero", 2, "the limit for a policy file"),
    ("file-alias-bomb", "apply --netns {ns} {f:bomb}", 2, "aliases expand to more than"),
    ("file-deep", "apply --netns {ns} {f:deep}", 2, "nested deeper than"),
    ("file-python-tag", "apply --netns {ns} {f:pytag}", 2, "pytag.yaml:1 interfaces"),
    ("file-empty", "apply --netns {ns} {f:empty}", 2, "empty policy file"),
    ("file-list", "apply --netns {ns} {f:list}", 2, "a policy is a mapping"),
    ("file-unknown-field", "apply --netns {ns} {f:unknown-field}", 2, "colour: unknown field"),
    ("file-unknown-hook", "apply --netns {ns} {f:unknown-hook}", 2, "tc-sideways"),
    ("file-port-range", "apply --netns {ns} {f:port-range}", 2, "70000"),
    ("file-port-no-proto", "apply --netns {ns} {f:port-no-proto}", 2, "ports need protocol"),
    ("file-proto-markup", "apply --netns {ns} {f:proto-markup}", 2, "unknown protocol '[tcp]'"),
    ("file-bad-cidr", "apply --netns {ns} {f:bad-cidr}", 2, "198.18.0.1/99"),
    ("file-dup-key", "apply --netns {ns} {f:dup-key}", 2, "duplicate key"),
    ("file-dup-rule", "apply --netns {ns} {f:dup-rule}", 2, "already used"),
    ("file-owner", "apply --netns {ns} {f:owner}", 2, "owner is set by the program"),
    ("file-two-docs", "apply --netns {ns} {f:two-docs}", 2, "already in document 1"),
    ("file-no-ct-guard", "apply --netns {ns} {f:no-ct}", 2, "{name: est, ct: [established, related]}"),
    ("file-no-dev", "apply --netns {ns} {f:no-dev}", 2, "bg-nodev0"),
    ("file-redirect-nodev", "apply --netns {ns} {f:redirect-nodev}", 2, "no such interface"),
    ("file-xdp-mark", "apply --netns {ns} {f:xdp-mark}", 2, "mark is not possible at xdp"),
    ("file-bad-yaml", "apply --netns {ns} {f:bad-yaml}", 2, "not valid YAML"),
    ("file-missing", "apply --netns {ns} /nonexistent/policy.yaml", 2, "cannot read"),
    ("file-directory", "apply --netns {ns} /", 2, "cannot read"),
    # apply's options
    ("confirm-0", "apply --netns {ns} --confirm 0 {f:good}", 2, "--confirm"),
    ("confirm-negative", "apply --netns {ns} --confirm -5 {f:good}", 2, "--confirm"),
    ("confirm-nan", "apply --netns {ns} --confirm nan {f:good}", 2, "not a number of seconds"),
    ("confirm-huge", "apply --netns {ns} --confirm 1e300 {f:good}", 2, "--confirm"),
    ("confirm-word", "apply --netns {ns} --confirm soon {f:good}", 2, "--confirm"),
    ("confirmed-and-confirm", "apply --netns {ns} --confirmed --confirm 5", 2, "cannot be combined"),
    ("apply-no-file", "apply --netns {ns}", 2, "missing FILE"),
    ("apply-bad-mode", "apply --netns {ns} --mode warp {f:good}", 2, "--mode"),
    ("apply-missing-ns", "apply --netns {nons} {f:good}", 2, "no such network namespace"),
    ("confirm-nothing", "confirm --netns {ns}", 2, "no change is waiting"),
    ("confirm-missing-ns", "confirm --netns {nons}", 2, "no such network namespace"),
    # rule add / del
    ("add-position-99", "rule add z --dev {dev} --netns {ns} --position 99", 2, "position 99"),
    ("add-position-neg", "rule add z --dev {dev} --netns {ns} --position -1", 2, "position -1"),
    ("add-before-after", "rule add z --dev {dev} --netns {ns} --before est --after web", 2, "only one of"),
    ("add-before-nosuch", "rule add z --dev {dev} --netns {ns} --before nosuch", 2, "no rule named 'nosuch'"),
    ("add-mark-word", "rule add z --dev {dev} --netns {ns} --mark zz", 2, "not a number"),
    ("add-tcp-flags", "rule add z --dev {dev} --netns {ns} --proto tcp --tcp-flags bogus", 2, "bogus"),
    ("add-bad-cidr", "rule add z --dev {dev} --netns {ns} --src 198.18.0.1/99", 2, "bad CIDR"),
    ("add-port-no-proto", "rule add z --dev {dev} --netns {ns} --dport 80", 2, "ports need protocol"),
    ("add-port-range", "rule add z --dev {dev} --netns {ns} --proto tcp --dport 70000", 2, "70000"),
    ("add-rate-0", "rule add z --dev {dev} --netns {ns} --rate 0", 2, "rate"),
    ("add-redirect-no-target", "rule add z --dev {dev} --netns {ns} --action redirect", 2, "action redirect needs"),
    ("add-redirect-nodev", "rule add z --dev {dev} --netns {ns} --action redirect --redirect bg-nodev0", 2,
     "no such interface"),
    ("add-exists", "rule add est --dev {dev} --netns {ns}", 2, "a rule of that name exists"),
    ("add-bad-name", "rule add a/b --dev {dev} --netns {ns}", 2, "name"),
    ("add-proto-markup", "rule add z --dev {dev} --netns {ns} --proto [tcp]", 2, "unknown protocol '[tcp]'"),
    ("add-icmp-no-proto", "rule add z --dev {dev} --netns {ns} --icmp-type 3", 2, "icmp_type needs protocol"),
    ("add-bad-hook", "rule add z --dev {dev} --netns {ns} --hook sideways", 2, "--hook"),
    ("add-no-dev", "rule add z --dev bg-nodev0 --netns {ns}", 2, "no bpfgate policy is attached there"),
    ("add-missing-ns", "rule add z --dev {dev} --netns {nons}", 2, "no such network namespace"),
    ("del-nosuch", "rule del nosuch --dev {dev} --netns {ns}", 2, "no such rule"),
    ("del-guard", "rule del est --dev {dev} --netns {ns}", 2, "{name: est, ct: [established, related]}"),
    ("del-missing-ns", "rule del est --dev {dev} --netns {nons}", 2, "no such network namespace"),
    # reading the policy
    ("rules-missing-ns", "rules --netns {nons}", 2, "no such network namespace"),
    ("rules-no-dev", "rules --dev bg-nodev0 --netns {ns}", 2, "no bpfgate policy is attached there"),
    ("rules-bad-hook", "rules --hook sideways --netns {ns}", 2, "--hook"),
    ("export-unwritable", "policy export --netns {ns} -o /nonexistent/dir/out.yaml", 2, "No such file"),
    ("export-missing-ns", "policy export --netns {nons}", 2, "no such network namespace"),
    ("export-no-dev", "policy export --dev bg-nodev0 --netns {ns}", 2, "no bpfgate policy is attached there"),
    ("classifier-missing-ns", "policy classifier --netns {nons}", 2, "no such network namespace"),
    ("classifier-no-dev", "policy classifier --dev bg-nodev0 --netns {ns}", 2, "no bpfgate policy"),
    ("remove-no-dev", "policy remove --dev bg-nodev0 --netns {ns}", 2, "no bpfgate policy is attached there"),
    ("remove-missing-ns", "policy remove --netns {nons}", 2, "no such network namespace"),
    ("explain-bad-port", "policy explain --netns {ns} tcp 198.18.0.1:5 -> 198.18.0.2:99999", 2, "99999"),
    ("explain-nothing", "policy explain --netns {ns}", 2, "give a packet description"),
    ("explain-proto-markup", "policy explain --netns {ns} [tcp] 198.18.0.1:5 -> 198.18.0.2:80", 2, "'[tcp]'"),
    ("explain-bad-frame", "policy explain --netns {ns} --frame zz", 2, "frame"),
    ("explain-file-bomb", "policy explain --file {f:bomb} tcp 198.18.0.1:5 -> 198.18.0.2:80", 2, "aliases"),
    # other commands' bad values
    ("capture-proto-markup", "capture --dev {dev} --netns {ns} --proto [tcp] -w /dev/null", 2, "'[tcp]'"),
    ("capture-host", "capture --dev {dev} --netns {ns} --host [198.18.0.1] -w /dev/null", 2, "not an address"),
    ("capture-no-dev", "capture --dev bg-nodev0 --netns {ns} -w /dev/null", 2, "no such interface"),
    ("capture-rule-nosuch", "capture --dev {dev} --netns {ns} --rule nosuch -w /dev/null", 2, "no rule 'nosuch'"),
    ("capture-duration", "capture --dev {dev} --netns {ns} --duration -1 -w /dev/null", 2, "--duration"),
    ("capture-snaplen", "capture --dev {dev} --netns {ns} --snaplen 0 -w /dev/null", 2, "--snaplen"),
    ("capture-nowhere", "capture --dev {dev} --netns {ns}", 2, "nowhere to put packets"),
    ("flows-no-dev", "flows --dev bg-nodev0 --netns {ns} --duration 0", 2, "no such interface"),
    ("flows-duration-nan", "flows --dev {dev} --netns {ns} --duration nan", 2, "not a number of seconds"),
    ("flows-stop-none", "flows --dev {dev} --netns {ns} --stop", 2, "none is running there"),
    ("top-interval", "top --dev {dev} --netns {ns} --interval 0 --once", 2, "--interval"),
    ("syn-block-no-rate", "syn --dev {dev} --netns {ns} --block 5 --duration 0", 2, "--block needs --rate"),
    ("events-ring-size", "events --dev {dev} --netns {ns} --ring-size 3 --duration 0", 2, "power of two"),
    ("metrics-listen", "metrics --dev {dev} --netns {ns} --listen nonsense --duration 0", 2, "ADDRESS:PORT"),
    ("metrics-listen-port", "metrics --dev {dev} --netns {ns} --listen 127.0.0.1:99999 --duration 0", 2,
     "out of range"),
    ("trace-addr", "trace tcp --addr 198.18.0.400 --duration 1", 2, "not an IP address"),
    ("trace-port", "trace tcp --port 70000 --duration 1", 2, "out of range"),
    ("trace-events", "trace tcp --events nope --duration 1", 2, "unknown event 'nope'"),
    ("trace-netns", "trace tcp --netns {nons} --duration 1", 2, "--netns"),
    ("trace-duration", "trace tcp --duration nan", 2, "not a number of seconds"),
    ("status-missing-ns", "status --netns {nons}", 2, "no such network namespace"),
    ("status-stats-negative", "status --netns {ns} --stats -1", 2, "--stats"),
    ("status-stats-nan", "status --netns {ns} --stats nan", 2, "not a number of seconds"),
    ("no-such-command", "firewall", 2, "No such command"),
    ("no-such-option", "doctor --bogus", 2, "No such option"),
]


def _argv(template: str, g: Gate) -> list[str]:
    out = []
    for word in template.split():
        if word.startswith("{f:"):
            out.append(g.files[word[3:-1]])
        else:
            out.append(word.format(ns=g.ns, dev=g.dev, nons=g.missing_ns))
    return out


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bpfgate: error: "), err
    return lines[0]


def test_corpus_is_large():
    assert len(CASES) + len(PRIVILEGE_CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("template, code, text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(gate, capsys, template, code, text):
    before = snapshot(capsys, gate)
    got, _out, err = run(capsys, _argv(template, gate))
    line = _one_line(err)
    assert got == code, line
    assert text in line
    assert snapshot(capsys, gate) == before


NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

PRIVILEGE_CASES = [
    ("nocaps-rules", NO_CAPS, "rules --netns {ns}"),
    ("nocaps-apply", NO_CAPS, "apply --netns {ns} {f:good}"),
    ("nocaps-rule-add", NO_CAPS, "rule add z --dev {dev} --netns {ns}"),
    ("nocaps-export", NO_CAPS, "policy export --netns {ns}"),
    ("nobody-rules", NOBODY, "rules --netns {ns}"),
    ("nobody-apply", NOBODY, "apply --netns {ns} {f:good}"),
    ("nobody-rule-add", NOBODY, "rule add z --dev {dev} --netns {ns}"),
    ("nobody-rule-del", NOBODY, "rule del web --dev {dev} --netns {ns}"),
    ("nobody-confirm", NOBODY, "confirm --netns {ns}"),
    ("nobody-remove", NOBODY, "policy remove --netns {ns}"),
]


@pytest.mark.parametrize("prefix, template", [c[1:] for c in PRIVILEGE_CASES], ids=[c[0] for c in PRIVILEGE_CASES])
def test_missing_privileges(gate, capsys, prefix, template):
    before = snapshot(capsys, gate)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([*prefix, sys.executable, "-m", "bpfgate", *_argv(template, gate)], capture_output=True,
                       text=True, timeout=scaled(60), env=env, cwd="/")
    line = _one_line(r.stderr)
    assert r.returncode == 4 and "missing CAP_" in line, line
    assert snapshot(capsys, gate) == before
