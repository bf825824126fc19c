"""A Rule as the plain fields a policy file would have, and back: the inverse of the model's validators.

`rule_from_data(rule_data(r)) == r` for every valid rule, and the data is plain JSON/YAML (str, int,
bool, lists, dicts), so it is how a rule leaves the process: `bpfgate policy export` writes it as YAML,
the engine's journal (engine/state.py) as JSON. Pure: it imports only the model, so both the engine and
policyctl can use it.
"""

from __future__ import annotations

import operator
from socket import AF_INET6, inet_ntoa, inet_ntop
from typing import Any

from .listed import data_row
from .model import CT_STATES, PROTOCOLS, TCP_FLAGS, Network, Rule, SetDef, SetRef, element_text

_PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}
_CT_NAMES = {v: k for k, v in CT_STATES.items()}
_FLAG_NAMES = {v: k for k, v in TCP_FLAGS.items()}


def _one_or_list(items: list) -> Any:
    return items[0] if len(items) == 1 else items


def _ports(ranges) -> Any:
    return _one_or_list([lo if lo == hi else f"{lo}-{hi}" for lo, hi in ranges])


def _flags(mask: int, value: int) -> str:
    words = []
    for bit in sorted(_FLAG_NAMES):
        if mask & bit:
            words.append(("" if value & bit else "!") + _FLAG_NAMES[bit])
    return ",".join(words)


def _negate(value: Any) -> Any:
    """A field's value written negated: "!" before each item."""
    return [f"!{x}" for x in value] if isinstance(value, list) else f"!{value}"


def rule_data(rule: Rule) -> dict[str, Any]:
    """A rule as the YAML fields a user would write (only what differs from the defaults)."""
    d = _rule_data(rule)
    for f in rule.negated:
        d[f] = _negate(d[f])
    return d


def set_data(sd: SetDef) -> dict[str, Any]:
    """A named set as a policy file's `sets:` entry."""
    d: dict[str, Any] = {"type": sd.type, "elements": [element_text(e) for e in sd.elements]}
    if sd.comment is not None:
        d["comment"] = sd.comment
    return d


def net_text(net: Network) -> str:
    """str(net), 3-5x faster: the C library writes the address. Its text is ipaddress's for every IPv4
    address, and for every IPv6 one but those with 80 zero bits then 0000 or ffff (it writes their last 32
    bits as a dotted quad): those go to ipaddress."""
    a = net.network_address
    if net.version == 4:
        return f"{inet_ntoa(a.packed)}/{net._prefixlen}"
    if int(a) >> 32 in (0, 0xffff):
        return str(net)
    return f"{inet_ntop(AF_INET6, a.packed)}/{net._prefixlen}"


def _rule_data(rule: Rule) -> dict[str, Any]:
    d: dict[str, Any] = {"name": rule.name}
    if rule.src is not None:
        d["src"] = str(rule.src) if isinstance(rule.src, SetRef) else _one_or_list([net_text(n) for n in rule.src])
    if rule.dst is not None:
        d["dst"] = str(rule.dst) if isinstance(rule.dst, SetRef) else _one_or_list([net_text(n) for n in rule.dst])
    if rule.protocol is not None:
        d["protocol"] = _one_or_list([_PROTO_NAMES.get(p, p) for p in rule.protocol])
    for f in ("src_port", "dst_port"):
        v = getattr(rule, f)
        if v is not None:
            d[f] = str(v) if isinstance(v, SetRef) else _ports(v)
    if rule.tcp_flags is not None:
        d["tcp_flags"] = _flags(*rule.tcp_flags)
    for f in ("icmp_type", "icmp_code"):
        if getattr(rule, f) is not None:
            d[f] = getattr(rule, f)
    if rule.vlan is not None:
        d["vlan"] = _one_or_list(list(rule.vlan))
    if rule.ct is not None:
        d["ct"] = _one_or_list([_CT_NAMES[s] for s in rule.ct])
    if rule.action != "pass":
        d["action"] = rule.action
    if rule.redirect is not None:
        # on_gone only when it is not the default: files written before it existed read back the same
        d["redirect"] = rule.redirect.model_dump(exclude={"on_gone"} if rule.redirect.on_gone == "pass" else None)
    if rule.reject is not None:
        d["reject"] = rule.reject.model_dump(by_alias=True)
    if rule.mark is not None:
        d["mark"] = rule.mark
    if rule.rate_limit is not None:
        d["rate_limit"] = rule.rate_limit.model_dump(exclude_none=True)
    if rule.log is not None:
        d["log"] = rule.log.model_dump()
    if not rule.count:
        d["count"] = False
    if rule.comment is not None:
        d["comment"] = rule.comment
    if rule.owner is not None:
        d["owner"] = rule.owner
    return d


# a rule that sets nothing but these (no set named, nothing negated) is listed without rule_data
_ADDRESS_PORT_FIELDS = ("name", "src", "dst", "protocol", "src_port", "dst_port", "action")
_OTHER_FIELDS = tuple(f for f in Rule.model_fields if f not in _ADDRESS_PORT_FIELDS)
_others = operator.itemgetter(*_OTHER_FIELDS)
_OTHER_DEFAULTS = _others({f: Rule.model_fields[f].get_default() for f in _OTHER_FIELDS})


def rule_row(rule: Rule) -> tuple:
    """(name, action, match text, options, owner, comment): a rule as `bpfgate rules` lists it."""
    v = rule.__dict__
    if _others(v) != _OTHER_DEFAULTS or isinstance(v["src"], SetRef) or isinstance(v["dst"], SetRef) or \
            isinstance(v["src_port"], SetRef) or isinstance(v["dst_port"], SetRef):
        return data_row(rule_data(rule))
    # the common rule, ~3x faster (100k of them are most of a first listing): match_text of rule_data's fields
    match = []
    if v["src"] is not None:
        match.append("src=" + ",".join([net_text(n) for n in v["src"]]))
    if v["dst"] is not None:
        match.append("dst=" + ",".join([net_text(n) for n in v["dst"]]))
    if v["protocol"] is not None:
        match.append("protocol=" + ",".join([str(_PROTO_NAMES.get(p, p)) for p in v["protocol"]]))
    for f in ("src_port", "dst_port"):
        if v[f] is not None:
            match.append(f"{f}=" + ",".join([str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in v[f]]))
    return v["name"], v["action"], " ".join(match) or "any", {}, None, None


def rule_from_data(d: dict[str, Any]) -> Rule:
    """The Rule of `rule_data(...)` output (or of any policy-file rule mapping); pydantic errors as is."""
    return Rule.model_validate(d)
