"""`bpfgate policy explain` on a running engine says what the kernel does: for each description, the rule it
names is the one whose counter counts that very packet, built from the description and sent over the wire
(AF_PACKET from the client to the server's engine at tc-ingress; frames carry no valid checksums, so the
server never answers them and conntrack sees each flow's first packets only, as explain assumes)."""

from __future__ import annotations

import time

import pytest
from test_engine_vlan import _mac, _send

from bpfgate import policyctl
from bpfgate.engine import frames
from bpfgate.policy.model import Policy
from bpfgate.policyctl.explain import parse_packet

pytestmark = pytest.mark.kernel
COPIES = 3


def rules(client_net6):
    return [
        {"name": "bad", "ct": "invalid", "action": "drop"},
        {"name": "web", "protocol": "tcp", "dst_port": 80, "tcp_flags": "syn,!ack", "action": "drop"},
        {"name": "dns", "protocol": "udp", "dst_port": 53},
        {"name": "ping4", "protocol": "icmp", "icmp_type": 8, "action": "drop"},
        {"name": "ssh6", "src": client_net6, "protocol": "tcp", "dst_port": 22},
        {"name": "v100", "vlan": 100, "protocol": "udp", "action": "drop"},
    ]


def descriptions(c, s):
    c4, s4, c6, s6 = c.ip4, s.ip4, c.ip6, s.ip6
    return [
        (f"tcp {c4}:40000 -> {s4}:80 syn", "web"),
        (f"tcp {c4}:40001 -> {s4}:80 ack", "bad"),                 # no flow, no SYN: invalid
        (f"udp {c4}:5000 -> {s4}:53", "dns"),
        (f"udp [{c6}]:5000 -> [{s6}]:53", "dns"),
        (f"icmp {c4} -> {s4} type 8 code 0", "ping4"),
        (f"tcp [{c6}]:40000 -> [{s6}]:22 syn", "ssh6"),
        (f"tcp [{c6}]:40002 -> [{s6}]:23 syn", "(default)"),
        (f"udp {c4}:5000 -> {s4}:9999 vlan 100", "v100"),
        (f"udp {c4}:5001 -> {s4}:9999", "(default)"),
    ]


@pytest.fixture
def net(pair):
    client, server, cif, sif = pair
    policy = Policy.model_validate({"interfaces": [sif.name], "hooks": {"tc-ingress": {"rules": rules(
        str(cif.net6))}}})
    policyctl.apply(policy, netns=server.netns)
    try:
        yield pair
    finally:
        policyctl.remove(netns=server.netns)


def counts(server, dev):
    return {r.name: r.packets for r in policyctl.rules(dev, netns=server.netns)}


def test_explain_names_the_rule_that_counts_the_real_packet(net):
    client, server, cif, sif = net
    dst_mac, src_mac = _mac(server, sif.name), _mac(client, cif.name)
    for text, expected in descriptions(cif, sif):
        (answer,) = policyctl.explain(text, netns=server.netns, dev=sif.name)
        assert answer.hook == "tc-ingress" and not answer.disagreement
        assert answer.rule == expected, (text, answer.line())
        pkt = parse_packet(text)
        frame = dst_mac + src_mac + frames.build(pkt, vlans=(pkt.vlan,) if pkt.vlan is not None else ())[12:]
        before = counts(server, sif.name)
        _send(client, cif.name, [frame] * COPIES)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and counts(server, sif.name)[answer.rule] - before[answer.rule] < COPIES:
            time.sleep(0.05)
        time.sleep(0.2)
        got = {k: v - before[k] for k, v in counts(server, sif.name).items()}
        for name, n in got.items():   # only the client's own neighbour/multicast traffic may add to the default
            if name == answer.rule:
                assert n == COPIES or (name == "(default)" and n >= COPIES), (text, got)
            elif name != "(default)":
                assert n == 0, (text, answer.rule, got)
