"""Input limits of the policy loader (bpfgate.policy.parse): size, nesting and alias expansion are bounded
with a one-line PolicyError, far above what a real policy (a 1,000,000-rule file included) needs."""

from __future__ import annotations

import time

import pytest

from bpfgate.errors import PolicyError
from bpfgate.policy import parse, source
from bpfgate.policy.parse import load_text, read_source
from bpfgate.policyctl.export import load_policies

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def _err(text: str) -> str:
    with pytest.raises(PolicyError) as e:
        load_text(text, "p.yaml")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_alias_bomb_is_refused_at_once():
    assert len(BOMB) < 600
    t = time.monotonic()
    assert "aliases expand to more than 100,000 nodes" in _err(BOMB)
    assert time.monotonic() - t < 30   # it is 9**9 nodes unbounded


def test_aliases_that_share_a_list_are_fine():
    cidrs = ", ".join(f"198.18.{i}.0/24" for i in range(40))
    rules = "".join(f"      - {{name: r{i}, src: *nets, protocol: tcp, dst_port: {1000 + i}, action: drop}}\n"
                    for i in range(200))
    head = f"interfaces: [eth0]\nhooks:\n  tc-ingress:\n    rules:\n      - {{name: first, src: &nets [{cidrs}]}}\n"
    p = load_text(head + rules)
    assert len(p.hooks[next(iter(p.hooks))].rules) == 201


def test_nesting_is_bounded():
    assert "nested deeper than 32 levels" in _err("a: " + "[" * 40 + "]" * 40 + "\n")
    assert "nested deeper than 32 levels" in _err("a: " + "[" * 5000 + "]" * 5000 + "\n")   # the composer's recursion


def test_size_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(source, "MAX_BYTES", 1000)   # read_source's limit (source.py)
    f = tmp_path / "big.yaml"
    f.write_text("# " + "x" * 2000 + "\n")
    with pytest.raises(PolicyError, match="larger than"):
        read_source(f)
    with pytest.raises(PolicyError, match="larger than"):
        read_source("/dev/zero")


def test_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"interfaces: [eth0]\n# caf\xe9\n")
    with pytest.raises(PolicyError, match=r"bin.yaml:2: not UTF-8 text \(byte 0xe9"):
        read_source(f)


def test_tags_that_construct_nothing_known_are_an_error():
    assert "not valid YAML" in _err("interfaces: !!python/object:os.system x\n")
    with pytest.raises(PolicyError):
        load_policies("interfaces: [eth0]\n---\n!!python/name:os.system\n", "p.yaml")


def test_a_million_rule_file_is_within_the_limits():
    """Block style, one match per line: the size a 1,000,000-rule blocklist or port policy takes."""
    head = "version: 1\ninterfaces: [eth0]\nhooks:\n  xdp:\n    default: allow\n    rules:\n"
    rule = "      - name: block-{i:07d}\n        src: [198.{a}.{b}.{c}/32]\n        protocol: tcp\n        dst_port: 443\n        action: drop\n"
    size = len(head) + sum(len(rule.format(i=i, a=18 + i // 65536 % 2, b=i // 256 % 256, c=i % 256)) for i in range(0, 10**6, 1000)) * 1000
    assert size < parse.MAX_BYTES / 2
    assert parse.MAX_DEPTH >= 8   # hooks.H.rules[i].field[j] and a nested action
