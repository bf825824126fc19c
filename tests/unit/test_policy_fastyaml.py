"""The fast policy reader (policy/fastyaml.py) gives what PyYAML's safe loader gives, with the same line for
every key and item, or declines (the caller then reads the text with PyYAML)."""

from __future__ import annotations

import glob
import os
import random
import textwrap

import pytest
import yaml

from bpfgate.errors import PolicyError
from bpfgate.policy import fastyaml
from bpfgate.policy.parse import _Builder, _compose, load_text
from bpfgate.policy.ruledata import rule_data

from policy_gen import random_rule

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def _pyyaml(text: str):
    lines: dict = {}
    root, aliased = _compose(text)
    return _Builder("x", lines, aliased).plain(root, ()), lines


def _same_or_declined(text: str) -> bool:
    lines: dict = {}
    data = fastyaml.parse(text, lines)
    if data is None:
        return False
    want, want_lines = _pyyaml(text)
    assert data == want and type(data) is type(want)
    assert lines == want_lines
    assert fastyaml.parse(text) == want
    return True


def _policy_text(rng: random.Random, n: int, flow: bool | None) -> str:
    rules = [rule_data(random_rule(rng, i)) for i in range(n)]
    doc = {"version": 1, "interfaces": ["eth0", "eth1"],
           "hooks": {"tc-ingress": {"default": "deny", "rules": rules}, "xdp": {"rules": []}}}
    return yaml.safe_dump(doc, default_flow_style=flow, sort_keys=False, width=1000)


@pytest.mark.parametrize("seed", range(20))
def test_random_policies_read_as_pyyaml_reads_them(seed):
    rng = random.Random(seed)
    assert _same_or_declined(_policy_text(rng, 30, False))   # what `policy export` writes: never declined
    _same_or_declined(_policy_text(rng, 30, None))
    _same_or_declined(_policy_text(rng, 5, True))


def test_examples_and_hand_written_styles():
    for path in glob.glob(os.path.join(EXAMPLES, "*.yaml")):
        with open(path) as f:
            _same_or_declined(f.read())
    text = textwrap.dedent("""\
        # a policy
        version: 1
        interfaces: [eth0]   # the uplink
        hooks:
          tc-ingress:
            default: deny

            rules:
            - name: web   # indentless list
              protocol: [tcp, "udp"]
              dst_port: [80, '8000-8100']
              src:
                - 198.18.0.0/24
                - fd00::/64
              log: {rate: 5}
              count: no
              mark: 0x10
              icmp_type: ~
            - name: "quoted"
              tcp_flags: syn,!ack
        """)
    assert _same_or_declined(text)


@pytest.mark.parametrize("text", [
    "a: 1\na: 2\n", "on: 1\n", "1: x\n", "a: &x 1\nb: *x\n", "a: !!str 1\n", "a: |\n  x\n", "a: b\n  c\n",
    "a: 'it''s'\n", 'a: "x\\ty"\n', "a: {b: {c: 1}}\n", "a: [b, [c]]\n", "a:\n-\n  b: 1\n", "- a\n",
    "a: b: c\n", "a: x #c\n  b\n", "a: [fd00::, b]\n", "  a: 1\n", "a:\tb\n", "a: 1\r\nb: 2\r\n",
    "a: 'x #y'\n", "a:\n  - b\n - c\n", "a: -1\n", "a: [a: b]\n", "? a\n: b\n", "a: 1\n---\nb: 2\n",
    "a: 1\n  b: 2\n", "a:\n b: 1\n  c: 2\n", "a: [1, 2,]\n", "a: {b: 1, b: 2}\n", "<<: {a: 1}\n",
    "a: x\x07y\n", "a: \x00\n", "\ufeffa: 1\n", "a: &x [1]\nb: *x\n", "a: [*x]\n", "- &a x\n",
    # scalars with a slash: never a number, bool, null or date
    "a: 198.18.0.0/15\n", "a: fd00::/8\n", "a: [1/2, 0x1/0, 1:20/3, /x, x/]\n", "a: -/x\n", "a: :/x\n",
    "a: 2001-01-01/x\n", "a: {b: 10.0.0.0/8}\n", "a: .inf/1\n", "a: ~/x\n", "a: yes/no\n",
    # plain scalars of letters, digits and _ . : / - (read without the indicator checks): the implicit
    # resolvers' first characters, indicators, a trailing colon, sexagesimal numbers and dates
    "a: -\n", "a: -x\n", "a: :\n", "a: :x\n", "a: x:\n", "a: [x:]\n", "a: {b: x:}\n", "a: 1:20\n",
    "a: 190:20:30\n", "a: 1_000\n", "a: 0x1F\n", "a: 0o17\n", "a: 017\n", "a: 1.5\n", "a: .5\n", "a: -.inf\n",
    "a: .NaN\n", "a: 1e3\n", "a: 6.8523015e+5\n", "a: 2001-12-14\n", "a: 2001-12-14t21:59:43.10-05:00\n",
    "a: yes\n", "a: No\n", "a: on\n", "a: OFF\n", "a: y\n", "a: n\n", "a: null\n", "a: Null\n", "a: _x\n",
    "a: TRUE\n", "a: false\n", "a: drop\n", "a: r1\n", "a: 1.2.3.4\n", "a: ::\n", "a: ::1\n", "a: x.y-z_1\n",
    "a: [on, 1:2, -1, x-, x.]\n", "a: {b: off, c: 0b101, d: +1}\n",
])
def test_unusual_yaml_is_declined_or_read_the_same(text):
    fast = fastyaml.parse(text)
    if fast is None:
        return
    assert _same_or_declined(text)


@pytest.mark.parametrize("text", ["a: x\x07y\n", "a: \x00\n", "a: &x 1\nb: *x\n", "a:\n  - &x b\n  - *x\n",
                                  "a: !!str 1\n", "a: [b, [c]]\n"])
def test_what_the_loader_limits_rely_on_is_left_to_pyyaml(text):
    """Aliases, anchors, tags, nested flow and characters PyYAML refuses: the full reader (and its
    limits and error lines) sees them."""
    assert fastyaml.parse(text) is None


def test_errors_name_the_same_line_as_before():
    rules = "".join(f"      - name: r{i}\n        src: 198.18.{i // 256}.{i % 256}/32\n        action: drop\n"
                    for i in range(3000))
    head = "version: 1\ninterfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n"
    bad = (head + rules).replace("198.18.11.183/32", "198.18.11.183/33")
    assert fastyaml.parse(bad) is not None
    with pytest.raises(PolicyError) as e:
        load_text(bad, "big.yaml")
    line = bad.split("\n").index("        src: 198.18.11.183/33") + 1
    assert f"big.yaml:{line} hooks.tc-ingress.rules[2999].src: bad CIDR" in str(e.value)
    dup = (head + rules).replace("name: r2998", "name: r7")
    with pytest.raises(PolicyError) as e:
        load_text(dup, "big.yaml")
    line = dup.split("\n").index("      - name: r7", 30) + 1
    assert f"big.yaml:{line} hooks.tc-ingress.rules[2998].name: rule name 'r7' already used" in str(e.value)


@pytest.mark.parametrize("seed", range(4))
def test_json_policies_read_as_pyyaml_reads_them(seed):
    """A JSON policy (what scripts write) is read by the json module, to the same data as PyYAML's reading of
    it, compact or indented."""
    import json

    from bpfgate.policy.parse import _json

    rng = random.Random(seed)
    doc = {"version": 1, "interfaces": ["eth0"], "hooks": {"tc-ingress": {
        "default": "allow", "rules": [rule_data(random_rule(rng, i)) for i in range(40)]}}}
    for indent in (None, 2):
        text = json.dumps(doc, indent=indent)
        assert _json(text) == _pyyaml(text)[0] == doc
        assert load_text(text, "p.json") == load_text(yaml.safe_dump(doc), "p.yaml")


@pytest.mark.parametrize("text", ['{"a": 1, "a": 2}', '{"a": 1e3}', '{"a": 1.5E+3}', '{"a": NaN}',
                                  '{"a": -Infinity}', '{"a": [1, 2,]}', '["a"]', 'a: {"b": 1}'])
def test_json_that_yaml_reads_otherwise_goes_to_pyyaml(text):
    """Duplicate keys (an error with its line), exponent floats and NaN (YAML 1.1 reads them otherwise), and
    what is not JSON: read by the YAML reader, as before."""
    from bpfgate.policy.parse import _json

    assert _json(text) is None


def test_json_errors_name_the_line():
    import json

    rules = [{"name": f"r{i}", "src": f"198.18.{i // 256}.{i % 256}/32", "action": "drop"} for i in range(3000)]
    rules[2999]["src"] = "198.18.11.183/33"
    text = json.dumps({"version": 1, "interfaces": ["eth0"], "hooks": {"tc-ingress": {"rules": rules}}}, indent=1)
    with pytest.raises(PolicyError) as e:
        load_text(text, "big.json")
    line = next(i for i, ln in enumerate(text.split("\n"), 1) if '"198.18.11.183/33"' in ln)
    assert f"big.json:{line} hooks.tc-ingress.rules[2999].src: bad CIDR" in str(e.value)
