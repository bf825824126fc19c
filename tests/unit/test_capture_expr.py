"""The tcpdump subset of `bpfgate capture EXPRESSION` (bpfgate.inspect.capture_expr): the terms it compiles
to (postfix, tcpdump's precedence and qualifier rules) and a one-line refusal naming what is outside it.
The same expressions against real traffic and tcpdump: tests/kernel/test_capture_expression.py."""

from __future__ import annotations

import pytest

from bpfgate.errors import BadInput
from bpfgate.inspect.capture_expr import EXPR_MAX, OP, SIDES, compile_expression


def ops(text: str) -> list[str]:
    names = {v: k for k, v in OP.items()}
    return [names[t["op"]] for t in compile_expression(text)]


def test_and_or_bind_equally_left_to_right_and_not_tightest():
    assert ops("udp or tcp and port 80") == ["proto", "proto", "or", "port", "and"]
    assert ops("udp or (tcp and port 80)") == ["proto", "proto", "port", "and", "or"]
    assert ops("not tcp and ip6") == ["proto", "not", "family", "and"]
    assert ops("! ( udp || tcp ) && ip") == ["proto", "proto", "or", "not", "family", "and"]


def test_a_bare_value_takes_the_qualifiers_before_it():
    a, b, _ = compile_expression("dst host 198.18.0.1 or 198.18.0.2")
    assert a["side"] == b["side"] == SIDES["dst"] and b["family"] == 4
    p, q, _ = compile_expression("tcp src port 80 or 443")
    assert (q["proto"], q["side"], q["lo"], q["hi"]) == (6, SIDES["src"], 443, 443)


def test_qualifiers():
    [t] = compile_expression("src and dst net fd00::/8")
    assert t["side"] == SIDES["src and dst"] and t["family"] == 6 and t["arp"] == 0
    [t] = compile_expression("host 198.18.0.1")
    assert t["arp"] == 1                              # as tcpdump: ARP/RARP addresses too
    [t] = compile_expression("ip host 198.18.0.1")
    assert t["arp"] == 0
    [t] = compile_expression("portrange 9000-8000")
    assert (t["proto"], t["lo"], t["hi"]) == (0, 8000, 9000)   # 0: TCP, UDP or SCTP
    [t] = compile_expression("udp dst port domain")
    assert (t["proto"], t["lo"], t["side"]) == (17, 53, SIDES["dst"])
    [t] = compile_expression("icmp6")
    assert (t["proto"], t["family"]) == (58, 6)


@pytest.mark.parametrize("text, says", [
    ("vlan 10", "'vlan' (VLAN tests) is outside the subset"),
    ("ether host 00:11:22:33:44:55", "'ether'"),
    ("port 80 and arp", "'arp'"),
    ("tcp[tcpflags] & tcp-syn != 0", "byte offsets"),
    ("ip proto 6", "'proto'"),
    ("host example.com", "resolves no names"),
    ("host 198.18.0.0/15", "write net 198.18.0.0/15"),
    ("net 198.18.0.1/15", "bits set beyond the prefix"),
    ("ip6 host 198.18.0.1", "is an IPv4 address"),
    ("tcp host 198.18.0.1", "write 'tcp and host 198.18.0.1'"),
    ("port 65536", "out of range"),
    ("port nosuchservice", "unknown port 'nosuchservice'"),
    ("portrange 80", "write portrange LOW-HIGH"),
    ("(tcp", "missing ')'"),
    ("tcp)", "no '(' before it"),
    ("tcp udp", "join tests with and/or"),
    ("tcp and", "ends too early"),
    ("and tcp", "unexpected 'and'"),
    ("tcp & udp", "unexpected '&'"),
    ("frobnicate", "unknown word 'frobnicate'"),
    (" or ".join(["tcp"] * 30), f"at most {EXPR_MAX}"),
])
def test_outside_the_subset_is_named(text, says):
    with pytest.raises(BadInput) as e:
        compile_expression(text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_empty_expression_is_no_filter():
    assert compile_expression("") == [] == compile_expression("   ")
