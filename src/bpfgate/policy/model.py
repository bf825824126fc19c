"""The policy file as pydantic models. Values are normalised on validation (ports -> ranges, flags ->
mask/value, protocols -> numbers), so the compiler and the classifiers never re-parse user text."""

from __future__ import annotations

import copyreg
import ipaddress
import operator
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SkipValidation, field_validator, model_validator

from bpfgate.steer.policy import SteerPolicy

from .ctstates import CT_STATES
from .hooks import CGROUP_HOOKS, SOCKET_HOOKS, Hook  # noqa: F401 - the models' hooks, named here too

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def _exact_network(version: int, value: int, plen: int) -> Network:
    return (ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)((value, plen))


_FAMILY = {4: (ipaddress.IPv4Network, ipaddress.IPv4Address), 6: (ipaddress.IPv6Network, ipaddress.IPv6Address)}


def _quick_network(version: int, value: int, plen: int) -> Network:
    """What IPv4Network/IPv6Network((value, plen)) makes, without its argument parsing: ~2-3x faster (100k
    rules read or loaded back build 100k networks). It sets the attributes the constructor sets; at import
    it is compared with the constructor, which is used instead if this Python's ipaddress differs."""
    cls, addr = _FAMILY[version]
    net = object.__new__(cls)
    net.network_address = addr(value)
    net.netmask, net._prefixlen = cls._make_netmask(plen)   # refuses a length out of range, as the constructor
    if value & net.netmask._ip != value:
        raise ValueError(f"{net} has host bits set")
    if plen >= cls._max_prefixlen - 1:
        net.hosts = net.__iter__ if plen < cls._max_prefixlen else (lambda: [addr(value)])
    return net


def _quick_is_exact() -> bool:
    try:
        for version, value, plen in ((4, 0xC6120000, 15), (4, 0xC6120001, 32), (4, 0xC6120002, 31), (4, 0, 0),
                                     (6, 0xFD << 120, 8), (6, 5, 128), (6, 4, 127)):
            a, b = _quick_network(version, value, plen), _exact_network(version, value, plen)
            if (a != b or hash(a) != hash(b) or str(a) != str(b) or vars(a).keys() != vars(b).keys()
                    or a.netmask != b.netmask or a.prefixlen != b.prefixlen
                    or plen >= a.max_prefixlen - 1 and list(a.hosts()) != list(b.hosts())):
                return False
        _quick_network(4, 0xC6120001, 31)
    except ValueError:   # the host bits refused, as the constructor refuses them
        return True
    except Exception:  # noqa: BLE001 - any other difference: use the constructor
        return False
    return False


_network = _quick_network if _quick_is_exact() else _exact_network


def _reduce_network(net: Network):
    return _network, (net.version, int(net.network_address), net.prefixlen)


# A saved engine state holds every rule's networks: pickled as integers, they load ~5x faster than from the
# text ipaddress pickles by default (an IPv6 address parse is most of reading 100k rules back).
copyreg.pickle(ipaddress.IPv4Network, _reduce_network)
copyreg.pickle(ipaddress.IPv6Network, _reduce_network)

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58, "sctp": 132}
PORT_PROTOCOLS = {6, 17, 132}
ICMP_PROTOCOLS = {1, 58}
TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _as_list(v):
    return v if isinstance(v, list) else [v]


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4_CIDR = re.compile(rf"({_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})(?:/(3[0-2]|[12]?[0-9]))?")

_V6_CIDR = re.compile(r"([0-9a-fA-F:]+)(?:/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?")


def parse_network(item) -> Network:
    """A CIDR (or a single address) as ipaddress.ip_network(strict=True) reads it, and its error when it
    is not one; the common forms without the failed IPv4 attempt of every IPv6 CIDR (~4x faster)."""
    text = str(item)
    try:
        m = _V4_CIDR.fullmatch(text)
        if m:
            return _network(4, int.from_bytes(socket.inet_aton(m.group(1)), "big"), int(m.group(2) or 32))
        m = _V6_CIDR.fullmatch(text)
        if m:   # hex and colons only (no embedded IPv4, no scope): inet_pton and ipaddress agree on these
            return _network(6, int.from_bytes(socket.inet_pton(socket.AF_INET6, m.group(1)), "big"),
                            int(m.group(2) or 128))
        if ":" in text:
            return ipaddress.IPv6Network(text)
    except (ValueError, OSError):
        pass   # host bits set, or not an address: ip_network says which
    return ipaddress.ip_network(text, strict=True)


def parse_ports(v) -> tuple[tuple[int, int], ...]:
    """80 | "1000-2000" | [80, "8000-8100"] -> ((lo, hi), ...) inclusive."""
    out = []
    for item in _as_list(v):
        if isinstance(item, bool):
            raise ValueError(f"port {item!r} is not a number")
        if isinstance(item, int):
            lo = hi = item
        elif isinstance(item, str):
            text = item.strip()
            lo_s, sep, hi_s = text.partition("-")
            try:
                lo = int(lo_s)
                hi = int(hi_s) if sep else lo
            except ValueError:
                raise ValueError(f"port {item!r} is not a number or a range 'a-b'") from None
        else:
            raise ValueError(f"port {item!r} is not a number or a range 'a-b'")
        for p in (lo, hi):
            if not 0 <= p <= 65535:
                raise ValueError(f"port {p} out of range 0-65535")
        if lo > hi:
            raise ValueError(f"port range {item!r} is empty (start > end)")
        out.append((lo, hi))
    if not out:
        raise ValueError("empty port list")
    return tuple(out)


def parse_tcp_flags(v) -> tuple[int, int]:
    """"syn,!ack" (set / clear), "0x02/0x12" (value/mask) or {value:, mask:} -> (mask, value)."""
    if isinstance(v, dict):
        mask, value = v.get("mask"), v.get("value")
        if set(v) - {"mask", "value"} or not isinstance(mask, int) or not isinstance(value, int):
            raise ValueError("tcp_flags mapping needs integer 'mask' and 'value' only")
    elif isinstance(v, str) and "/" in v:
        try:
            value, mask = (int(x, 0) for x in v.split("/", 1))
        except ValueError:
            raise ValueError(f"tcp_flags {v!r}: expected VALUE/MASK numbers") from None
    elif isinstance(v, str):
        mask = value = 0
        for word in (w.strip().lower() for w in v.split(",")):
            neg = word.startswith("!")
            bit = TCP_FLAGS.get(word.lstrip("!"))
            if bit is None:
                raise ValueError(f"unknown TCP flag {word!r} (known: {', '.join(TCP_FLAGS)})")
            if mask & bit:
                raise ValueError(f"TCP flag {word.lstrip('!')!r} named twice")
            mask |= bit
            value |= 0 if neg else bit
    else:
        raise ValueError("tcp_flags: expected 'syn,!ack', 'VALUE/MASK' or {value:, mask:}")
    if not (0 <= mask <= 0xFF and 0 <= value <= 0xFF):
        raise ValueError("tcp_flags mask/value must fit in 8 bits")
    if value & ~mask:
        raise ValueError("tcp_flags value has bits outside the mask")
    if mask == 0:
        raise ValueError("tcp_flags names no flag")
    return mask, value


def parse_protocol(item) -> int:
    if isinstance(item, bool):
        raise ValueError(f"protocol {item!r} is not valid")
    if isinstance(item, int):
        if not 0 <= item <= 255:
            raise ValueError(f"protocol {item} out of range 0-255")
        return item
    if isinstance(item, str) and item.lower() in PROTOCOLS:
        return PROTOCOLS[item.lower()]
    if isinstance(item, str) and item.strip().isdigit():   # "47": a negated number arrives as text ("!47")
        return parse_protocol(int(item))
    raise ValueError(f"unknown protocol {item!r} (known: {', '.join(PROTOCOLS)}, or a number)")


# match fields a rule may negate ("!198.18.0.0/16", "!tcp", "!22"); the compiler expands the complement
NEGATABLE = ("src", "dst", "protocol", "src_port", "dst_port")
_NEGATABLE_AS_WRITTEN = operator.itemgetter(*NEGATABLE)


def _plain(v) -> bool:
    """Whether a field's value is one item that is neither negated ("!") nor a set reference ("@")."""
    if isinstance(v, str):
        return v.lstrip()[:1] not in ("!", "@")
    return isinstance(v, int)


def _negated_items(field: str, v) -> tuple[list, bool]:
    """A field's items with a leading "!" taken off, and whether they had it (all or none may)."""
    items = _as_list(v)
    neg = [isinstance(x, str) and x.strip().startswith("!") for x in items]
    if not any(neg):
        return items, False
    if not all(neg):
        raise ValueError(f"{field}: negate every item ('!...') or none: a negated list means none of them")
    return [x.strip()[1:].strip() for x in items], True


@lru_cache(maxsize=4096)
def complement_nets(nets: tuple) -> tuple:
    """The prefixes covering every address of the families in `nets` that none of `nets` holds (the fewest:
    a /k leaves k prefixes)."""
    out = []
    for version, everything in ((4, "0.0.0.0/0"), (6, "::/0")):
        mine = [n for n in nets if n.version == version]
        if not mine:
            continue
        rest = [ipaddress.ip_network(everything)]
        for n in mine:
            left = []
            for r in rest:
                if not r.overlaps(n):
                    left.append(r)
                elif r.prefixlen < n.prefixlen:      # n inside r: r minus n
                    left.extend(r.address_exclude(n))
                # else r inside n: nothing of r is left
            rest = left
        out.extend(sorted(rest))
    return tuple(out)


@lru_cache(maxsize=4096)
def complement_ports(ranges: tuple) -> tuple:
    out, lo = [], 0
    for a, b in sorted(ranges):
        if a > lo:
            out.append((lo, a - 1))
        lo = max(lo, b + 1)
    if lo <= 65535:
        out.append((lo, 65535))
    return tuple(out)


@lru_cache(maxsize=256)
def complement_protocols(protos: tuple) -> tuple:
    return tuple(p for p in range(256) if p not in protos)


SET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}")
ADDR_SET_FIELDS = ("src", "dst")     # fields that may name an address set ("@name")
PORT_SET_FIELDS = ("src_port", "dst_port")
SET_FIELDS = ADDR_SET_FIELDS + PORT_SET_FIELDS
SET_TYPES = {"src": "addr", "dst": "addr", "src_port": "port", "dst_port": "port"}


@dataclass(frozen=True, slots=True)
class SetRef:
    """A rule field that names a set (`src: "@blocklist"`): the set's elements are the field's values, read
    where the rule is compiled or matched (the rule itself does not change when the set does)."""

    name: str

    def __str__(self) -> str:
        return f"@{self.name}"


_PORT_TEXT = re.compile(r"\s*\d+\s*(-\s*\d+\s*)?")


def parse_element(item):
    """One set element: a port or port range (80, "8000-8099") -> (lo, hi); anything else a CIDR."""
    if isinstance(item, int) and not isinstance(item, bool) or isinstance(item, str) and _PORT_TEXT.fullmatch(item):
        return parse_ports(item)[0]
    if not isinstance(item, str):
        raise ValueError(f"element {item!r} is not an address, a CIDR or a port")
    try:
        return parse_network(item)
    except ValueError as e:
        raise ValueError(f"bad CIDR {item!r}: {e}") from None


def element_text(e) -> Any:
    """A parsed element as a policy file writes it."""
    if isinstance(e, tuple):
        return e[0] if e[0] == e[1] else f"{e[0]}-{e[1]}"
    return str(e.network_address) if e.prefixlen == e.max_prefixlen else str(e)


def element_type(e) -> str:
    return "port" if isinstance(e, tuple) else "addr"


class SetDef(Strict):
    """A named set (`sets:` in a policy file): addresses/CIDRs of both families, or ports and port ranges."""

    type: Literal["addr", "port"]
    elements: tuple[Annotated[Any, BeforeValidator(parse_element)], ...] = ()
    comment: str | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("elements", mode="before")
    @classmethod
    def _list(cls, v):
        return () if v is None else tuple(_as_list(v))


class Redirect(Strict):
    interface: str = Field(min_length=1, max_length=15)
    direction: Literal["egress", "ingress"] = "egress"
    on_gone: Literal["pass", "drop"] = "pass"   # the target interface went away: pass the packet, or drop it


class RateLimit(Strict):
    rate: int = Field(gt=0, description="tokens per second")
    unit: Literal["packets", "bytes"] = "packets"
    per: Literal["rule", "source"] = "rule"
    burst: int | None = Field(default=None, gt=0, description="bucket depth; default one second of rate")
    over: Literal["drop", "pass"] = "drop"


class Reject(Strict):
    """What a reject answers with: TCP always gets a RST; anything else an ICMP/ICMPv6 destination unreachable
    of this kind. At most `rate` replies per second per rule (more are dropped unanswered): a reject never
    turns the engine into a packet source that an attacker can aim."""

    with_: Literal["port-unreachable", "admin-prohibited"] = Field(default="port-unreachable", alias="with")
    rate: int = Field(default=100, gt=0, le=100_000, description="replies per second at most")


class Log(Strict):
    rate: int = Field(default=10, gt=0, le=1_000_000, description="max events per second")


class Rule(Strict):
    """One named rule: match fields (all must hold; lists mean any of) and what to do."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_.:-]+$")
    # match
    # made by _cidrs alone (pydantic would build every network a second time: slow at 100k rules)
    # a field naming a set holds a SetRef instead of its values
    src: SkipValidation[tuple[Network, ...] | SetRef | None] = None
    dst: SkipValidation[tuple[Network, ...] | SetRef | None] = None
    protocol: tuple[int, ...] | None = None
    src_port: SkipValidation[tuple[tuple[int, int], ...] | SetRef | None] = None
    dst_port: SkipValidation[tuple[tuple[int, int], ...] | SetRef | None] = None
    tcp_flags: tuple[int, int] | None = None  # (mask, value)
    icmp_type: int | None = Field(default=None, ge=0, le=255)
    icmp_code: int | None = Field(default=None, ge=0, le=255)
    vlan: tuple[Annotated[int, Field(ge=0, le=4094)], ...] | None = None
    ct: tuple[int, ...] | None = None  # CT_STATES values
    # action
    action: Literal["pass", "drop", "redirect", "reject"] = "pass"
    redirect: Redirect | None = None
    reject: Reject | None = None   # action reject's options (default: port-unreachable, 100 replies/s)
    mark: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    rate_limit: RateLimit | None = None
    log: Log | None = None
    count: bool = True
    # free text for people (why the rule is there, a ticket): kept through export, shown by `rules`, never matched
    comment: str | None = Field(default=None, min_length=1, max_length=256)
    # the NEGATABLE fields written negated: the rule matches packets that have the field and whose value is none
    # of those listed (set from the "!" of the values, never written in a file: matching() gives the sets)
    negated: tuple[str, ...] = ()
    # who added it: None for a policy file or a user's `rule add`; the program's name for automation
    # (e.g. "syn-blocker"): `apply` keeps such rules, `policy export` leaves them out (policyctl/plan.py)
    owner: str | None = Field(default=None, min_length=1, max_length=32, pattern=r"^[a-z0-9-]+$")

    @field_validator("src", "dst", mode="before")
    @classmethod
    def _cidrs(cls, v):
        if v is None or isinstance(v, SetRef):
            return v
        out = []
        for item in _as_list(v):
            try:
                out.append(parse_network(item))
            except ValueError as e:
                raise ValueError(f"bad CIDR {item!r}: {e}") from None
        if not out:
            raise ValueError("empty address list")
        return tuple(out)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v):
        return v if v is None else tuple(parse_protocol(x) for x in _as_list(v))

    @field_validator("src_port", "dst_port", mode="before")
    @classmethod
    def _ports(cls, v):
        return v if v is None or isinstance(v, SetRef) else parse_ports(v)

    @field_validator("tcp_flags", mode="before")
    @classmethod
    def _flags(cls, v):
        return v if v is None else parse_tcp_flags(v)

    @field_validator("vlan", mode="before")
    @classmethod
    def _vlan(cls, v):
        return v if v is None else tuple(_as_list(v))

    @field_validator("comment")
    @classmethod
    def _comment(cls, v):
        if v is not None and any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
            raise ValueError("comment must be one line of printable text (no control characters)")
        return v

    @field_validator("log", mode="before")
    @classmethod
    def _log(cls, v):
        if v is True:
            return {}
        if v is False:
            return None
        return v

    @field_validator("ct", mode="before")
    @classmethod
    def _ct(cls, v):
        if v is None:
            return v
        out = []
        for s in _as_list(v):
            if not isinstance(s, str) or s.lower() not in CT_STATES:
                raise ValueError(f"unknown ct state {s!r} (known: {', '.join(CT_STATES)})")
            out.append(CT_STATES[s.lower()])
        return tuple(out)

    @model_validator(mode="before")
    @classmethod
    def _negations(cls, data):
        if not isinstance(data, dict):
            return data
        if "negated" in data:
            raise ValueError("negated: unknown field (negate a value with '!', e.g. src: '!198.18.0.0/16')")
        if all(_plain(data[f]) for f in NEGATABLE if data.get(f) is not None):
            return data   # most rules: nothing negated, no set named (and no copy of them made)
        out, negated = dict(data), []
        for f in NEGATABLE:
            if out.get(f) is not None:
                items, neg = _negated_items(f, out[f])
                if neg:
                    out[f] = items
                    negated.append(f)
        if negated:
            out["negated"] = tuple(negated)
        for f in SET_FIELDS:
            if out.get(f) is not None:
                out[f] = _set_ref(f, out[f])
        return out

    @model_validator(mode="before")
    @classmethod
    def _action_shorthand(cls, data):
        # `action: {redirect: {interface: x}}` is accepted as a shorthand of action + redirect
        # and `action: {reject: {with: admin-prohibited}}` of action + reject
        if isinstance(data, dict) and isinstance(data.get("action"), dict):
            act = dict(data["action"])
            for kind in ("redirect", "reject"):
                if len(act) == 1 and kind in act and kind not in data:
                    data = {**data, "action": kind}
                    if act[kind] is not None:   # `action: {reject: }`: the defaults
                        data[kind] = act[kind]
        return data

    def match_fields(self) -> list[str]:
        return [f for f in MATCH_FIELDS if getattr(self, f) is not None]

    def matching_negatable(self) -> tuple:
        """matching() of each NEGATABLE field (src, dst, protocol, src_port, dst_port), in one call: the
        compiler asks for them for every rule, and a rule negating none has them as written."""
        if not self.negated:
            return _NEGATABLE_AS_WRITTEN(self.__dict__)
        return tuple(self.matching(f) for f in NEGATABLE)

    def matching(self, field: str):
        """The values a packet's field must have to match (None: any): the field as written, or for a
        negated field its complement (addresses: within the families written; ports: within 0-65535)."""
        v = getattr(self, field)
        if v is None or field not in self.negated or isinstance(v, SetRef):
            return v   # a set's complement is the data plane's (a class bit clear), never expanded
        if field in ("src", "dst"):
            return complement_nets(v)
        if field == "protocol":
            return complement_protocols(v)
        return complement_ports(v)


def _set_ref(field: str, v):
    """"@name" (or ["@name"]) -> SetRef; a set reference stands alone in its field."""
    items = v if isinstance(v, list) else [v]
    refs = [x for x in items if isinstance(x, str) and x.strip().startswith("@")]
    if not refs:
        return v
    if len(items) != 1:
        raise ValueError(f"{field}: a set reference ('@name') stands alone, not in a list with other values")
    name = refs[0].strip()[1:]
    if not SET_NAME.fullmatch(name):
        raise ValueError(f"{field}: {refs[0]!r} is not a set name (letters, digits, _ . -)")
    return SetRef(name)


MATCH_FIELDS = ("src", "dst", "protocol", "src_port", "dst_port", "tcp_flags", "icmp_type", "icmp_code",
                "vlan", "ct")


def rebuild_rule(values: dict, fields_set: tuple | set) -> Rule:
    """A Rule from values that were valid when saved (fields missing from them take their defaults); a set
    given as fields_set becomes the rule's own (rules may share one: a frozen model never changes it)."""
    rule = Rule.__new__(Rule)
    whole = len(values) == len(_RULE_DEFAULTS)
    object.__setattr__(rule, "__dict__", values if whole else {**_RULE_DEFAULTS, **values})
    object.__setattr__(rule, "__pydantic_fields_set__", fields_set if isinstance(fields_set, set) else set(fields_set))
    object.__setattr__(rule, "__pydantic_extra__", None)
    object.__setattr__(rule, "__pydantic_private__", None)
    return rule


_rule_rebuild = rebuild_rule   # the name rules pickled one by one refer to (saved states, older blobs)

_QUICK_KEYS = frozenset({"name", "src", "dst", "action"})
_QUICK_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,63}")   # Rule.name's length and pattern
_QUICK_ACTIONS = {"pass": "pass", "drop": "drop"}


def quick_rule(d) -> Rule | None:
    """What Rule.model_validate(d) makes of a rule mapping of the common form (a name, one address or CIDR
    as src or dst, action pass or drop: a blocklist's rule), made without pydantic's per-field calls (~25%
    of reading a 100k-rule file); None for any other mapping, and for one with an error (pydantic then says
    what it is)."""
    act = d.get("action", "pass") if type(d) is dict else None
    action = _QUICK_ACTIONS.get(act) if type(act) is str else None
    if action is None or not d.keys() <= _QUICK_KEYS or type(d.get("name")) is not str \
            or not _QUICK_NAME.fullmatch(d["name"]):
        return None
    values = dict(d)
    if "action" in d:
        values["action"] = action   # one str object for all rules, as validation gives (not one each)
    for f in ("src", "dst"):
        v = d.get(f)
        if v is None:
            if f in d:
                return None
            continue
        if type(v) is not str or not _plain(v):
            return None
        try:
            values[f] = (parse_network(v),)
        except ValueError:
            return None
    return rebuild_rule(values, set(d))


def share_fields_sets(rules) -> None:
    """Rules with the same fields set share one fields_set object (pydantic makes one per model: ~200 bytes,
    20 MB at 100k rules; Rule is frozen, so pydantic never changes it, and a model_copy copies it)."""
    shared: dict[frozenset, set] = {}
    for rule in rules:
        fs = rule.__pydantic_fields_set__
        object.__setattr__(rule, "__pydantic_fields_set__", shared.setdefault(frozenset(fs), fs))


def _reduce_rule(rule: Rule):
    return _rule_rebuild, ({k: v for k, v in rule.__dict__.items() if v != _RULE_DEFAULTS[k]},
                           tuple(rule.__pydantic_fields_set__))


# A saved engine state holds every rule (100k in a large policy): pickled as the values that differ from the
# defaults (a few of 21 fields) and rebuilt without validation (they were valid when saved), they save ~4x
# and load ~3x faster than pydantic's own pickling of every field.
_RULE_DEFAULTS = {name: f.get_default() for name, f in Rule.model_fields.items()}
copyreg.pickle(Rule, _reduce_rule)


class HookPolicy(Strict):
    default: Literal["allow", "deny"] = "allow"
    rules: tuple[Rule, ...] = ()
    sets: dict[str, SetDef] = Field(default_factory=dict)   # the document's sets (Policy.sets), for its rules


class Policy(Strict):
    """One document: its device hooks (tc-*, xdp) run on each of `interfaces`, its cgroup hooks
    (cgroup-ingress/egress) on each of `cgroups` (paths: absolute, or relative to the cgroup v2 mount)."""

    version: Literal[1] = 1
    interfaces: tuple[Annotated[str, Field(min_length=1, max_length=15)], ...] = ()
    cgroups: tuple[Annotated[str, Field(min_length=1, max_length=4096)], ...] = ()
    hooks: dict[Hook, HookPolicy] = Field(default_factory=dict)
    steer: SteerPolicy | None = None   # egress steering of the namespace (bpfgate.steer.policy)
    sets: dict[Annotated[str, Field(pattern=f"^{SET_NAME.pattern}$")], SetDef] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _share_sets(self):
        # every hook's rules may name the document's sets: each HookPolicy carries them (one object)
        if self.sets:
            hooks = {h: hp if hp.sets == self.sets else hp.model_copy(update={"sets": self.sets})
                     for h, hp in self.hooks.items()}
            object.__setattr__(self, "hooks", hooks)
        return self

    @field_validator("interfaces", mode="before")
    @classmethod
    def _ifaces(cls, v):
        return tuple(_as_list(v))

    @field_validator("cgroups", mode="before")
    @classmethod
    def _cgroups(cls, v):
        from bpfgate.cgroups import normalise

        return tuple(normalise(str(p)) for p in _as_list(v))

    @model_validator(mode="after")
    def _targets(self):
        cg = [h.value for h in self.hooks if h.on_cgroup]
        dev = [h.value for h in self.hooks if not h.on_cgroup]
        if not self.interfaces and not self.cgroups and not self.hooks:
            if self.steer is not None:
                return self
        if not self.interfaces and not self.cgroups or not self.hooks:
            raise ValueError("a policy needs interfaces and hooks (or a steer section), or cgroups and cgroup-* "
                             "hooks: name the targets (`interfaces:`, `cgroups:`)")
        if dev and not self.interfaces:
            raise ValueError(f"interfaces and hooks go together: hooks {', '.join(dev)} run on interfaces, and "
                             "the document names none")
        if cg and not self.cgroups:
            raise ValueError(f"hooks {', '.join(cg)} run on cgroups, and the document names none (`cgroups:`)")
        if self.interfaces and not dev:
            raise ValueError("interfaces and hooks go together: interfaces are named but no tc-ingress, tc-egress "
                             "or xdp hook")
        if self.cgroups and not cg:
            raise ValueError("cgroups are named but no cgroup-* hook")
        return self


    def targets(self, hook: Hook) -> tuple[str, ...]:
        """Where a hook of this document runs."""
        return self.cgroups if Hook(hook).on_cgroup else self.interfaces
