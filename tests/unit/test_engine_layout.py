"""The engine's hand-packed formats (bpfgate.policy.layout, bpfgate.engine.records) equal the BTF layout of
the built engine object: sizes and field offsets, so Python and C cannot drift apart silently."""

from __future__ import annotations

import ctypes
import struct

import pytest

from bpfgate.engine import records as R
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.objects import packaged_path
from bpfgate.policy import layout as L


@pytest.fixture(scope="module")
def btf():
    path = packaged_path("engine")
    if not path.exists():
        pytest.skip("engine object not built (make -C bpf)")
    return Btf.from_elf(str(path))


def offsets(ctype) -> dict[str, int]:
    return {f[0]: getattr(ctype, f[0]).offset for f in ctype._fields_}


def fmt_offsets(fmt: str) -> list[int]:
    """Offsets of the fields of a struct format (padding 'x' skipped)."""
    out, off = [], 0
    for count, code in __import__("re").findall(r"(\d*)([a-zA-Z])", fmt.lstrip("=")):
        n = int(count or 1)
        size = struct.calcsize("=" + code)
        if code == "x":
            off += n
            continue
        if code == "s":
            out.append(off)
            off += n
            continue
        for _ in range(n):
            out.append(off)
            off += size
    return out


@pytest.mark.parametrize("name,fmt,fields", [
    ("bg_cls_key", L.KEY_FMT, None),
    ("bg_cls_val", L.VAL_FMT, None),
    ("bg_rule", L.RULE_FMT, None),
    ("bg_shape", L.SHAPE_FMT, ("mask", "best_prio", "id", "pad", "entries", "pad2")),
    ("bg_counter", R.COUNTER_FMT, None),
    ("bg_ct_key", R.CT_KEY_FMT, None),
    ("bg_ct_entry", R.CT_ENTRY_FMT, ("first_ns", "last_ns", "packets_orig", "bytes_orig", "packets_reply",
                                     "bytes_reply", "flags", "tcp_flags_seen")),
])
def test_format_matches_btf(btf, name, fmt, fields):
    ctype = btf.struct(name)
    assert struct.calcsize(fmt) == ctypes.sizeof(ctype), name
    btf_offs = list(offsets(ctype).values()) if fields is None else [offsets(ctype)[f] for f in fields]
    fo = fmt_offsets(fmt)
    if name == "bg_shape":   # pad[3] is three 'B's in the format
        fo = fo[:3] + [fo[3]] + fo[6:]
    assert fo == btf_offs, name


def test_conf_and_buckets(btf):
    conf = btf.struct("bg_conf")
    assert ctypes.sizeof(conf) == struct.calcsize(L.CONF_HDR_FMT) + L.MAX_SHAPES * struct.calcsize(L.SHAPE_FMT)
    assert offsets(conf)["shapes"] == struct.calcsize(L.CONF_HDR_FMT)
    assert ctypes.sizeof(btf.struct("bg_bucket")) == R.BUCKET_SIZE
    assert ctypes.sizeof(btf.struct("bg_log_bucket")) == R.LOG_BUCKET_SIZE
    assert ctypes.sizeof(btf.struct("bg_rule_log_event")) == struct.calcsize(R.RULE_LOG_FMT)


def test_flags_and_have_bits_match_enums(btf):
    have = btf.enum("bg_have")
    assert have == {"BG_HAVE_L3": L.HAVE_L3, "BG_HAVE_PROTO": L.HAVE_PROTO, "BG_HAVE_PORTS": L.HAVE_PORTS,
                    "BG_HAVE_TCPFLAGS": L.HAVE_TCPFLAGS, "BG_HAVE_ICMP": L.HAVE_ICMP, "BG_HAVE_VLAN": L.HAVE_VLAN,
                    "BG_HAVE_CT": L.HAVE_CT}
    rf = btf.enum("bg_rule_flags")
    assert rf["BG_RF_RATE_PER_SRC"] == L.RF_RATE_PER_SRC and rf["BG_RF_REDIR_INGRESS"] == L.RF_REDIR_INGRESS
    assert rf["BG_RF_LOG"] == L.RF_LOG and rf["BG_RF_MARK"] == L.RF_MARK and rf["BG_RF_RATE_BYTES"] == L.RF_RATE_BYTES
    assert btf.enum("bg_action") == {"BG_ACT_PASS": L.ACT_PASS, "BG_ACT_DROP": L.ACT_DROP,
                                     "BG_ACT_REDIRECT": L.ACT_REDIRECT}
