"""Fuzzing (hypothesis) of the policy loader and of the CLI's argument parsing: whatever the input, a typed
error (PolicyError; a one-line message and a documented exit code from the CLI), never a traceback."""

from __future__ import annotations

import string

import click
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfgate import policyctl
from bpfgate.cli import commands, main
from bpfgate.errors import PolicyError
from bpfgate.policy.model import Rule
from bpfgate.policy.parse import read_source
from bpfgate.policyctl.export import load_policies

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---- the loader ----------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["tcp", "udp", "icmp", "198.18.0.0/15", "fd00::/8",
                                                           "80-90", "syn,!ack", "established", "drop", "eth0"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
rule_dicts = st.dictionaries(st.sampled_from(sorted(Rule.model_fields) + ["colour"]), values, max_size=6)
policies = st.fixed_dictionaries({
    "interfaces": st.one_of(st.lists(st.sampled_from(["eth0", "eth1", "", "a" * 20]), max_size=3), values),
    "hooks": st.dictionaries(st.sampled_from(["tc-ingress", "tc-egress", "xdp", "sideways"]),
                             st.fixed_dictionaries({"default": st.sampled_from(["allow", "deny", "maybe"]),
                                                    "rules": st.lists(rule_dicts, max_size=4)}), max_size=3),
}, optional={"version": st.one_of(st.just(1), scalars)})


def _loads_or_policy_error(text: str) -> None:
    try:
        load_policies(text, "fuzz.yaml")
    except PolicyError as e:
        assert "\n" not in e.op


@FUZZ
@given(st.text(max_size=300))
def test_loader_any_text(text):
    _loads_or_policy_error(text)


@FUZZ
@given(st.lists(policies, min_size=1, max_size=3))
def test_loader_policy_shaped_documents(docs):
    _loads_or_policy_error("---\n".join(yaml.safe_dump(d) for d in docs))


@FUZZ
@given(st.text(alphabet=string.printable, max_size=200), st.sampled_from(["&a ", "*a ", "!!binary ", "!!set ",
                                                                          "? ", "[", "{", "- ", ": ", "<<: "]))
def test_loader_yaml_syntax_fragments(text, fragment):
    mid = len(text) // 2
    _loads_or_policy_error(text[:mid] + fragment + text[mid:])


@FUZZ
@given(st.binary(max_size=300))
def test_reading_any_bytes(tmp_path, data):
    f = tmp_path / "fuzz.yaml"
    f.write_bytes(data)
    try:
        load_policies(*read_source(f))
    except PolicyError:
        pass


# ---- the CLI -------------------------------------------------------------------------------------------

WORDS = ["0", "-1", "99", "1e300", "nan", "inf", "0x10", "tcp", "[tcp]", "[red]x[/red]", "eth0", "est", "web",
         "198.18.0.1/99", "198.18.0.0/24", "fd00::1", "syn,!ack", "80", "70000", "1-2", "a b", "", "\x00", "é",
         "--", "-", "tc-ingress", "xdp", "sideways", "drop", "redirect", "packets", "source"]
RULE_OPTS = ["--dev", "--hook", "--src", "--dst", "--proto", "--sport", "--dport", "--tcp-flags", "--icmp-type",
             "--icmp-code", "--vlan", "--ct", "--action", "--redirect", "--redirect-ingress", "--mark", "--rate",
             "--rate-unit", "--rate-per", "--burst", "--over", "--log", "--no-count", "--before", "--after",
             "--position", "--json", "--bogus"]
POLICY_COMMANDS = {
    ("apply",): ["--dry-run", "--confirm", "--confirmed", "--force", "--mode", "--json", "-v", "--bogus"],
    ("confirm",): ["--json", "--bogus"],
    ("rule", "add"): RULE_OPTS,
    ("rule", "del"): ["--dev", "--hook", "--force", "--json", "--bogus"],
    ("rules",): ["--dev", "--hook", "--json", "--bogus"],
    ("policy", "export"): ["--dev", "--json", "--bogus"],
    ("policy", "classifier"): ["--dev", "--hook", "--json"],
    ("policy", "explain"): ["--frame", "--dev", "--hook", "--json", "->", "tcp", "198.18.0.1:1", "198.18.0.2:80"],
    ("policy", "remove"): ["--dev", "--hook", "--json"],
}
GOOD = """\
interfaces: [eth0]
hooks:
  tc-ingress:
    default: deny
    rules:
      - {name: est, ct: [established, related]}
      - {name: web, protocol: tcp, dst_port: 80}
"""


def _argv(prefix, opts):
    return st.lists(st.one_of(st.sampled_from(opts), st.sampled_from(WORDS)), max_size=8).map(
        lambda rest: [*prefix, *rest])


@pytest.fixture
def be(monkeypatch, tmp_path):
    b = policyctl.MemoryBackend()
    monkeypatch.setattr(policyctl.common, "default_backend", b)
    monkeypatch.setattr(policyctl._confirm, "STATE_DIR", str(tmp_path / "state"))
    arm = policyctl._confirm.arm
    monkeypatch.setattr(policyctl._confirm, "arm", lambda p, root=None, start_watcher=True: arm(p, root, False))
    return b


@FUZZ
@given(st.sampled_from(sorted(POLICY_COMMANDS)).flatmap(lambda p: _argv(p, POLICY_COMMANDS[p])),
       st.sampled_from([None, "good", "missing"]))
def test_policy_commands_never_trace(be, capsys, tmp_path, argv, file):
    policyctl.apply(policyctl.load_policies(GOOD), backend=be)   # a policy to edit, each example afresh
    if file and argv[0] == "apply":
        path = tmp_path / "p.yaml"
        if file == "good":
            path.write_text(GOOD)
        argv = [*argv, str(path)]
    if argv[0] == "apply" and "-" in argv:
        argv = [w for w in argv if w != "-"]   # stdin: pytest's is not readable
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main.run(argv)
    _out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert e.value.code in (0, 1, 2, 3, 4), (argv, err)
    if e.value.code:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("bpfgate: error: "), (argv, err)


def _leaf_commands():
    main._register()
    out = []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
        else:
            out.append((tuple(path), cmd))
    walk(main.app, [])
    return out


LEAVES = _leaf_commands()
assert commands.MODULES and LEAVES


def _opts(cmd):
    return [o for p in cmd.params for o in getattr(p, "opts", [])] + ["--bogus"]


@FUZZ
@given(st.sampled_from(range(len(LEAVES))).flatmap(
    lambda i: st.tuples(st.just(i), st.lists(st.one_of(st.sampled_from(_opts(LEAVES[i][1])), st.sampled_from(WORDS)),
                                             max_size=8))))
def test_every_command_parses_any_arguments(choice):
    """Parsing alone (no command runs): a click usage error or a context, nothing else."""
    i, argv = choice
    path, cmd = LEAVES[i]
    try:
        with cmd.make_context(" ".join(path), list(argv)):
            pass
    except click.exceptions.Exit:
        pass   # --help
    except click.ClickException as e:
        assert main.usage_line(e).count("\n") == 0


@pytest.mark.parametrize("path, argv", [(["policy", "export"], ["-o", "\x00"]),
                                        (["agent"], ["--policy-dir", "a\x00b"])])
def test_a_nul_byte_in_a_path_is_a_usage_error(path, argv):
    """Found by the fuzzing above: click.Path stats the value, and a NUL made that a ValueError."""
    cmd = dict(LEAVES)[tuple(path)]
    with pytest.raises(click.BadParameter, match="NUL"):
        cmd.make_context(" ".join(path), argv)
