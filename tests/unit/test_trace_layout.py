"""The C<->Python contract of the tracing objects: the record fields Python reads exist in each object's
BTF, records are 8-byte multiples, every hook has both its tp_btf and classic program with the right
section, and names from the kernel's enums resolve (no root)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from bpfgate.contract import CONTRACT
from bpfgate.errors import BpfgateError
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.objects import BpfObject
from bpfgate.trace import names
from bpfgate.trace.drops import HOOKS as DROP_HOOKS
from bpfgate.trace.tcp import HOOKS as TCP_HOOKS

OBJECTS = Path(__file__).resolve().parents[2] / "src" / "bpfgate" / "objects"
USED = CONTRACT  # the names Python reads: one list, in bpfgate.contract


@pytest.mark.parametrize("obj, structs", [("trace_tcp", ("bg_tcp_event", "bg_sock_owner")),
                                          ("trace_drops", ("bg_drop_event", "bg_sock_owner"))])
def test_fields_python_reads(obj, structs):
    btf = Btf.from_elf(str(OBJECTS / f"{obj}.o"))
    for name in structs:
        t = btf.struct(name)
        have = {f[0] for f in t._fields_}
        assert set(USED[name]) <= have, (name, set(USED[name]) - have)
        assert ctypes.sizeof(t) % 8 == 0


@pytest.mark.parametrize("obj, hooks", [("trace_tcp", TCP_HOOKS), ("trace_drops", DROP_HOOKS)])
def test_every_hook_has_both_programs(obj, hooks):
    with BpfObject.open(obj) as o:
        progs = set(o.program_names())
        assert all(p.startswith("bg_") for p in progs)
        for h in hooks:
            assert o.program(h.btf_prog).section == f"tp_btf/{h.event}"
            assert o.program(h.tp_prog).section == f"tracepoint/{h.category}/{h.event}"
        assert progs == {p for h in hooks for p in (h.btf_prog, h.tp_prog)}


def test_connect_causes_and_states():
    assert names.connect_cause(111) == "refused" and names.connect_cause(110) == "timeout"
    assert names.tcp_state(1) == "ESTABLISHED" and names.tcp_state(99) == "99"


def test_drop_reason_names():
    table = {2: "NOT_SPECIFIED", 73: "TC_INGRESS"}
    assert names.drop_reason(73, table) == "TC_INGRESS" and names.drop_reason(500, table) == "REASON_500"
    assert names.drop_reason_code("tc_ingress", table) == 73
    assert names.drop_reason_code("SKB_DROP_REASON_TC_INGRESS", table) == 73
    assert names.drop_reason_code("73", table) == 73
    with pytest.raises(BpfgateError):
        names.drop_reason_code("NOPE", table)


def test_kernel_enum_from_btf_when_present():
    table = names.drop_reasons()
    if not table:
        pytest.skip("this kernel has no BTF")
    assert "NO_SOCKET" in table.values() and "NOT_SPECIFIED" in table.values()


def test_kallsyms(tmp_path):
    f = tmp_path / "kallsyms"
    f.write_text("ffffffff81000000 T _text\nffffffff81000100 t tcp_v4_rcv\nffffffff81000200 D data\n")
    k = names.Kallsyms(str(f))
    assert k.symbol(0xFFFFFFFF81000110) == "tcp_v4_rcv+0x10"
    assert k.symbol(0x10) is None
