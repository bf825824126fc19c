"""Thin ctypes binding over the system libbpf.so.1 (>= 1.0 semantics: errors are negative returns/errno).

Only declarations live here; the Pythonic wrappers are in objects.py, maps.py, ringbuf.py, links.py.
libbpf's own log output is captured (see `captured_log`) so a verifier rejection can be shown to the user
as a typed error instead of being sprayed on stderr.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from contextlib import contextmanager
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_long, c_size_t, c_uint8,
                    c_uint32, c_uint64, c_void_p)
from typing import Iterator

from bpfgate.errors import NotSupported

# ---- loading ---------------------------------------------------------------------------------------


def _load() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise NotSupported("libbpf", "libbpf.so.1 not found", hint="apt-get install libbpf1")


lib = _load()
_libc = ctypes.CDLL(None, use_errno=True)


def _fn(name: str, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


def has(name: str) -> bool:
    """Whether this libbpf exports `name` (older libbpf lacks some entry points)."""
    return hasattr(lib, name)


# ---- opts structs (layouts of libbpf 1.1's headers) -------------------------------------------------


class TestRunOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class MapBatchOpts(Structure):
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class TcHook(Structure):
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_uint32)]


class TcOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
    ]


class XdpAttachOpts(Structure):
    _fields_ = [("sz", c_size_t), ("old_prog_fd", c_int)]


class XdpQueryOpts(Structure):
    _fields_ = [
        ("sz", c_size_t),
        ("prog_id", c_uint32),
        ("drv_prog_id", c_uint32),
        ("hw_prog_id", c_uint32),
        ("skb_prog_id", c_uint32),
        ("attach_mode", c_uint8),
    ]


class ProgInfo(Structure):
    """struct bpf_prog_info (uapi, append-only)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", c_uint32),
        ("gpl_compatible", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("nr_jited_ksyms", c_uint32),
        ("nr_jited_func_lens", c_uint32),
        ("jited_ksyms", c_uint64),
        ("jited_func_lens", c_uint64),
        ("btf_id", c_uint32),
        ("func_info_rec_size", c_uint32),
        ("func_info", c_uint64),
        ("nr_func_info", c_uint32),
        ("nr_line_info", c_uint32),
        ("line_info", c_uint64),
        ("jited_line_info", c_uint64),
        ("nr_jited_line_info", c_uint32),
        ("line_info_rec_size", c_uint32),
        ("jited_line_info_rec_size", c_uint32),
        ("nr_prog_tags", c_uint32),
        ("prog_tags", c_uint64),
        ("run_time_ns", c_uint64),
        ("run_cnt", c_uint64),
        ("recursion_misses", c_uint64),
        ("verified_insns", c_uint32),
        ("attach_btf_obj_id", c_uint32),
        ("attach_btf_id", c_uint32),
        ("_pad", c_uint32),
    ]


class MapInfo(Structure):
    """struct bpf_map_info (uapi, append-only)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", ctypes.c_char * 16),
        ("ifindex", c_uint32),
        ("btf_vmlinux_value_type_id", c_uint32),
        ("netns_dev", c_uint64),
        ("netns_ino", c_uint64),
        ("btf_id", c_uint32),
        ("btf_key_type_id", c_uint32),
        ("btf_value_type_id", c_uint32),
        ("_pad", c_uint32),
        ("map_extra", c_uint64),
    ]


class LinkInfo(Structure):
    """Head of struct bpf_link_info plus room for the per-type union (decoded where needed)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("prog_id", c_uint32),
        ("_pad", c_uint32),
        ("union", c_uint8 * 64),
    ]


# ---- callbacks -------------------------------------------------------------------------------------

PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
RINGBUF_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
PERF_SAMPLE_FN = CFUNCTYPE(None, c_void_p, c_int, c_void_p, c_uint32)
PERF_LOST_FN = CFUNCTYPE(None, c_void_p, c_int, c_uint64)

# ---- functions -------------------------------------------------------------------------------------

libbpf_major_version = _fn("libbpf_major_version", c_uint32)
libbpf_minor_version = _fn("libbpf_minor_version", c_uint32)
libbpf_set_print = _fn("libbpf_set_print", c_void_p, PRINT_FN)
libbpf_probe_bpf_prog_type = _fn("libbpf_probe_bpf_prog_type", c_int, c_int, c_void_p)
libbpf_probe_bpf_map_type = _fn("libbpf_probe_bpf_map_type", c_int, c_int, c_void_p)
libbpf_probe_bpf_helper = _fn("libbpf_probe_bpf_helper", c_int, c_int, c_int, c_void_p)

bpf_object__open_file = _fn("bpf_object__open_file", c_void_p, c_char_p, c_void_p)
bpf_object__load = _fn("bpf_object__load", c_int, c_void_p)
bpf_object__close = _fn("bpf_object__close", None, c_void_p)
bpf_object__name = _fn("bpf_object__name", c_char_p, c_void_p)
bpf_object__btf = _fn("bpf_object__btf", c_void_p, c_void_p)
bpf_object__find_program_by_name = _fn("bpf_object__find_program_by_name", c_void_p, c_void_p, c_char_p)
bpf_object__find_map_by_name = _fn("bpf_object__find_map_by_name", c_void_p, c_void_p, c_char_p)
bpf_object__next_program = _fn("bpf_object__next_program", c_void_p, c_void_p, c_void_p)
bpf_object__next_map = _fn("bpf_object__next_map", c_void_p, c_void_p, c_void_p)

bpf_program__fd = _fn("bpf_program__fd", c_int, c_void_p)
bpf_program__name = _fn("bpf_program__name", c_char_p, c_void_p)
bpf_program__section_name = _fn("bpf_program__section_name", c_char_p, c_void_p)
bpf_program__type = _fn("bpf_program__type", c_int, c_void_p)
bpf_program__set_type = _fn("bpf_program__set_type", c_int, c_void_p, c_int)
bpf_program__set_autoload = _fn("bpf_program__set_autoload", c_int, c_void_p, ctypes.c_bool)
bpf_program__autoload = _fn("bpf_program__autoload", ctypes.c_bool, c_void_p)
bpf_program__set_log_level = _fn("bpf_program__set_log_level", c_int, c_void_p, c_uint32)
bpf_program__attach = _fn("bpf_program__attach", c_void_p, c_void_p)
bpf_program__attach_cgroup = _fn("bpf_program__attach_cgroup", c_void_p, c_void_p, c_int)
bpf_program__attach_tracepoint = _fn("bpf_program__attach_tracepoint", c_void_p, c_void_p, c_char_p, c_char_p)
bpf_program__attach_raw_tracepoint = _fn("bpf_program__attach_raw_tracepoint", c_void_p, c_void_p, c_char_p)
bpf_program__attach_sockmap = (
    _fn("bpf_program__attach_sockmap", c_void_p, c_void_p, c_int) if has("bpf_program__attach_sockmap") else None
)

bpf_link__fd = _fn("bpf_link__fd", c_int, c_void_p)
bpf_link__pin = _fn("bpf_link__pin", c_int, c_void_p, c_char_p)
bpf_link__destroy = _fn("bpf_link__destroy", c_int, c_void_p)
bpf_link__disconnect = _fn("bpf_link__disconnect", None, c_void_p)

bpf_map__fd = _fn("bpf_map__fd", c_int, c_void_p)
bpf_map__name = _fn("bpf_map__name", c_char_p, c_void_p)
bpf_map__type = _fn("bpf_map__type", c_int, c_void_p)
bpf_map__key_size = _fn("bpf_map__key_size", c_uint32, c_void_p)
bpf_map__value_size = _fn("bpf_map__value_size", c_uint32, c_void_p)
bpf_map__max_entries = _fn("bpf_map__max_entries", c_uint32, c_void_p)
bpf_map__set_max_entries = _fn("bpf_map__set_max_entries", c_int, c_void_p, c_uint32)
bpf_map__initial_value = _fn("bpf_map__initial_value", c_void_p, c_void_p, POINTER(c_size_t))
bpf_map__btf_key_type_id = _fn("bpf_map__btf_key_type_id", c_uint32, c_void_p)
bpf_map__btf_value_type_id = _fn("bpf_map__btf_value_type_id", c_uint32, c_void_p)
bpf_map__set_autocreate = _fn("bpf_map__set_autocreate", c_int, c_void_p, ctypes.c_bool)
bpf_map__reuse_fd = _fn("bpf_map__reuse_fd", c_int, c_void_p, c_int)
bpf_map__set_pin_path = _fn("bpf_map__set_pin_path", c_int, c_void_p, c_char_p)

btf__parse_elf = _fn("btf__parse_elf", c_void_p, c_char_p, c_void_p)
btf__parse = _fn("btf__parse", c_void_p, c_char_p, c_void_p)
btf__free = _fn("btf__free", None, c_void_p)
btf__type_cnt = _fn("btf__type_cnt", c_uint32, c_void_p)
btf__type_by_id = _fn("btf__type_by_id", c_void_p, c_void_p, c_uint32)
btf__name_by_offset = _fn("btf__name_by_offset", c_char_p, c_void_p, c_uint32)
btf__find_by_name_kind = _fn("btf__find_by_name_kind", c_int, c_void_p, c_char_p, c_uint32)

bpf_map_update_elem = _fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
bpf_map_lookup_elem_flags = _fn("bpf_map_lookup_elem_flags", c_int, c_int, c_void_p, c_void_p, c_uint64)
bpf_map_delete_elem = _fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
bpf_map_get_next_key = _fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_batch = _fn(
    "bpf_map_update_batch", c_int, c_int, c_void_p, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts)
)
bpf_map_delete_batch = _fn("bpf_map_delete_batch", c_int, c_int, c_void_p, POINTER(c_uint32), POINTER(MapBatchOpts))
bpf_map_lookup_batch = _fn(
    "bpf_map_lookup_batch", c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32),
    POINTER(MapBatchOpts),
)

bpf_obj_pin = _fn("bpf_obj_pin", c_int, c_int, c_char_p)
bpf_obj_get = _fn("bpf_obj_get", c_int, c_char_p)
bpf_obj_get_info_by_fd = _fn("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, POINTER(c_uint32))
bpf_prog_get_fd_by_id = _fn("bpf_prog_get_fd_by_id", c_int, c_uint32)
bpf_map_get_fd_by_id = _fn("bpf_map_get_fd_by_id", c_int, c_uint32)
bpf_link_get_fd_by_id = _fn("bpf_link_get_fd_by_id", c_int, c_uint32)
bpf_prog_get_next_id = _fn("bpf_prog_get_next_id", c_int, c_uint32, POINTER(c_uint32))
bpf_map_get_next_id = _fn("bpf_map_get_next_id", c_int, c_uint32, POINTER(c_uint32))
bpf_link_get_next_id = _fn("bpf_link_get_next_id", c_int, c_uint32, POINTER(c_uint32))
bpf_prog_test_run_opts = _fn("bpf_prog_test_run_opts", c_int, c_int, POINTER(TestRunOpts))
bpf_enable_stats = _fn("bpf_enable_stats", c_int, c_int)
bpf_prog_attach = _fn("bpf_prog_attach", c_int, c_int, c_int, c_int, c_uint32)
bpf_prog_detach2 = _fn("bpf_prog_detach2", c_int, c_int, c_int, c_int)
bpf_prog_query = _fn(
    "bpf_prog_query", c_int, c_int, c_int, c_uint32, POINTER(c_uint32), POINTER(c_uint32), POINTER(c_uint32)
)
bpf_link_detach = _fn("bpf_link_detach", c_int, c_int)

bpf_tc_hook_create = _fn("bpf_tc_hook_create", c_int, POINTER(TcHook))
bpf_tc_hook_destroy = _fn("bpf_tc_hook_destroy", c_int, POINTER(TcHook))
bpf_tc_attach = _fn("bpf_tc_attach", c_int, POINTER(TcHook), POINTER(TcOpts))
bpf_tc_detach = _fn("bpf_tc_detach", c_int, POINTER(TcHook), POINTER(TcOpts))
bpf_tc_query = _fn("bpf_tc_query", c_int, POINTER(TcHook), POINTER(TcOpts))

bpf_xdp_attach = _fn("bpf_xdp_attach", c_int, c_int, c_int, c_uint32, POINTER(XdpAttachOpts))
bpf_xdp_detach = _fn("bpf_xdp_detach", c_int, c_int, c_uint32, POINTER(XdpAttachOpts))
bpf_xdp_query = _fn("bpf_xdp_query", c_int, c_int, c_int, POINTER(XdpQueryOpts))

ring_buffer__new = _fn("ring_buffer__new", c_void_p, c_int, RINGBUF_SAMPLE_FN, c_void_p, c_void_p)
ring_buffer__add = _fn("ring_buffer__add", c_int, c_void_p, c_int, RINGBUF_SAMPLE_FN, c_void_p)
ring_buffer__poll = _fn("ring_buffer__poll", c_int, c_void_p, c_int)
ring_buffer__consume = _fn("ring_buffer__consume", c_int, c_void_p)
ring_buffer__epoll_fd = _fn("ring_buffer__epoll_fd", c_int, c_void_p)
ring_buffer__free = _fn("ring_buffer__free", None, c_void_p)

perf_buffer__new = _fn(
    "perf_buffer__new", c_void_p, c_int, c_size_t, PERF_SAMPLE_FN, PERF_LOST_FN, c_void_p, c_void_p
)
perf_buffer__poll = _fn("perf_buffer__poll", c_int, c_void_p, c_int)
perf_buffer__consume = _fn("perf_buffer__consume", c_int, c_void_p)
perf_buffer__epoll_fd = _fn("perf_buffer__epoll_fd", c_int, c_void_p)
perf_buffer__free = _fn("perf_buffer__free", None, c_void_p)

_libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
_libc.vsnprintf.restype = c_int
_libc.syscall.restype = c_long

# ---- raw bpf(2) for what libbpf 1.1 cannot express (TCX links) --------------------------------------

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)


def sys_bpf(cmd: int, attr: ctypes.Array | Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); returns the result or -errno."""
    ret = _libc.syscall(c_long(SYS_BPF), c_int(cmd), ctypes.byref(attr), c_uint32(ctypes.sizeof(attr)))
    if ret < 0:
        return -ctypes.get_errno()
    return ret


def version() -> str:
    return f"{libbpf_major_version()}.{libbpf_minor_version()}"


def libc_errno() -> int:
    return ctypes.get_errno()


# ---- log capture -----------------------------------------------------------------------------------

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
_log = threading.local()


_LOG_BUF = 1 << 22  # a va_list can be formatted only once, so the buffer must fit a verifier log


@PRINT_FN
def _print_cb(level: int, fmt: bytes, args: int) -> int:
    lines = getattr(_log, "lines", None)
    debug = os.environ.get("BPFGATE_DEBUG")
    if (lines is None or level > LIBBPF_INFO) and not debug:
        return 0
    buf = ctypes.create_string_buffer(_LOG_BUF)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace")
    if debug:
        os.write(2, ("libbpf: " + text).encode())
    if lines is not None and level <= LIBBPF_INFO:
        lines.append(text)
    return 0


libbpf_set_print(_print_cb)


_silence = threading.Lock()


@contextmanager
def silenced() -> Iterator[None]:
    """No libbpf output at all during the body (process-wide): a load of ours prints ~1,300 debug lines,
    each a Python callback that needs the GIL, so a load beside busy Python code in another thread waits
    for the GIL at every line. Whatever fails in the body is not explained: run it again, not silenced."""
    with _silence:
        libbpf_set_print(PRINT_FN())
        try:
            yield
        finally:
            libbpf_set_print(_print_cb)


@contextmanager
def captured_log() -> Iterator[list[str]]:
    """Collect libbpf's warnings/info printed during the body (per thread) instead of writing stderr."""
    prev = getattr(_log, "lines", None)
    lines: list[str] = []
    _log.lines = lines
    try:
        yield lines
    finally:
        _log.lines = prev
