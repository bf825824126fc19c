"""BPF objects and programs: open an object, set load-time constants, load, find programs and maps.

    with BpfObject.open("selftest", rodata={"cfg_mark": 7}) as obj:   # packaged object by name, or a path
        obj.load()                                                # VerifierError shows the log's tail
        prog = obj.program("bg_selftest_mark")
        hits = obj.map("test_hash")                               # typed mapping (maps.Map)
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpfgate.errors import BpfgateError, NotSupported, ObjectError, VerifierError, from_errno
from bpfgate.kernel import libbpf as L
from bpfgate.kernel.btf import Btf, coerce
from bpfgate.kernel.maps import Map
from bpfgate.kernel.pins import ensure_parent

OBJECTS_DIR = Path(__file__).resolve().parent.parent / "objects"

# enum bpf_prog_type values we name in output (uapi, stable)
PROG_TYPES = {
    0: "unspec", 1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act", 5: "tracepoint",
    6: "xdp", 7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock", 10: "lwt_in", 11: "lwt_out",
    12: "lwt_xmit", 13: "sock_ops", 14: "sk_skb", 15: "cgroup_device", 16: "sk_msg",
    17: "raw_tracepoint", 18: "cgroup_sock_addr", 19: "lwt_seg6local", 20: "lirc_mode2",
    21: "sk_reuseport", 22: "flow_dissector", 23: "cgroup_sysctl", 24: "raw_tracepoint_writable",
    25: "cgroup_sockopt", 26: "tracing", 27: "struct_ops", 28: "ext", 29: "lsm", 30: "sk_lookup",
    31: "syscall", 32: "netfilter",
}


def packaged_path(name: str) -> Path:
    """Path of a packaged object: 'engine' -> .../bpfgate/objects/engine.o."""
    return OBJECTS_DIR / f"{name}.o"


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    tag: str
    type: str
    run_cnt: int
    run_time_ns: int
    verified_insns: int
    map_ids: tuple[int, ...] = ()

    @property
    def avg_ns(self) -> float | None:
        return self.run_time_ns / self.run_cnt if self.run_cnt else None


def prog_info(fd: int) -> ProgInfo:
    info = L.ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise from_errno("read program info", L.libc_errno())
    map_ids: tuple[int, ...] = ()
    if info.nr_map_ids:
        ids = (ctypes.c_uint32 * info.nr_map_ids)()
        again = L.ProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ctypes.addressof(ids))
        size = ctypes.c_uint32(ctypes.sizeof(again))
        if L.bpf_obj_get_info_by_fd(fd, ctypes.byref(again), ctypes.byref(size)) == 0:
            map_ids = tuple(ids)
    return ProgInfo(
        id=info.id,
        name=info.name.decode(errors="replace"),
        tag=bytes(info.tag).hex(),
        type=PROG_TYPES.get(info.type, str(info.type)),
        run_cnt=info.run_cnt,
        run_time_ns=info.run_time_ns,
        verified_insns=info.verified_insns,
        map_ids=map_ids,
    )


class Program:
    """A loaded program (owned by an object, or opened by id/pin: then we own the fd)."""

    def __init__(self, fd: int, name: str, *, owned_fd: bool = False, section: str = ""):
        self._fd = fd
        self.name = name
        self.section = section
        self._owned = owned_fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ObjectError(f"use program {self.name}", "not loaded (or closed)")
        return self._fd

    def info(self) -> ProgInfo:
        return prog_info(self.fd)

    @property
    def id(self) -> int:
        return self.info().id

    def pin(self, path: str) -> None:
        ensure_parent(path)
        if L.bpf_obj_pin(self.fd, path.encode()) != 0:
            raise from_errno(f"pin program {self.name} at {path}", L.libc_errno())

    @classmethod
    def from_pin(cls, path: str) -> "Program":
        fd = L.bpf_obj_get(path.encode())
        if fd < 0:
            raise from_errno(f"open pinned program {path}", L.libc_errno())
        return cls(fd, prog_info(fd).name, owned_fd=True)

    @classmethod
    def from_id(cls, prog_id: int) -> "Program":
        fd = L.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            raise from_errno(f"open program id {prog_id}", L.libc_errno())
        return cls(fd, prog_info(fd).name, owned_fd=True)

    def close(self) -> None:
        if self._owned and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __repr__(self) -> str:
        return f"Program({self.name!r}, fd={self._fd})"


class LoadFailedQuietly(ObjectError):
    """A quiet load (BpfObject.load(quiet=True)) failed: its cause was not logged."""


class BpfObject:
    """One BPF ELF object. Open, optionally set rodata constants / map sizes, then load."""

    def __init__(self, ptr: int, path: str):
        self._ptr = ptr
        self.path = path
        self.loaded = False
        self._maps: dict[str, Map] = {}
        self._btf: Btf | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, name_or_path: str | os.PathLike, rodata: dict[str, Any] | None = None) -> "BpfObject":
        path = str(name_or_path)
        if os.sep not in path and not path.endswith(".o"):
            path = str(packaged_path(path))
        op = f"open BPF object {path}"
        if not os.path.exists(path):
            raise ObjectError(op, "no such file", hint="build the objects with `make -C bpf`")
        with L.captured_log() as log:
            ptr = L.bpf_object__open_file(path.encode(), None)
        if not ptr:
            err = L.libc_errno()
            detail = _last_line(log) or (os.strerror(err) if err else "unknown error")
            raise ObjectError(op, f"not a valid BPF object: {detail}")
        obj = cls(ptr, path)
        if rodata:
            obj.set_rodata(rodata)
        return obj

    def set_rodata(self, values: dict[str, Any]) -> None:
        """Set `const volatile` globals before load (they become constants the verifier can prune on)."""
        if self.loaded:
            raise BpfgateError(f"set constants of {self.path}", "object already loaded")
        secs = self.btf.datasec(".rodata")
        rodata = self._internal_map(".rodata")
        size = ctypes.c_size_t()
        base = L.bpf_map__initial_value(rodata, ctypes.byref(size)) if rodata else None
        for name, value in values.items():
            var = secs.get(name)
            if var is None or not base:
                raise ObjectError(f"set constant {name} in {self.path}", "no such const volatile variable")
            ctype = self.btf.ctype(var.type_id)
            blob = bytes(coerce(ctype, value))
            ctypes.memmove(base + var.offset, blob, len(blob))

    def _internal_map(self, section: str) -> int | None:
        m = None
        while True:
            m = L.bpf_object__next_map(self._ptr, m)
            if not m:
                return None
            if L.bpf_map__name(m).decode().endswith(section):
                return m

    def set_max_entries(self, map_name: str, n: int) -> None:
        m = L.bpf_object__find_map_by_name(self._ptr, map_name.encode())
        if not m:
            raise ObjectError(f"resize map {map_name}", f"no such map in {self.path}")
        if L.bpf_map__set_max_entries(m, n) != 0:
            raise from_errno(f"resize map {map_name}", L.libc_errno())

    def set_autoload(self, prog_name: str, on: bool) -> None:
        L.bpf_program__set_autoload(self._prog_ptr(prog_name), on)

    def set_autocreate(self, map_name: str, on: bool) -> None:
        """Skip creating a map at load (a map type the kernel lacks, or one a program will not use)."""
        m = L.bpf_object__find_map_by_name(self._ptr, map_name.encode())
        if not m or L.bpf_map__set_autocreate(m, on) != 0:
            raise ObjectError(f"set autocreate of map {map_name}", f"no such map in {self.path}")

    def reuse_map(self, map_name: str, fd: int) -> None:
        """Share an existing map (e.g. a pinned one) instead of creating a new one at load."""
        m = L.bpf_object__find_map_by_name(self._ptr, map_name.encode())
        if not m or L.bpf_map__reuse_fd(m, fd) != 0:
            raise ObjectError(f"reuse map {map_name} in {self.path}", "no such map or incompatible")

    def load(self, quiet: bool = False) -> "BpfObject":
        """Load (verify) the programs and create the maps. `quiet`: without libbpf's log (L.silenced), for a
        load beside other Python work; a failure then raises LoadFailedQuietly: load again, not quiet, to
        have it explained."""
        op = f"load BPF object {os.path.basename(self.path)}"
        if quiet:
            with L.silenced():
                rc = L.bpf_object__load(self._ptr)
            if rc != 0:
                raise LoadFailedQuietly(op, os.strerror(-rc))
            self.loaded = True
            return self
        with L.captured_log() as log:
            rc = L.bpf_object__load(self._ptr)
        if rc != 0:
            err = -rc
            text = "".join(log)
            vlog = _verifier_log(text)
            if vlog:
                prog = _failed_prog(text)
                _raise_if_too_old(op, vlog, prog)
                raise VerifierError(op, _verifier_summary(vlog), vlog, prog=prog)
            if err in (errno.EPERM, errno.EACCES):
                raise from_errno(op, err)
            raise ObjectError(op, _last_line(log) or os.strerror(err))
        self.loaded = True
        return self

    def close(self) -> None:
        if self._ptr:
            L.bpf_object__close(self._ptr)
            self._ptr = 0
            self.loaded = False

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---- contents ----------------------------------------------------------------------------------

    @property
    def btf(self) -> Btf:
        if self._btf is None:
            self._btf = Btf(L.bpf_object__btf(self._ptr), owned=False, origin=self.path)
        return self._btf

    def _prog_ptr(self, name: str) -> int:
        p = L.bpf_object__find_program_by_name(self._ptr, name.encode())
        if not p:
            raise ObjectError(f"find program {name}", f"not in {self.path} (has: {', '.join(self.program_names())})")
        return p

    def program_names(self) -> list[str]:
        names, p = [], None
        while True:
            p = L.bpf_object__next_program(self._ptr, p)
            if not p:
                return names
            names.append(L.bpf_program__name(p).decode())

    def loaded_programs(self) -> list[str]:
        """The programs the kernel accepted at load (those whose autoload was off have no fd)."""
        return [n for n in self.program_names() if L.bpf_program__fd(self._prog_ptr(n)) >= 0]

    def program(self, name: str) -> Program:
        p = self._prog_ptr(name)
        return Program(L.bpf_program__fd(p), name, section=L.bpf_program__section_name(p).decode())

    def program_ptr(self, name: str) -> int:
        """libbpf's struct bpf_program* (for libbpf attach helpers)."""
        return self._prog_ptr(name)

    def map(self, name: str) -> Map:
        if name not in self._maps:
            m = L.bpf_object__find_map_by_name(self._ptr, name.encode())
            if not m:
                raise ObjectError(f"find map {name}", f"not in {self.path}")
            if not self.loaded:
                raise ObjectError(f"use map {name}", "object not loaded yet")
            key_t = _btf_type(self.btf, L.bpf_map__btf_key_type_id(m), L.bpf_map__key_size(m))
            val_t = _btf_type(self.btf, L.bpf_map__btf_value_type_id(m), L.bpf_map__value_size(m))
            self._maps[name] = Map(L.bpf_map__fd(m), name=name, key_type=key_t, value_type=val_t,
                                   map_type=L.bpf_map__type(m), max_entries=L.bpf_map__max_entries(m))
        return self._maps[name]


def _btf_type(btf: Btf, type_id: int, size: int) -> Any:
    """ctypes type for a map key/value: from BTF when the map declares it, else raw bytes. A map this object
    reuses (reuse_map) reports the type ids of the object that made it, which name other types here (or
    none): a type that is not of the map's size, or has no ctypes form, is read as raw bytes (the caller
    that reuses a map types it itself)."""
    raw = {4: ctypes.c_uint32, 8: ctypes.c_uint64}.get(size, ctypes.c_uint8 * size)
    if not type_id:
        return raw
    try:
        ctype = btf.ctype(type_id)
    except ObjectError:
        return raw
    return ctype if ctypes.sizeof(ctype) == size else raw


_BEGIN, _END = "-- BEGIN PROG LOAD LOG --", "-- END PROG LOAD LOG --"


def _verifier_log(text: str) -> str:
    if _BEGIN not in text:
        return ""
    return text.split(_BEGIN, 1)[1].split(_END, 1)[0].strip("\n")


def _verifier_summary(vlog: str, tail: int = 12) -> str:
    """The useful part of a verifier log: the last instructions before the error and the error line.
    Left out: statistics, and 6.1's "reg type unsupported for arg#0" (printed for every tracing
    program, harmless, and misleading as the first line of a short log)."""
    lines = [ln for ln in vlog.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not re.match(r"^(processed|verification time|stack depth|reg type unsupported "
                                                r"for arg#)", ln)]
    return "\n".join(lines[-tail:])


# Verifier errors that mean the kernel predates an instruction or helper a program uses (BPF helpers that
# bpfgate's programs call only where the kernel has them are in bpfgate.kernel.btf.NEWER_HELPERS).
_ATOMIC_FETCH = re.compile(r"BPF_(STX|XADD) uses reserved fields")
_UNKNOWN_HELPER = re.compile(r"invalid func unknown#(\d+)")


def _raise_if_too_old(op: str, vlog: str, prog: str | None) -> None:
    """NotSupported naming the missing instruction or helper, instead of the verifier's log."""
    who = f"program {prog!r}" if prog else "a program"
    if _ATOMIC_FETCH.search(vlog):
        raise NotSupported(op, f"{who} uses BPF atomic instructions that fetch the old value (atomic_fetch_add, "
                               "atomic_fetch_or), which this kernel lacks", min_kernel="5.12")
    m = _UNKNOWN_HELPER.search(vlog)
    if m:
        raise NotSupported(op, f"{who} calls BPF helper #{m.group(1)}, which this kernel lacks",
                           hint="a newer kernel has it")


def _failed_prog(text: str) -> str | None:
    """The program libbpf says failed ("prog 'X': BPF program load failed")."""
    m = re.search(r"prog '([^']+)': (?:BPF program load failed|failed to load)", text)
    return m.group(1) if m else None


def _last_line(log: list[str]) -> str:
    for chunk in reversed(log):
        for line in reversed(chunk.strip().splitlines()):
            if line.strip():
                return line.strip().removeprefix("libbpf: ")
    return ""
