"""policyctl.classifier / `bpfgate policy classifier` on MemoryBackend: the classifier's cost per hook
(shapes = hash lookups per packet, entries, stage 0 trees), computed by compiling the running policy."""

from __future__ import annotations

import json

import pytest
from test_policyctl_cli import run  # tests/unit helper: the CLI through its real entry point

from bpfgate import policyctl
from bpfgate.errors import NotFound
from bpfgate.policy import layout as L
from bpfgate.policy.atoms import prefix_mask
from bpfgate.policy.model import Policy
from bpfgate.policyctl.export import desired_state

WEB = {"name": "web", "protocol": "tcp", "dst_port": [80, 443]}
NETS = {"name": "nets", "src": ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.1.1/32"], "action": "drop"}
DNS = {"name": "dns", "protocol": "udp", "dst_port": 53}


def pol(hooks, devs=("eth0",)):
    return Policy.model_validate({"interfaces": list(devs), "hooks": hooks})


@pytest.fixture
def be():
    b = policyctl.MemoryBackend()
    b.hooks[None] = desired_state([pol({"tc-ingress": {"rules": [WEB, NETS]}, "tc-egress": {"rules": [DNS]}})])
    return b


def test_ports_and_mixed_cidr_lengths_take_two_shapes_and_one_tree(be):
    (r,) = policyctl.classifier("eth0", hook="tc-ingress", backend=be)
    assert (r.dev, r.hook, r.rules) == ("eth0", "tc-ingress", 2)
    # every CIDR length is one prefix class: one shape for all of them, next to the port shape
    assert [(s.fields, s.entries) for s in r.shapes] == [("proto dport", 2), ("family src class", 4)]
    assert r.lookups_worst == 2 and r.entries == 6
    (tree,) = r.stage0
    assert (tree.tree, tree.classes) == ("src4", 4) and tree.max_probes >= 1 and tree.buckets > 0
    assert r.summary().startswith("eth0 tc-ingress: 2 rules, 6 entries, 2 shapes = at most 2 hash lookups "
                                  "per packet; stage 0: src4 4 classes (max ")


def test_every_hook_by_interface_then_hook(be):
    reports = policyctl.classifier(backend=be)
    assert [(r.hook, r.lookups_worst, len(r.stage0)) for r in reports] == [("tc-egress", 1, 0), ("tc-ingress", 2, 1)]
    d = reports[0].to_dict()
    assert d["lookups_worst"] == 1 and d["shapes"][0]["fields"] == "proto dport" and d["stage0"] == []
    assert set(d) == {"dev", "hook", "rules", "entries", "shapes", "stage0", "negations", "lookups_worst"}
    assert d["negations"] == []   # what negated matches cost: none here


def test_unknown_dev_is_not_found(be):
    with pytest.raises(NotFound, match="eth9"):
        policyctl.classifier("eth9", backend=be)


def mask(**fields) -> bytes:
    return L.ClsKey(**fields).pack()


@pytest.mark.parametrize("m, text", [
    (mask(), "any"),
    (mask(have=0xFF, family=0xFF, proto=0xFF, dport=0xFFFF), "family proto dport"),
    (mask(family=0xFF, src=prefix_mask(24, 128).to_bytes(16, "big")), "family src/24"),
    (mask(proto=0xFF, sport=0xFFF0, dst=prefix_mask(64, 128).to_bytes(16, "big")), "proto sport/12 dst/64"),
    (mask(family=0xFF, ct_state=0xFF, src_cls=0xFFFFFFFF, dst_cls=0xFFFFFFFF), "family ct_state src class dst class"),
])
def test_shape_fields_name_the_masked_key_fields(m, text):
    assert policyctl.shape_fields(m) == text


@pytest.fixture
def cli_be(monkeypatch, be):
    monkeypatch.setattr(policyctl.common, "default_backend", be)
    return be


def test_cli_text_json_and_unknown_dev(cli_be, capsys):
    code, out, _err = run(capsys, "policy", "classifier", "--hook", "tc-ingress")
    assert code == 0
    assert "eth0 tc-ingress: 2 rules, 6 entries, 2 shapes = at most 2 hash lookups per packet" in out
    assert "family src class" in out and "tc-egress" not in out
    code, out, _err = run(capsys, "policy", "classifier", "--json")
    assert code == 0 and [r["hook"] for r in json.loads(out)] == ["tc-egress", "tc-ingress"]
    code, _out, err = run(capsys, "policy", "classifier", "--dev", "eth9")
    assert code == 2 and "eth9" in err and "Traceback" not in err
