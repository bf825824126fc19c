"""The C <-> Python contract, read from the objects' BTF: constants (C enums) and struct layouts.

The C side is bpf/include: bg_common.h (record header, record type ids, event counters) and one header per
program family. Python never copies a number or a layout from there. It asks the family's packaged object:

    C = constants("engine")                       # every enumerator in engine.o's BTF, as attributes
    C.BG_ACT_DROP                                 # AttributeError at import if the C name is gone
    KEY = record("engine", "bg_cls_key", "shape gen have ...")   # struct.Struct with BTF's layout
    CFG = struct("engine", "bg_capture_cfg")     # ctypes type with BTF's layout

`record` is for records Python packs in bulk (struct.Struct is the fast path): the caller names the fields
it passes, in C order without padding, and any drift (renamed, reordered, added or resized field) is an
ObjectError when the module imports, not a silently wrong map entry. An enum is in an object's BTF only if
something in the object uses its type: each header anchors its enums (BG_EXPORT_TYPE).

CONTRACT lists the struct fields Python reads through ctypes (btf.struct); tests/unit/test_layout.py
checks them, every record() and every enum Python reads against every object that carries them.
"""

from __future__ import annotations

import ctypes
import struct as _struct
from functools import lru_cache
from typing import Any

from bpfgate.errors import ObjectError
from bpfgate.kernel.btf import Btf
from bpfgate.kernel.objects import packaged_path

COMMON = "selftest"  # bg_common.h's enums are in every object that emits records; read them from the smallest

CONTRACT: dict[str, tuple[str, ...]] = {
    "bg_counter": ("packets", "bytes"),
    "bg_port_key": ("port", "pad"),
    "bg_event_hdr": ("type", "len", "cpu", "ts_ns"),
    "bg_test_event": ("hdr", "seq", "pkt_len", "mark"),
    # inspection (bpfgate.inspect: events, syn, attempts)
    "bg_src_key": ("family", "addr"),
    "bg_syn_config": ("rate", "block_ns"),
    "bg_syn_total": ("syns", "blocked"),
    "bg_syn_src_key": ("ifindex", "src"),
    "bg_syn_src": ("syns", "last_ns"),
    "bg_syn_flood_event": ("hdr", "ifindex", "src", "window_syns", "rate", "block_until_ns"),
    "bg_attempt_key": ("ifindex", "port"),
    "bg_attempt_event": ("hdr", "ifindex", "family", "tcp_flags", "sport", "dport", "pkt_len", "saddr", "daddr"),
    # tcp tracing (bpfgate.trace)
    "bg_tcp_event": ("hdr", "sk", "duration_ns", "bytes_sent", "bytes_received", "cgroup_id", "saddr", "daddr",
                     "pid", "netns", "error", "sport", "dport", "family", "kind", "old_state", "new_state",
                     "owner_flags", "comm"),
    "bg_drop_event": ("hdr", "location", "saddr", "daddr", "reason", "ifindex", "netns", "pid", "len", "sport",
                      "dport", "family", "protocol", "engine_rule"),
    "bg_sock_owner": ("start_ns", "cgroup_id", "pid", "flags", "comm"),
    # capture (bpfgate.inspect.capture)
    "bg_capture_event": ("hdr", "ifindex", "pkt_len", "cap_len", "rule_id", "dir", "hook", "verdict"),
    "bg_capture_cfg": ("enabled", "snaplen", "rule_id_plus_1", "lost", "owner_pid"),
    # policy engine (bpfgate.engine; classifier records packed by bpfgate.policy.layout)
    "bg_cls_key": ("shape", "gen", "have", "family", "proto", "tcp_flags", "icmp_type", "icmp_code", "ct_state",
                   "pad0", "vlan", "sport", "dport", "src", "dst"),
    "bg_cls_val": ("prio", "rule_id"),
    "bg_rule": ("action", "over_action", "flags", "redirect_ifindex", "mark", "log_rate", "rate", "burst"),
    "bg_shape": ("mask", "best_prio", "id", "filtered", "entries", "fmask", "filter"),
    "bg_conf": ("nshapes", "default_rule", "gen", "shapes"),
    "bg_bucket": ("credit", "last_ns", "lock"),
    "bg_rate_src_key": ("rule_id", "family", "addr"),
    "bg_ct_key": ("family", "proto", "sport", "dport", "src", "dst"),
    "bg_ct_value": ("first_ns", "last_ns", "packets", "bytes", "ended", "flags", "ifindex", "tcp_flags",
                    "created_dir", "ext"),
    # NAT and load balancing (bpfgate.nat)
    "bg_nat_key": ("family", "proto", "port", "addr"),
    "bg_nat_target": ("addr", "port", "port_hi", "flags", "svc"),
    "bg_snat_key": ("prefixlen", "family", "addr"),
    "bg_lb_svc": ("base", "size", "seed"),
    "bg_lb_backend": ("addr", "port", "family", "svc"),
    "bg_ct_ext": ("nat_addr", "nat_port", "nat_flags", "backend_id", "in_ifindex", "peer_mac"),
    # egress steering (bpfgate.steer)
    "bg_steer_key": ("prefixlen", "family", "proto", "port", "addr"),
    "bg_steer_rule": ("id", "ifindex", "family", "nexthop", "probe_ns"),
    "bg_steer_rule_stat": ("steered", "failed"),
    "bg_steer_if": ("mac", "flags"),
    "bg_rule_log_event": ("hdr", "rule_id", "ifindex", "pkt_len", "action", "hook", "family", "proto", "sport",
                          "dport", "ct_state", "tcp_flags", "src", "dst"),
}

# what Python read, for the drift test: (object, enum or struct name, fields of a record)
READ_ENUMS: set[tuple[str, str]] = set()
READ_RECORDS: dict[tuple[str, str], tuple[str, ...]] = {}


@lru_cache(maxsize=None)
def btf(obj: str) -> Btf:
    """The BTF of a packaged object ('engine' -> bpfgate/objects/engine.o)."""
    path = packaged_path(obj)
    if not path.exists():
        raise ObjectError(f"read the C<->Python contract from {obj}.o", f"{path} is missing",
                          hint="build the BPF objects: make -C bpf")
    return Btf.from_elf(str(path))


class Constants:
    """Every enumerator of an object's BTF as a read-only attribute (C enumerator names are unique)."""

    def __init__(self, obj: str, enums: dict[str, dict[str, int]]):
        self._obj = obj
        self._enums = enums
        self._enum_of = {k: enum for enum, members in enums.items() for k in members}

    def __getattr__(self, name: str) -> int:
        enum = self._enum_of.get(name)
        if enum is None:
            raise AttributeError(f"{self._obj}.o has no enumerator {name} in its BTF (is its enum anchored?)")
        READ_ENUMS.add((self._obj, enum))
        return self._enums[enum][name]

    def enum(self, name: str) -> dict[str, int]:
        """One enum: {enumerator: value}."""
        if name not in self._enums:
            raise ObjectError(f"read enum {name} from {self._obj}.o", "not in its BTF (is it anchored?)")
        READ_ENUMS.add((self._obj, name))
        return dict(self._enums[name])

    def names(self, enum: str, words: dict[str, Any]) -> dict[int, Any]:
        """value -> user-facing word, for an enum whose every enumerator `words` names ({C name: word}): a
        C enumerator without a word, or a word for a C name that is gone, is an ObjectError."""
        members = self.enum(enum)
        if set(members) != set(words):
            raise ObjectError(f"name enum {enum} of {self._obj}.o",
                              f"C has {sorted(set(members) - set(words))} unnamed, "
                              f"Python names {sorted(set(words) - set(members))} that C has not")
        return {members[c]: word for c, word in words.items()}


@lru_cache(maxsize=None)
def constants(obj: str = COMMON) -> Constants:
    """The enumerators of a packaged object's BTF."""
    return Constants(obj, btf(obj).enums())


def struct(obj: str, name: str) -> Any:
    """A struct of an object's BTF as a ctypes type (layout, padding and size from BTF)."""
    READ_RECORDS.setdefault((obj, name), ())
    return btf(obj).struct(name)


_CODES = {ctypes.c_uint8: "B", ctypes.c_int8: "b", ctypes.c_uint16: "H", ctypes.c_int16: "h",
          ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q", ctypes.c_int64: "q"}


def _is_pad(name: str) -> bool:
    return name.startswith(("_", "pad"))


def record(obj: str, name: str, fields: str) -> _struct.Struct:
    """A struct.Struct with the layout BTF gives struct `name` in `obj`, packing `fields` (space-separated, in
    C order, explicit padding left out: it packs as zeros). Integers pack as numbers, arrays and nested structs
    as bytes of their size. The field list must be exactly the struct's non-padding fields."""
    want = tuple(fields.split())
    ctype = btf(obj).struct(name)
    have = tuple(f for f, *_ in ctype._fields_ if not _is_pad(f))
    if have != want:
        raise ObjectError(f"read struct {name} from {obj}.o", f"its fields are {' '.join(have)}; "
                          f"Python packs {' '.join(want)}")
    fmt = "="
    for fname, ftype, *_ in ctype._fields_:
        size = ctypes.sizeof(ftype)
        if _is_pad(fname):
            fmt += f"{size}x"
        elif ftype in _CODES:
            fmt += _CODES[ftype]
        else:
            fmt += f"{size}s"
    packer = _struct.Struct(fmt)
    if packer.size != ctypes.sizeof(ctype):
        raise ObjectError(f"read struct {name} from {obj}.o", f"format {fmt} is {packer.size} bytes, "
                          f"BTF says {ctypes.sizeof(ctype)}")
    READ_RECORDS[(obj, name)] = want
    return packer
