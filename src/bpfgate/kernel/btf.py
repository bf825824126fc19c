"""BTF -> ctypes: the Python side of every struct in bpf/include's contract headers is read from the objects' BTF.

So a layout is written once (in C) and Python cannot drift from it: a renamed or resized field shows up as
a missing attribute or a size mismatch at load, and tests/unit/test_layout.py checks the names Python uses.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import Structure, c_uint32
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from bpfgate.errors import BpfgateError, NotSupported, ObjectError
from bpfgate.kernel import libbpf as L

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC = 9, 10, 11, 12, 13, 14, 15
KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 16, 17, 18, 19
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)

_INTS = {
    (1, False): ctypes.c_uint8, (1, True): ctypes.c_int8,
    (2, False): ctypes.c_uint16, (2, True): ctypes.c_int16,
    (4, False): ctypes.c_uint32, (4, True): ctypes.c_int32,
    (8, False): ctypes.c_uint64, (8, True): ctypes.c_int64,
}


class _BtfType(Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


@dataclass(frozen=True)
class DatasecVar:
    name: str
    offset: int
    size: int
    type_id: int


class Btf:
    """A BTF blob (from a loaded object, an ELF file, or the kernel) with ctypes generation."""

    def __init__(self, ptr: int, *, owned: bool, origin: str):
        if not ptr:
            raise ObjectError(f"read BTF of {origin}", "no BTF")
        self._ptr = ptr
        self._owned = owned
        self.origin = origin
        self._ctypes: dict[int, Any] = {}

    @classmethod
    def from_elf(cls, path: str) -> "Btf":
        ptr = L.btf__parse_elf(path.encode(), None)
        if not ptr:
            raise ObjectError(f"read BTF of {path}", f"cannot parse ({L.libc_errno() or 'no .BTF section'})")
        return cls(ptr, owned=True, origin=path)

    def close(self) -> None:
        if self._owned and self._ptr:
            L.btf__free(self._ptr)
        self._ptr = 0

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---- raw access --------------------------------------------------------------------------------

    def _type(self, type_id: int) -> tuple[_BtfType, int]:
        addr = L.btf__type_by_id(self._ptr, type_id)
        if not addr:
            raise ObjectError(f"read BTF of {self.origin}", f"no type id {type_id}")
        return _BtfType.from_address(addr), addr

    def _name(self, off: int) -> str:
        n = L.btf__name_by_offset(self._ptr, off)
        return n.decode() if n else ""

    @staticmethod
    def _kind(t: _BtfType) -> int:
        return (t.info >> 24) & 0x1F

    def _u32s(self, addr: int, count: int) -> list[int]:
        return list((c_uint32 * count).from_address(addr + ctypes.sizeof(_BtfType)))

    def find(self, name: str, kind: int) -> int:
        tid = L.btf__find_by_name_kind(self._ptr, name.encode(), kind)
        if tid < 0:
            raise ObjectError(f"read BTF of {self.origin}", f"no type {name!r}")
        return tid

    def resolve(self, type_id: int) -> int:
        """Skip typedef/const/volatile to the underlying type."""
        t, _ = self._type(type_id)
        while self._kind(t) in _MODIFIERS:
            type_id = t.size_or_type
            t, _ = self._type(type_id)
        return type_id

    # ---- ctypes generation -------------------------------------------------------------------------

    def struct(self, name: str) -> type:
        return self.ctype(self.find(name, KIND_STRUCT))

    def members(self, name: str) -> tuple[str, ...]:
        """Member names of struct `name`; () when the BTF has no such struct (a kernel that predates it)."""
        tid = L.btf__find_by_name_kind(self._ptr, name.encode(), KIND_STRUCT)
        if tid < 0:
            return ()
        t, addr = self._type(tid)
        vals = self._u32s(addr, 3 * (t.info & 0xFFFF))  # struct btf_member: name_off, type, offset
        return tuple(self._name(vals[i]) for i in range(0, len(vals), 3))

    def enum(self, name: str) -> dict[str, int]:
        return self._enumerators(self.find(name, KIND_ENUM))

    def enums(self) -> dict[str, dict[str, int]]:
        """Every named enum of this BTF: enum name -> {enumerator: value}."""
        out = {}
        for tid in range(1, L.btf__type_cnt(self._ptr)):
            t, _ = self._type(tid)
            if self._kind(t) == KIND_ENUM and t.name_off:
                out[self._name(t.name_off)] = self._enumerators(tid)
        return out

    def _enumerators(self, tid: int) -> dict[str, int]:
        t, addr = self._type(tid)
        vals = self._u32s(addr, 2 * (t.info & 0xFFFF))
        return {self._name(vals[i]): ctypes.c_int32(vals[i + 1]).value for i in range(0, len(vals), 2)}

    def ctype(self, type_id: int) -> Any:
        if type_id not in self._ctypes:
            self._ctypes[type_id] = self._build(type_id)
        return self._ctypes[type_id]

    def _build(self, type_id: int) -> Any:
        t, addr = self._type(type_id)
        kind = self._kind(t)
        if kind in _MODIFIERS:
            return self.ctype(t.size_or_type)
        if kind == KIND_INT:
            enc = self._u32s(addr, 1)[0]
            signed = bool((enc >> 24) & 1)
            return _INTS.get((t.size_or_type, signed), ctypes.c_uint8 * t.size_or_type)
        if kind in (KIND_ENUM, KIND_ENUM64):
            return _INTS[(t.size_or_type, False)]
        if kind == KIND_PTR:
            return ctypes.c_uint64
        if kind == KIND_ARRAY:
            elem, _index, n = self._u32s(addr, 3)
            return self.ctype(elem) * n
        if kind in (KIND_STRUCT, KIND_UNION):
            return self._record(type_id, t, addr, union=kind == KIND_UNION)
        raise ObjectError(f"read BTF of {self.origin}", f"type id {type_id} (kind {kind}) has no ctypes form")

    def _record(self, type_id: int, t: _BtfType, addr: int, *, union: bool) -> type:
        name = self._name(t.name_off) or f"anon_{type_id}"
        vlen, kind_flag, size = t.info & 0xFFFF, t.info >> 31, t.size_or_type
        raw = self._u32s(addr, 3 * vlen)
        fields: list[tuple] = []
        pos = 0
        for i in range(vlen):
            m_name, m_type, m_off = raw[3 * i: 3 * i + 3]
            if kind_flag and (m_off >> 24):
                raise ObjectError(f"read BTF of {self.origin}", f"{name}: bitfields are not part of the contract")
            byte_off = (m_off & 0xFFFFFF if kind_flag else m_off) // 8
            mtype = self.ctype(m_type)
            if not union and byte_off > pos:
                fields.append((f"_pad{pos}", ctypes.c_uint8 * (byte_off - pos)))
                pos = byte_off
            fields.append((self._name(m_name) or f"_anon{i}", mtype))
            pos = max(pos, byte_off + ctypes.sizeof(mtype)) if not union else max(pos, ctypes.sizeof(mtype))
        if pos < size:
            fields.append(("_tail", ctypes.c_uint8 * (size - pos)))
        base = ctypes.Union if union else ctypes.Structure
        cls = type(name, (base,), {"_pack_": 1, "_fields_": fields})
        if ctypes.sizeof(cls) != size:
            raise ObjectError(f"read BTF of {self.origin}", f"{name}: ctypes size {ctypes.sizeof(cls)} != {size}")
        return cls

    def datasec(self, section: str) -> dict[str, DatasecVar]:
        """Variables of a data section (e.g. '.rodata'): name -> offset, size, type."""
        try:
            tid = self.find(section, KIND_DATASEC)
        except ObjectError:
            return {}
        t, addr = self._type(tid)
        raw = self._u32s(addr, 3 * (t.info & 0xFFFF))
        out = {}
        for i in range(0, len(raw), 3):
            var_t, _ = self._type(raw[i])
            vname = self._name(var_t.name_off)
            out[vname] = DatasecVar(vname, raw[i + 1], raw[i + 2], var_t.size_or_type)
        return out


def asdict(value: Any) -> Any:
    """A ctypes value as plain Python (dicts, lists, ints), for JSON output and comparisons."""
    if isinstance(value, (ctypes.Structure, ctypes.Union)):
        return {n: asdict(getattr(value, n)) for n, *_ in value._fields_ if not n.startswith("_")}
    if isinstance(value, ctypes.Array):
        if value._type_ in (ctypes.c_char,):
            return bytes(value).rstrip(b"\0").decode(errors="replace")
        return [asdict(v) for v in value]
    return value


def coerce(ctype: Any, value: Any) -> Any:
    """Turn a Python value (int, tuple, dict, bytes, or an instance) into an instance of `ctype`."""
    if isinstance(value, ctype):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ctype.from_buffer_copy(value)
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        names = [n for n, *_ in ctype._fields_ if not n.startswith("_")]
        if isinstance(value, dict):
            unknown = set(value) - set(names)
            if unknown:
                raise ValueError(f"{ctype.__name__} has no field(s) {sorted(unknown)}")
            return ctype(**{k: _field(ctype, k, v) for k, v in value.items()})
        if isinstance(value, (tuple, list)):
            return ctype(**{k: _field(ctype, k, v) for k, v in zip(names, value)})
        if isinstance(value, int) and len(names) >= 1:
            return ctype(**{names[0]: value})
        raise ValueError(f"cannot make {ctype.__name__} from {type(value).__name__}")
    if issubclass(ctype, ctypes.Array):
        return ctype(*[coerce(ctype._type_, v) for v in value])
    return ctype(value)


def _field(ctype: Any, name: str, value: Any) -> Any:
    ftype = dict((n, t) for n, t, *_ in ctype._fields_)[name]
    if issubclass(ftype, (ctypes.Structure, ctypes.Union, ctypes.Array)):
        return coerce(ftype, value)
    return value


KERNEL_BTF = "/sys/kernel/btf/vmlinux"

# BPF helpers newer than Linux 5.10 that bpfgate's programs call only where the kernel has them (behind
# a CO-RE check on enum bpf_func_id): helper -> the first Linux with it, for the refusal's reason
NEWER_HELPERS = {"xdp_load_bytes": "5.18", "ktime_get_coarse_ns": "5.11"}


@lru_cache(maxsize=1)
def kernel_btf() -> Btf | None:
    """The running kernel's BTF, or None when the kernel has none."""
    if not os.path.exists(KERNEL_BTF):
        return None
    ptr = L.btf__parse(KERNEL_BTF.encode(), None)
    return Btf(ptr, owned=True, origin=KERNEL_BTF) if ptr else None


@lru_cache(maxsize=None)
def kernel_has_helper(name: str) -> bool:
    """Whether the running kernel has BPF helper bpf_`name`: its enum bpf_func_id lists every helper it
    has. Without kernel BTF there is no telling: True, and the program's load decides."""
    btf = kernel_btf()
    if btf is None:
        return True
    try:
        return f"BPF_FUNC_{name}" in btf.enum("bpf_func_id")
    except BpfgateError:
        return True


def require_helper(name: str, feature: str) -> None:
    """NotSupported naming `feature`, the helper and the version that has it, when the kernel lacks it."""
    if not kernel_has_helper(name):
        raise NotSupported(feature, f"the kernel has no BPF helper bpf_{name}", min_kernel=NEWER_HELPERS.get(name))
