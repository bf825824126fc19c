"""`bpfgate policy classifier` on a real engine: the cost it reports (shapes, entries, stage 0) is what the
compiler gives for the same policy, and follows a live rule edit."""

from __future__ import annotations

import json

import pytest
from clirun import run_cli

from bpfgate import policyctl
from bpfgate.policy.compile import compile_hook
from bpfgate.policy.model import Hook, Policy

pytestmark = pytest.mark.kernel

RULES = [
    {"name": "web", "protocol": "tcp", "dst_port": [80, 443], "action": "drop"},
    {"name": "nets", "src": ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.7.1/32"], "action": "drop"},
    {"name": "v6", "dst": ["2001:db8::/32", "2001:db8:1::/48"], "action": "drop"},
]


@pytest.fixture
def gate(pair, policies_removed):
    """The server's interface and namespace; its policies removed at the end."""
    _client, server, _cif, sif = pair
    policies_removed(server.netns)
    return sif.name, server.netns


def cli_ok(*argv) -> str:
    r = run_cli(list(argv))
    assert r.returncode == 0, r.stderr
    return r.stdout


def expected(dev: str) -> dict:
    """What the compiler gives for the same policy, as `policy classifier --json` words it."""
    hp = Policy.model_validate({"interfaces": [dev], "hooks": {"tc-ingress": {"rules": RULES}}}).hooks[Hook.TC_INGRESS]
    c = compile_hook(hp, Hook.TC_INGRESS, ifindex=lambda name: 1)
    conf = c.conf()
    trees = {policyctl.TREE_NAMES[t]: len(tr.prefixes) for t, tr in c.classes.trees.items() if conf.trees >> t & 1}
    return {"entries": len(c.cls), "trees": trees,
            "shapes": [{"id": s.id, "fields": policyctl.shape_fields(s.mask), "entries": s.entries}
                       for s in conf.shapes]}


def test_reported_cost_is_the_compiled_one_and_follows_a_live_edit(gate, tmp_path):
    dev, ns = gate
    f = tmp_path / "p.yaml"
    f.write_text(json.dumps({"interfaces": [dev], "hooks": {"tc-ingress": {"rules": RULES}}}))   # JSON is YAML
    cli_ok("apply", "--netns", ns, str(f))

    (r,) = json.loads(cli_ok("policy", "classifier", "--netns", ns, "--json"))
    want = expected(dev)
    assert (r["dev"], r["hook"], r["rules"]) == (dev, "tc-ingress", 3)
    assert r["shapes"] == want["shapes"] and r["entries"] == want["entries"]
    assert r["lookups_worst"] == len(want["shapes"]) == 3   # ports, and one class shape per address field
    assert {t["tree"]: t["classes"] for t in r["stage0"]} == want["trees"] == {"src4": 4, "dst6": 2}
    assert all(1 <= t["max_probes"] <= 7 and t["buckets"] >= 1 for t in r["stage0"])

    cli_ok("rule", "add", "--netns", ns, "--dev", dev, "dns", "--proto", "udp", "--dport", "53")
    (after,) = json.loads(cli_ok("policy", "classifier", "--netns", ns, "--dev", dev, "--hook", "tc-ingress",
                                 "--json"))
    assert after["rules"] == 4 and after["entries"] == r["entries"] + 1
    assert [s["fields"] for s in after["shapes"]] == [s["fields"] for s in r["shapes"]]

    text = cli_ok("policy", "classifier", "--netns", ns)
    assert f"{dev} tc-ingress: 4 rules, {after['entries']} entries, 3 shapes = at most 3 hash lookups" in text
    assert "stage 0: src4 4 classes" in text

    r = run_cli(["policy", "classifier", "--netns", ns, "--dev", "zz-missing0"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
