"""The C <-> Python contract read from BTF (bpfgate.contract): every enum and struct Python reads comes from an
object's BTF, every object that carries the same enum or struct agrees with what Python read, and a drift
(a renamed, reordered or resized field, an enumerator without its Python word) stops Python at import."""

from __future__ import annotations

import ctypes
import glob
import importlib
import os

import pytest

from bpfgate import contract
from bpfgate.errors import ObjectError
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.objects import OBJECTS_DIR

# the modules that read constants or layouts from BTF (importing them reads them)
READERS = ("bpfgate.policy.layout", "bpfgate.policy.model", "bpfgate.policy.atoms", "bpfgate.policy.prefixes",
           "bpfgate.engine.records", "bpfgate.engine.engine", "bpfgate.inspect.events", "bpfgate.inspect.rules",
           "bpfgate.inspect.flows", "bpfgate.inspect.capture", "bpfgate.inspect.attempts", "bpfgate.trace.format",
           "bpfgate.trace.names")

# what Python must read from BTF, not copy: (object, enum)
ENUMS = {
    ("selftest", "bg_event_type"), ("selftest", "bg_stat"),
    ("engine", "bg_engine_limits"), ("engine", "bg_have"), ("engine", "bg_action"), ("engine", "bg_rule_flags"),
    ("engine", "bg_ct_state"), ("engine", "bg_tree"), ("engine", "bg_ct_flags"), ("engine", "bg_engine_hook"),
    ("engine", "bg_event_type"),
    ("capture", "bg_capture_hook"), ("capture", "bg_capture_verdict"), ("capture", "bg_capture_side"),
    ("capture", "bg_capture_limits"), ("capture", "bg_stat"),
    ("flows", "bg_dir"), ("flows", "bg_flow_end_reason"), ("flows", "bg_flow_stat"), ("flows", "bg_stat"),
    ("flows", "bg_event_type"),
    ("trace_tcp", "bg_tcp_kind"), ("trace_tcp", "bg_owner_flags"), ("trace_tcp", "bg_event_type"),
    ("attempts", "bg_attempt_ports"),
}
# structs Python packs or reads at fixed offsets: (object, struct)
RECORDS = {
    ("engine", "bg_cls_key"), ("engine", "bg_cls_val"), ("engine", "bg_rule"), ("engine", "bg_shape"),
    ("engine", "bg_conf"), ("engine", "bg_pfx_top"), ("engine", "bg_pfx_key"), ("engine", "bg_counter"),
    ("engine", "bg_ct_key"), ("engine", "bg_ct_value"), ("engine", "bg_rule_log_event"), ("engine", "bg_event_hdr"),
    ("engine", "bg_capture_cfg"),
    ("engine", "bg_capture_event"),
}

OBJECTS = sorted(glob.glob(str(OBJECTS_DIR / "*.o")))


@pytest.fixture(scope="module")
def read():
    if not OBJECTS:
        pytest.skip("BPF objects not built (make -C bpf)")
    for m in READERS:
        importlib.import_module(m)
    return set(contract.READ_ENUMS), dict(contract.READ_RECORDS)


def _layout(ctype) -> list[tuple[str, int, int]]:
    return [(f, getattr(ctype, f).offset, getattr(ctype, f).size) for f, *_ in ctype._fields_]


def test_python_reads_every_crossing_constant_and_struct_from_btf(read):
    enums, records = read
    assert ENUMS <= enums, f"no longer read from BTF: {sorted(ENUMS - enums)}"
    assert RECORDS <= set(records), f"no longer read from BTF: {sorted(RECORDS - set(records))}"


@pytest.mark.parametrize("obj", OBJECTS, ids=os.path.basename)
def test_every_object_agrees_with_what_python_read(read, obj):
    """An enum or struct Python read from one object has the same values / layout in every object built with
    it (a .bpf.c that redefines one, or a stale object, fails here)."""
    enums, records = read
    btf = Btf.from_elf(obj)
    theirs = btf.enums()
    for src, name in enums:
        if name in theirs:
            assert theirs[name] == contract.btf(src).enum(name), f"enum {name}: {os.path.basename(obj)} != {src}.o"
    for src, name in records:
        try:
            ctype = btf.struct(name)
        except ObjectError:
            continue
        ref = contract.btf(src).struct(name)
        assert _layout(ctype) == _layout(ref), f"struct {name}: {os.path.basename(obj)} != {src}.o"
        assert ctypes.sizeof(ctype) == ctypes.sizeof(ref), name


def test_record_formats_are_the_btf_layouts(read):
    """Spot check of the derived formats against the layouts docs/policy-engine.md documents."""
    from bpfgate.engine import records as R
    from bpfgate.policy import layout as L

    assert (L.KEY.size, L.VAL.size, L.RULE.size, L.SHAPE.size, L.PFX_TOP.size, L.PFX_KEY.size) == (56, 8, 40, 136, 16, 24)
    assert L.CONF.size == 80 + L.MAX_SHAPES * L.SHAPE.size
    assert (R.CT_KEY.size, R.CT_VALUE.size, R.RULE_LOG.size) == (40, 112, 72)
    assert L.KEY.format == "=BBBBBBBBB1xHHH16s16sII"   # pad0 packs as a zero byte, not a caller's argument


def test_a_reordered_or_renamed_field_is_refused():
    fields = "shape gen have family proto tcp_flags icmp_type icmp_code ct_state vlan sport dport src dst src_cls dst_cls"
    assert contract.record("engine", "bg_cls_key", fields).size == 56
    for drifted in (fields.replace("sport dport", "dport sport"), fields.replace("vlan", "vlan_id"),
                    fields.replace(" dst_cls", ""), fields + " extra"):
        with pytest.raises(ObjectError, match="bg_cls_key"):
            contract.record("engine", "bg_cls_key", drifted)


def test_an_enumerator_without_its_python_word_is_refused():
    C = contract.constants("engine")
    words = {"BG_ACT_PASS": "pass", "BG_ACT_DROP": "drop", "BG_ACT_REDIRECT": "redirect", "BG_ACT_REJECT": "reject"}
    assert C.names("bg_action", words) == {1: "pass", 2: "drop", 3: "redirect", 4: "reject"}
    with pytest.raises(ObjectError, match="BG_ACT_REDIRECT"):
        C.names("bg_action", {k: v for k, v in words.items() if k != "BG_ACT_REDIRECT"})
    with pytest.raises(ObjectError, match="BG_ACT_GONE"):
        C.names("bg_action", {**words, "BG_ACT_GONE": "gone"})
    with pytest.raises(AttributeError, match="BG_ACT_GONE"):
        C.BG_ACT_GONE  # noqa: B018


def test_a_missing_object_is_a_clear_error(monkeypatch, tmp_path):
    from bpfgate.kernel import objects

    monkeypatch.setattr(contract, "packaged_path", lambda name: tmp_path / f"{name}.o")
    contract.btf.cache_clear()
    try:
        with pytest.raises(ObjectError, match="make -C bpf"):
            contract.btf("engine")
    finally:
        monkeypatch.setattr(contract, "packaged_path", objects.packaged_path)
        contract.btf.cache_clear()
