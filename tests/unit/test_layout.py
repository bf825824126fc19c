"""C <-> Python contract: the names Python uses exist in the objects' BTF, and gcc (host) and clang
(BPF target) agree on every offset and size of the contract headers' structs."""

import ctypes
import glob
import os
import subprocess

import pytest

from bpfgate.contract import CONTRACT
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.objects import OBJECTS_DIR

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
INCLUDE = os.path.join(ROOT, "bpf", "include")


def _contract_headers() -> list[str]:
    """bg_common.h and every family header built on it (the others hold BPF code, not layouts)."""
    out = []
    for path in sorted(glob.glob(os.path.join(INCLUDE, "*.h"))):
        with open(path) as f:
            text = f.read()
        if os.path.basename(path) == "bg_common.h" or '#include "bg_common.h"' in text:
            out.append(os.path.abspath(path))
    return out
OBJECTS = sorted(glob.glob(str(OBJECTS_DIR / "*.o")))


def _structs_in(btf: Btf) -> dict[str, type]:
    out = {}
    for name in CONTRACT:
        try:
            out[name] = btf.struct(name)
        except Exception:
            continue
    return out


def test_objects_are_built():
    assert OBJECTS, "no BPF objects: run `make -C bpf`"


@pytest.mark.parametrize("obj", OBJECTS, ids=os.path.basename)
def test_contract_fields_exist_in_btf(obj):
    btf = Btf.from_elf(obj)
    for name, ctype in _structs_in(btf).items():
        fields = {f[0] for f in ctype._fields_}
        missing = set(CONTRACT[name]) - fields
        assert not missing, f"{os.path.basename(obj)}: struct {name} lost field(s) {sorted(missing)}"


def test_every_contract_struct_is_in_some_object():
    seen = set()
    for obj in OBJECTS:
        seen |= set(_structs_in(Btf.from_elf(obj)))
    assert set(CONTRACT) <= seen, f"not in any object's BTF: {sorted(set(CONTRACT) - seen)}"


def test_host_compiler_agrees_with_bpf_layout(tmp_path):
    # offsets as the BPF target laid them out (from BTF)...
    layouts = {}
    for obj in OBJECTS:
        for name, ctype in _structs_in(Btf.from_elf(obj)).items():
            layouts[name] = ctype
    # ...and as the host compiler lays out the same header
    lines = ["#include <stdio.h>", "#include <stddef.h>"] + [f'#include "{h}"' for h in _contract_headers()]
    lines.append("int main(void) {")
    for name, ctype in layouts.items():
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        for fname, *_ in ctype._fields_:
            if not fname.startswith("_"):
                lines.append(f'printf("{name}.{fname} %zu\\n", offsetof(struct {name}, {fname}));')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    host = dict(line.rsplit(" ", 1) for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                                 check=True).stdout.splitlines())
    for name, ctype in layouts.items():
        assert int(host[name]) == ctypes.sizeof(ctype), f"sizeof(struct {name})"
        for fname, *_ in ctype._fields_:
            if not fname.startswith("_"):
                assert int(host[f"{name}.{fname}"]) == getattr(ctype, fname).offset, f"{name}.{fname}"
