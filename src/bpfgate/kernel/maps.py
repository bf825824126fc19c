"""BPF maps as typed Python mappings.

Keys and values are ctypes types derived from BTF (kernel.btf); plain ints, tuples, dicts and bytes are
accepted and converted. Per-CPU maps read as a list (one value per possible CPU); `summed()` adds them.
Batch operations move many entries per syscall (the fast path for policy updates and flow dumps).
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, Iterable, Iterator

from bpfgate.errors import BpfgateError, from_errno
from bpfgate.kernel import libbpf as L
from bpfgate.kernel.btf import coerce

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

# enum bpf_map_type values (uapi)
HASH, ARRAY, PROG_ARRAY, PERF_EVENT_ARRAY, PERCPU_HASH, PERCPU_ARRAY = 1, 2, 3, 4, 5, 6
LRU_HASH, LRU_PERCPU_HASH, LPM_TRIE, RINGBUF = 9, 10, 11, 27
# the kernel's own "not supported" (not in userspace errno): a batch op on a map type that has none, e.g.
# per-CPU arrays before Linux 5.13 (the engine's counters on Debian 11's 5.10) and LPM tries
ENOTSUPP = 524
PERCPU_TYPES = {PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, 21}  # 21: percpu cgroup storage
ARRAY_TYPES = {ARRAY, PERCPU_ARRAY, PROG_ARRAY, PERF_EVENT_ARRAY}

_lib_ncpus = L._fn("libbpf_num_possible_cpus", ctypes.c_int)


def possible_cpus() -> int:
    n = _lib_ncpus()
    if n <= 0:
        raise BpfgateError("count possible CPUs", os.strerror(-n))
    return n


class Map:
    """A BPF map by fd, with key/value ctypes types. Owns the fd only when opened by pin/id."""

    def __init__(self, fd: int, *, name: str, key_type: Any, value_type: Any, map_type: int,
                 max_entries: int, owned_fd: bool = False):
        self.fd = fd
        self.name = name
        self.key_type = key_type
        self.value_type = value_type
        self.map_type = map_type
        self.max_entries = max_entries
        self.percpu = map_type in PERCPU_TYPES
        self._owned = owned_fd
        self._ncpus = possible_cpus() if self.percpu else 1
        vsize = ctypes.sizeof(value_type)
        self._slot = (vsize + 7) & ~7 if self.percpu else vsize  # per-CPU values are 8-byte aligned
        self._vbuf_size = self._slot * self._ncpus

    # ---- opening by pin / id -----------------------------------------------------------------------

    @classmethod
    def from_fd(cls, fd: int, key_type: Any = None, value_type: Any = None, *, owned: bool = True) -> "Map":
        info = map_info(fd)
        key_type = key_type or _raw(info.key_size)
        value_type = value_type or _raw(info.value_size)
        return cls(fd, name=info.name.decode(errors="replace"), key_type=key_type, value_type=value_type,
                   map_type=info.type, max_entries=info.max_entries, owned_fd=owned)

    @classmethod
    def from_pin(cls, path: str, key_type: Any = None, value_type: Any = None) -> "Map":
        fd = L.bpf_obj_get(path.encode())
        if fd < 0:
            raise from_errno(f"open pinned map {path}", L.libc_errno())
        return cls.from_fd(fd, key_type, value_type)

    @classmethod
    def from_id(cls, map_id: int, key_type: Any = None, value_type: Any = None) -> "Map":
        fd = L.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            raise from_errno(f"open map id {map_id}", L.libc_errno())
        return cls.from_fd(fd, key_type, value_type)

    def pin(self, path: str) -> None:
        from bpfgate.kernel.pins import ensure_parent

        ensure_parent(path)
        if L.bpf_obj_pin(self.fd, path.encode()) != 0:
            raise from_errno(f"pin map {self.name} at {path}", L.libc_errno())

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def info(self) -> L.MapInfo:
        return map_info(self.fd)

    # ---- conversion --------------------------------------------------------------------------------

    def key(self, key: Any) -> Any:
        try:
            return coerce(self.key_type, key)
        except (TypeError, ValueError) as e:
            raise BpfgateError(f"map {self.name}", f"bad key {key!r}: {e}") from None

    def _value_buf(self, value: Any) -> ctypes.Array:
        buf = (ctypes.c_uint8 * self._vbuf_size)()
        if self.percpu and isinstance(value, (list, tuple)) and len(value) == self._ncpus \
                and not isinstance(value, self.value_type):
            values = value
        else:
            values = [value] * self._ncpus
        for cpu, v in enumerate(values):
            try:
                blob = bytes(coerce(self.value_type, v))
            except (TypeError, ValueError) as e:
                raise BpfgateError(f"map {self.name}", f"bad value {v!r}: {e}") from None
            ctypes.memmove(ctypes.addressof(buf) + cpu * self._slot, blob, len(blob))
        return buf

    def _decode(self, buf: Any, offset: int = 0) -> Any:
        base = ctypes.addressof(buf) + offset
        vt, size = self.value_type, ctypes.sizeof(self.value_type)
        vals = [vt.from_buffer_copy((ctypes.c_uint8 * size).from_address(base + cpu * self._slot))
                for cpu in range(self._ncpus)]
        if _is_int(vt):
            vals = [v.value for v in vals]
        return vals if self.percpu else vals[0]

    # ---- single-entry operations -------------------------------------------------------------------

    def lookup(self, key: Any) -> Any | None:
        k = self.key(key)
        buf = (ctypes.c_uint8 * self._vbuf_size)()
        if L.bpf_map_lookup_elem(self.fd, ctypes.byref(k), buf) != 0:
            err = L.libc_errno()
            if err == errno.ENOENT:
                return None
            raise from_errno(f"look up {key!r} in map {self.name}", err)
        return self._decode(buf)

    def __getitem__(self, key: Any) -> Any:
        v = self.lookup(key)
        if v is None:
            raise KeyError(key)
        return v

    def get(self, key: Any, default: Any = None) -> Any:
        v = self.lookup(key)
        return default if v is None else v

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        k = self.key(key)
        if L.bpf_map_update_elem(self.fd, ctypes.byref(k), self._value_buf(value), flags) != 0:
            raise from_errno(f"update {key!r} in map {self.name}", L.libc_errno())

    __setitem__ = update

    def delete(self, key: Any) -> bool:
        k = self.key(key)
        if L.bpf_map_delete_elem(self.fd, ctypes.byref(k)) != 0:
            err = L.libc_errno()
            if err == errno.ENOENT:
                return False
            raise from_errno(f"delete {key!r} from map {self.name}", err)
        return True

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        return self.lookup(key) is not None

    def summed(self, key: Any) -> Any:
        """A per-CPU value summed over CPUs (field by field for structs)."""
        v = self.lookup(key)
        if v is None:
            raise KeyError(key)
        return sum_values(v) if self.percpu else v

    # ---- iteration ---------------------------------------------------------------------------------

    def keys(self) -> Iterator[Any]:
        if self.map_type in ARRAY_TYPES:
            yield from (self.key_type(i) if not _is_int(self.key_type) else i for i in range(self.max_entries))
            return
        cur = None
        nxt = self.key_type()
        while True:
            rc = L.bpf_map_get_next_key(self.fd, ctypes.byref(cur) if cur is not None else None, ctypes.byref(nxt))
            if rc != 0:
                err = L.libc_errno()
                if err == errno.ENOENT:
                    return
                raise from_errno(f"iterate map {self.name}", err)
            cur = self.key_type.from_buffer_copy(nxt)
            yield cur.value if _is_int(self.key_type) else cur

    __iter__ = keys

    def items(self) -> Iterator[tuple[Any, Any]]:
        try:
            yield from self.lookup_batch()
            return
        except BpfgateError:
            pass  # batch ops unsupported for this map type: fall back to key walk
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def values(self) -> Iterator[Any]:
        for _, v in self.items():
            yield v

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    # ---- batch operations --------------------------------------------------------------------------

    def update_batch(self, keys: Iterable[Any], values: Iterable[Any], flags: int = BPF_ANY) -> int:
        """Insert/replace many entries in as few syscalls as possible; returns the count written."""
        keys, values = list(keys), list(values)
        if len(keys) != len(values):
            raise BpfgateError(f"batch update map {self.name}", "keys and values differ in length")
        n = len(keys)
        if n == 0:
            return 0
        ksz = ctypes.sizeof(self.key_type)
        kbuf = (ctypes.c_uint8 * (ksz * n))()
        vbuf = (ctypes.c_uint8 * (self._vbuf_size * n))()
        for i, (k, v) in enumerate(zip(keys, values)):
            ctypes.memmove(ctypes.addressof(kbuf) + i * ksz, ctypes.byref(self.key(k)), ksz)
            ctypes.memmove(ctypes.addressof(vbuf) + i * self._vbuf_size, self._value_buf(v), self._vbuf_size)
        return self.update_batch_raw(bytes(kbuf), bytes(vbuf), n, flags)

    def update_batch_raw(self, keys: bytes, values: bytes, count: int, flags: int = BPF_ANY) -> int:
        """Batch update from packed key and value bytes (per-CPU maps: every CPU's slot given)."""
        op = f"batch update map {self.name}"
        if len(keys) != count * ctypes.sizeof(self.key_type) or len(values) != count * self._vbuf_size:
            raise BpfgateError(op, "packed keys/values do not match the map's sizes")
        kb = ctypes.create_string_buffer(keys, len(keys))
        vb = ctypes.create_string_buffer(values, len(values))
        opts = L.MapBatchOpts(sz=ctypes.sizeof(L.MapBatchOpts), elem_flags=flags)
        cnt = ctypes.c_uint32(count)
        if L.bpf_map_update_batch(self.fd, kb, vb, ctypes.byref(cnt), ctypes.byref(opts)) != 0:
            err = L.libc_errno()
            if err in (ENOTSUPP, errno.EOPNOTSUPP):   # no batch op for this map type here: one write each
                return self._update_each_raw(keys, values, count, flags)
            raise from_errno(op, err, hint=f"{cnt.value} of {count} written")
        return cnt.value

    def _update_each_raw(self, keys: bytes, values: bytes, count: int, flags: int) -> int:
        ksz, vsz = ctypes.sizeof(self.key_type), self._vbuf_size
        for i in range(count):
            k = ctypes.create_string_buffer(keys[i * ksz:(i + 1) * ksz], ksz)
            v = ctypes.create_string_buffer(values[i * vsz:(i + 1) * vsz], vsz)
            if L.bpf_map_update_elem(self.fd, k, v, flags) != 0:
                raise from_errno(f"update map {self.name}", L.libc_errno(), hint=f"{i} of {count} written")
        return count

    def delete_batch(self, keys: Iterable[Any]) -> int:
        keys = list(keys)
        if not keys:
            return 0
        ksz = ctypes.sizeof(self.key_type)
        kbuf = (ctypes.c_uint8 * (ksz * len(keys)))()
        for i, k in enumerate(keys):
            ctypes.memmove(ctypes.addressof(kbuf) + i * ksz, ctypes.byref(self.key(k)), ksz)
        opts = L.MapBatchOpts(sz=ctypes.sizeof(L.MapBatchOpts))
        cnt = ctypes.c_uint32(len(keys))
        if L.bpf_map_delete_batch(self.fd, kbuf, ctypes.byref(cnt), ctypes.byref(opts)) != 0:
            raise from_errno(f"batch delete from map {self.name}", L.libc_errno())
        return cnt.value

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[Any, Any]]:
        """All entries, `chunk` per syscall (one lookup per entry where the kernel has no batch op for the map)."""
        for kraw, vraw, n in self.lookup_batch_raw(chunk):
            # decode a whole chunk per copy (ctypes arrays): ~10x faster than entry by entry
            keys = (self.key_type * n).from_buffer_copy(kraw)
            if self.percpu:
                vbuf = (ctypes.c_uint8 * len(vraw)).from_buffer_copy(vraw)   # _decode reads a ctypes buffer
                yield from zip(keys, (self._decode(vbuf, i * self._vbuf_size) for i in range(n)))
            else:
                yield from zip(keys, (self.value_type * n).from_buffer_copy(vraw))

    def lookup_batch_raw(self, chunk: int = 4096) -> Iterator[tuple[bytes, bytes, int]]:
        """All entries as packed chunks: (keys, values, count); per-CPU values hold every CPU's slot
        (`slot_size` bytes each). Arrays come in index order. Where this kernel has no batch lookup for the
        map's type, the same chunks come from one lookup per entry."""
        ksz = ctypes.sizeof(self.key_type)
        kbuf = (ctypes.c_uint8 * (ksz * chunk))()
        vbuf = (ctypes.c_uint8 * (self._vbuf_size * chunk))()
        token_sz = max(ksz, 4)  # hash maps use a key-sized cursor, arrays a u32 index
        in_tok = (ctypes.c_uint8 * token_sz)()
        out_tok = (ctypes.c_uint8 * token_sz)()
        opts = L.MapBatchOpts(sz=ctypes.sizeof(L.MapBatchOpts))
        first = True
        while True:
            cnt = ctypes.c_uint32(chunk)
            rc = L.bpf_map_lookup_batch(self.fd, None if first else in_tok, out_tok, kbuf, vbuf,
                                        ctypes.byref(cnt), ctypes.byref(opts))
            err = L.libc_errno() if rc != 0 else 0
            if first and err in (ENOTSUPP, errno.EOPNOTSUPP):
                yield from self._lookup_each_raw(chunk)
                return
            if rc != 0 and err != errno.ENOENT:
                raise from_errno(f"batch look up map {self.name}", err)
            n = cnt.value
            if n:
                yield ctypes.string_at(kbuf, n * ksz), ctypes.string_at(vbuf, n * self._vbuf_size), n
            if rc != 0:  # ENOENT: that was the last chunk
                return
            ctypes.memmove(in_tok, out_tok, token_sz)
            first = False

    def _lookup_each_raw(self, chunk: int) -> Iterator[tuple[bytes, bytes, int]]:
        """lookup_batch_raw's chunks, read one entry at a time (keys walked, or an array's indices)."""
        buf = (ctypes.c_uint8 * self._vbuf_size)()
        keys, vals, n = bytearray(), bytearray(), 0
        for key in self.keys():
            k = self.key(key)
            if L.bpf_map_lookup_elem(self.fd, ctypes.byref(k), buf) != 0:
                err = L.libc_errno()
                if err == errno.ENOENT:
                    continue  # deleted since the walk saw it
                raise from_errno(f"look up {key!r} in map {self.name}", err)
            keys += bytes(k)
            vals += bytes(buf)
            n += 1
            if n == chunk:
                yield bytes(keys), bytes(vals), n
                keys, vals, n = bytearray(), bytearray(), 0
        if n:
            yield bytes(keys), bytes(vals), n

    @property
    def slot_size(self) -> int:
        """Bytes of one CPU's value in a per-CPU value buffer (the value size rounded up to 8)."""
        return self._slot

    def clear(self) -> int:
        keys = list(self.keys())
        n = 0
        for k in keys:
            n += self.delete(k)
        return n


def map_info(fd: int) -> L.MapInfo:
    info = L.MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    if L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) != 0:
        raise from_errno("read map info", L.libc_errno())
    return info


def sum_values(values: list[Any]) -> Any:
    """Sum per-CPU values: ints add; structs add field by field (nested arrays element-wise)."""
    first = values[0]
    if isinstance(first, (int, float)):
        return sum(values)
    if hasattr(first, "value") and not isinstance(first, ctypes.Structure):
        return sum(v.value for v in values)
    out = type(first)()
    for name, ftype, *_ in first._fields_:
        if name.startswith("_"):
            continue
        if issubclass(ftype, (ctypes.Structure, ctypes.Array)):
            continue  # counters are flat u64s by contract; nested fields are not summed
        setattr(out, name, sum(getattr(v, name) for v in values))
    return out


def _raw(size: int) -> Any:
    return {4: ctypes.c_uint32, 8: ctypes.c_uint64}.get(size, ctypes.c_uint8 * size)


def _is_int(ctype: Any) -> bool:
    return issubclass(ctype, ctypes._SimpleCData)
