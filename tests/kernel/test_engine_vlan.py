"""VLAN matching of the policy engine on real traffic, without VLAN devices (this kernel may lack
CONFIG_VLAN_8021Q, so `ip link add ... type vlan` is not an option).

The client writes hand-built Ethernet frames (frames.build, addressed from the client's veth MAC to the
server's) with zero, one (802.1Q) or two (802.1ad outer + 802.1Q inner) tags into an AF_PACKET raw
socket bound to its veth; engines at the server's end of the link count them per rule.

What the hooks see on veth (the byte counters show it, and the test asserts it):
- XDP (generic and native alike) runs before the stack touches the frame: the tags are in the frame,
  bytes counted = frame length, and the engine reads the outer id from the first tag (parse.h).
- TC ingress runs after __netif_receive_skb_core has called skb_vlan_untag() on every 802.1Q/802.1ad
  frame. That is core code, VLAN devices or not: the outer tag is taken off the data into
  skb->vlan_tci / vlan_proto (bytes counted = frame length - 4), and an inner tag stays in the data. The
  engine must take the id from skb->vlan_tci (tc_key); with two tags, reading the data instead would give
  the inner id, which the 802.1ad case catches (outer 200 + inner 100 must not count on `vlan-100`).
After the hooks, the stack discards the tagged frames (no VLAN device: PACKET_OTHERHOST); the IPv4 frames
also carry a zero header checksum and the IPv6 ones a zero UDP checksum, so the server never answers them
and the only other packets on the server's ingress are the client's own neighbour/multicast traffic
(which can only reach the untagged default rule: the default counter is compared with >=).
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest

from bpfgate.engine import frames
from bpfgate.policy.model import HookPolicy
from bpfgate.policy.packet import Packet
from bpfgate.sandbox.timing import scaled

pytestmark = pytest.mark.kernel

POLICY = {"default": "allow", "rules": [
    {"name": "vlan-100", "vlan": 100, "action": "drop", "count": True},
    {"name": "vlan-200-udp-9", "vlan": 200, "protocol": "udp", "dst_port": 9, "action": "drop"},
]}
DEFAULT = "(default)"
HOOKS = [("tc-ingress", None), ("xdp", "generic"), ("xdp", "native")]

# (tags outer first, family, UDP destination port, frames sent, rule expected to count them)
SINGLE = [
    ((100,), 4, 9, 3, "vlan-100"),
    ((100,), 4, 53, 2, "vlan-100"),            # any protocol/port on VLAN 100
    ((100,), 6, 9, 2, "vlan-100"),
    ((200,), 4, 9, 4, "vlan-200-udp-9"),
    ((200,), 6, 9, 1, "vlan-200-udp-9"),
    ((200,), 4, 7, 2, DEFAULT),                # VLAN 200 but not port 9
    ((300,), 4, 9, 3, DEFAULT),                # no rule for VLAN 300
    ((), 4, 9, 3, DEFAULT),                    # untagged
    ((), 6, 9, 1, DEFAULT),
]
DOUBLE = [                                     # 802.1ad outer, 802.1Q inner: the OUTER id counts
    ((200, 100), 4, 9, 3, "vlan-200-udp-9"),
    ((300, 100), 4, 9, 2, DEFAULT),
    ((100, 200), 4, 9, 2, "vlan-100"),
    ((100, 200), 6, 9, 1, "vlan-100"),
]


def _mac(host, dev: str) -> bytes:
    link = host.ipr.get_links(ifname=dev)[0]
    return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


def _frame(client_if, server_if, dst_mac: bytes, src_mac: bytes, tags, family: int, dport: int) -> bytes:
    src, dst = (client_if.ip6, server_if.ip6) if family == 6 else (client_if.ip4, server_if.ip4)
    p = Packet(family=family, src=ipaddress.ip_address(src), dst=ipaddress.ip_address(dst), proto=17,
               sport=47000, dport=dport)
    fr = dst_mac + src_mac + frames.build(p, vlans=tags)[12:]
    assert frames.parse(fr).vlan == (tags[0] if tags else None)       # the frame says what we mean
    if tags:
        outer = 0x88A8 if len(tags) > 1 else 0x8100
        assert fr[12:14] == outer.to_bytes(2, "big") and fr[14:16] == tags[0].to_bytes(2, "big")
    return fr


def _send(client, dev: str, batch: list[bytes]) -> None:
    # the socket belongs to the namespace it is created in; protocol 0: send only
    with client.entered(), socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        s.bind((dev, 0))
        for fr in batch:
            assert s.send(fr) == len(fr)


def _delta(eng, before) -> dict[str, tuple[int, int]]:
    return {k: (c.packets - before[k][0], c.bytes - before[k][1]) for k, c in eng.counters().items()}


def _check(pair, engines, hook: str, mode: str | None, plan) -> None:
    client, server, cif, sif = pair
    eng = engines(sif.name, hook, HookPolicy.model_validate(POLICY), netns_name=server.netns, mode=mode)
    dst_mac, src_mac = _mac(server, sif.name), _mac(client, cif.name)
    # the outer tag is in skb->vlan_tci at TC ingress, not in the data: 4 bytes fewer counted there
    untag = 4 if hook.startswith("tc") else 0
    want = {name: [0, 0] for name in eng.counters()}
    batch = []
    for tags, family, dport, n, rule in plan:
        fr = _frame(cif, sif, dst_mac, src_mac, tags, family, dport)
        batch += [fr] * n
        want[rule][0] += n
        want[rule][1] += n * (len(fr) - (untag if tags else 0))
    before = {k: (c.packets, c.bytes) for k, c in eng.counters().items()}
    _send(client, cif.name, batch)
    deadline = time.monotonic() + scaled(3.0)  # delivery to the peer is asynchronous (backlog / veth NAPI)
    while time.monotonic() < deadline:
        got = _delta(eng, before)
        if all(got[r][0] >= want[r][0] for r in want):
            break
        time.sleep(0.05)
    time.sleep(0.2)                     # nothing more may arrive on the VLAN rules
    got = _delta(eng, before)
    for rule in ("vlan-100", "vlan-200-udp-9"):
        assert got[rule] == tuple(want[rule]), (hook, mode, rule, got)
    assert got[DEFAULT][0] >= want[DEFAULT][0] and got[DEFAULT][1] >= want[DEFAULT][1], (hook, mode, got)


@pytest.mark.parametrize("hook,mode", HOOKS, ids=[f"{h}-{m}" if m else h for h, m in HOOKS])
def test_vlan_rules_single_tag(pair, engines, hook, mode):
    """802.1Q-tagged (VID 100, 200, 300) and untagged UDP over IPv4 and IPv6: exact packets and bytes on
    the VLAN rules (bytes: frame length at XDP, frame length - 4 at TC, whose tag is in skb->vlan_tci)."""
    _check(pair, engines, hook, mode, SINGLE)


@pytest.mark.parametrize("hook,mode", HOOKS, ids=[f"{h}-{m}" if m else h for h, m in HOOKS])
def test_vlan_rules_match_outer_of_two_tags(pair, engines, hook, mode):
    """802.1ad outer + 802.1Q inner tag: the rules match the outer id only (at TC the outer one is in
    skb->vlan_tci and the inner one still in the data, so this also shows which one the engine prefers)."""
    _check(pair, engines, hook, mode, DOUBLE)
