"""The client's light JSON-over-unix-socket (agent/wire.py) says what json and socket would."""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys

import pytest

from bpfgate.agent import wire


def _value(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "none"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return "".join(rng.choice('ab "\\/\n\té€\u2028-@!') for _ in range(rng.randint(0, 8)))
    if kind == "int":
        return rng.randint(-2**70, 2**70)
    if kind == "float":
        return rng.choice([0.5, -1e300, 3.25, float("inf"), float("-inf")])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": _value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def test_dumps_and_loads_are_json_s():
    rng = random.Random(5)
    for _ in range(500):
        v = _value(rng)
        assert wire.dumps(v) == json.dumps(v, default=str).encode()
        assert wire.loads(wire.dumps(v) + b"\n") == json.loads(json.dumps(v))
    assert wire.dumps({"net": ipaddress.ip_network("198.18.0.0/24")}) == b'{"net": "198.18.0.0/24"}'


@pytest.mark.parametrize("bad", [b"", b"{", b"{}x", b"nope", b"\xff", b"[1,]"])
def test_what_is_not_one_json_document_is_a_value_error(bad):
    with pytest.raises(ValueError):
        wire.loads(bad)


def test_a_client_answered_by_an_agent_imports_neither_json_nor_socket():
    code = ("import sys; from bpfgate.cli import entry; from bpfgate.agent import client; from bpfgate.cli import term;"
            "print(sorted(m for m in ('json', 'socket', 're', 'enum', 'typing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
