"""Export round trip: what `policy export` writes parses back to the same policy; multi-document files."""

from __future__ import annotations

import glob
import importlib
import os
import random

import pytest
from policy_gen import random_policy

from bpfgate.errors import PolicyError
from bpfgate.policy.model import Hook, HookPolicy, Policy, Rule
from bpfgate.policy.parse import load_text
from bpfgate.policyctl.export import (
    desired_state,
    dump,
    export_text,
    load_policies,
    load_policy_file,
    policy_data,
    rule_data,
    split_documents,
)

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "*.yaml")))

FULL = """\
version: 1
interfaces: [eth0, eth1]
hooks:
  tc-ingress:
    default: deny
    rules:
      - name: est
        ct: [established, related]
      - name: ssh
        src: [198.18.0.0/24, "fd00::/64"]
        dst: 198.18.1.0/24
        protocol: tcp
        src_port: 1024-65535
        dst_port: [22, "2200-2299"]
        tcp_flags: "syn,!ack"
        log: {rate: 5}
      - name: ping
        protocol: icmp
        icmp_type: 8
        icmp_code: 0
        vlan: [100, 200]
        rate_limit: {rate: 100, unit: packets, per: source, burst: 200, over: drop}
      - name: mirror
        action: redirect
        redirect: {interface: eth1, direction: ingress}
      - name: tag
        mark: 0x10
        count: false
      - name: odd-proto
        protocol: [47, 250, sctp]
        action: drop
  tc-egress:
    rules:
      - name: flags-mask
        protocol: tcp
        tcp_flags: "0x12/0x13"
"""


def _roundtrip(p: Policy) -> Policy:
    return load_text(dump(policy_data(p)), "export.yaml")


def test_full_policy_round_trips():
    p = load_text(FULL, "full.yaml")
    assert _roundtrip(p) == p


@pytest.mark.parametrize("seed", range(40))
def test_random_policies_round_trip(seed):
    rng = random.Random(seed)
    hooks = {Hook.TC_INGRESS: random_policy(rng, rng.randrange(0, 15)),
             Hook.XDP: random_policy(rng, rng.randrange(0, 5))}
    # policy_gen may produce rules valid at tc only (mark): keep those hooks separate
    hooks = {h: hp for h, hp in hooks.items() if h is Hook.TC_INGRESS or all(r.mark is None for r in hp.rules)}
    p = Policy(interfaces=["eth0"], hooks=hooks)
    assert _roundtrip(p) == p


@pytest.mark.parametrize("seed", range(40))
def test_export_text_is_what_the_pure_python_emitter_writes(seed):
    """dump() writes simple rules line by line and the rest with libyaml's emitter: the same text as PyYAML's
    pure-Python emitter (but where the two emitters fold a long escaped string differently: the same data)."""
    import yaml

    rng = random.Random(seed)
    p = Policy(interfaces=["eth0", "eth1"], hooks={Hook.TC_INGRESS: random_policy(rng, rng.randrange(1, 30)),
                                                   Hook.TC_EGRESS: random_policy(rng, rng.randrange(0, 4))})
    data = policy_data(p)
    rules = data["hooks"]["tc-ingress"]["rules"]
    rules[0]["comment"] = "a: b #c, 'quoted' \"x\""           # quotes: the emitter's
    rules[-1]["comment"] = "see " + ", ".join(["198.18.0.0/15"] * 12)   # a line the emitter folds
    assert dump(data) == yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)
    rules[0]["comment"] = "é 'q' \"x\" " + "long " * 40
    assert yaml.safe_load(dump(data)) == data


def test_rule_data_writes_only_what_differs_from_defaults():
    r = Rule(name="a", protocol=[6], dst_port=[80])
    assert rule_data(r) == {"name": "a", "protocol": "tcp", "dst_port": 80}
    assert rule_data(Rule(name="b", count=False, action="drop")) == {"name": "b", "action": "drop", "count": False}
    assert rule_data(Rule(name="c", tcp_flags="syn,!ack", protocol="tcp"))["tcp_flags"] == "syn,!ack"


def test_export_groups_interfaces_with_the_same_hooks():
    a = HookPolicy(default="deny", rules=(Rule(name="est", ct=["established"]),))
    b = HookPolicy(rules=(Rule(name="web", protocol="tcp", dst_port=80, action="drop"),))
    state = {("eth0", Hook.TC_INGRESS): a, ("eth1", Hook.TC_INGRESS): a, ("eth2", Hook.TC_EGRESS): b}
    text = export_text(state, header="exported")
    assert text.startswith("# exported\n")
    docs = load_policies(text, "x.yaml")
    assert [d.interfaces for d in docs] == [("eth0", "eth1"), ("eth2",)]
    assert desired_state(docs) == state


def test_multi_document_errors_keep_file_line_numbers():
    text = FULL + "---\nversion: 1\ninterfaces: [eth9]\nhooks:\n  xdp:\n    rules:\n      - name: x\n        dst_port: 80\n"
    n = FULL.count("\n")
    with pytest.raises(PolicyError) as e:
        load_policies(text, "two.yaml")
    assert e.value.path == f"two.yaml:{n + 8} hooks.xdp.rules[0].dst_port"


def test_interface_in_two_documents_is_refused():
    doc = "interfaces: [eth0]\nhooks: {tc-ingress: {}}\n"
    with pytest.raises(PolicyError) as e:
        load_policies(doc + "---\n" + doc, "dup.yaml")
    assert "eth0" in e.value.reason and e.value.path.startswith("dup.yaml:3")


def test_split_documents_skips_empty_and_comment_only_documents():
    assert [s for s, _ in split_documents("# c\n---\na: 1\n---\n# only a comment\n---\nb: 2\n")] == [1, 5]


def test_empty_and_unreadable_files(tmp_path):
    with pytest.raises(PolicyError, match="empty policy file"):
        load_policies("# nothing\n", "e.yaml")
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_examples_validate_compile_and_round_trip(path):
    from bpfgate.policy.compile import compile_policy

    from bpfgate.nat import policy as nat_policy
    from bpfgate.policyctl.export import load_documents, split_documents

    assert EXAMPLES, "examples/*.yaml not found"
    with open(path) as f:
        engine_docs, nat_docs = nat_policy.split(split_documents(f.read()), path)   # nat: documents parse here
    assert engine_docs or nat_docs
    for p in load_documents(engine_docs, path):
        compile_policy(p, ifindex=lambda name: 1)
        assert _roundtrip(p) == p


def _documents_line_by_line(text: str) -> list[tuple[int, str]]:
    """split_documents without its shortcuts: every line walked, every line of a document looked at."""
    export = importlib.import_module("bpfgate.policyctl.export")   # the module (policyctl.export is also a function)
    return [(s, d) for s, d in export._walk_documents(text) if any(export._content(ln) for ln in d.splitlines())]


def test_split_documents_agrees_with_a_line_by_line_walk():
    rng = random.Random(5)
    parts = ["", "\n", "# c\n", "  # d\n", "a: 1\n", "---\n", "--- x: 1\n", "\r\n", "\x0b", "  ", "#", "b\n",
             "-- \n", "----\n", "--- \n", "\u2028"]
    texts = ["  \n" * 3000 + "x: 1\n", "#" * 5000 + "\nx: 1\n", "# only comments\n" * 400]
    texts += ["".join(rng.choice(parts) for _ in range(rng.randint(0, 10))) for _ in range(5000)]
    for text in texts:
        assert split_documents(text) == _documents_line_by_line(text), repr(text)


def test_a_long_address_list_is_written_one_item_a_line_and_read_fast():
    """A rule listing many addresses (a blocklist written in the rule) exports as a block list: the fast
    reader takes it (the emitter's folded flow list went to PyYAML: ~4 s at 100k), it reads back the same,
    and an error names the list's line and the bad item."""
    from bpfgate.policy import fastyaml

    nets = [f"198.18.{i}.0/24" for i in range(40)] + [f"fd00:{i:x}::/48" for i in range(40)]
    p = Policy(interfaces=["eth0"], hooks={Hook.TC_INGRESS: HookPolicy(rules=(
        Rule(name="block", src=nets, action="drop", comment="inline"), Rule(name="few", dst=nets[:3])))})
    text = dump(policy_data(p))
    assert "      - fd00:27::/48\n" in text and "    - name: few\n      dst: [198.18.0.0/24, " in text
    assert fastyaml.parse(text) is not None
    assert _roundtrip(p) == p
    bad = text.replace("198.18.7.0/24", "198.18.7.1/24")
    with pytest.raises(PolicyError) as e:
        load_text(bad, "x.yaml")
    line = bad.splitlines().index("      src:") + 1
    assert e.value.path == f"x.yaml:{line} hooks.tc-ingress.rules[0].src" and "'198.18.7.1/24'" in str(e.value)
