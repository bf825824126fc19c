"""YAML policy file -> validated Policy. Every error is a PolicyError whose path names the file, the line
and the field, e.g. `policy.yaml:12 hooks.tc-ingress.rules[3].dst_port: port 70000 out of range`."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import PolicyError
from .model import ICMP_PROTOCOLS, PORT_PROTOCOLS, Hook, Policy, Rule

Loc = tuple  # path into the data: str keys and int list indices


def _plain(node: yaml.Node, loc: Loc, lines: dict[Loc, int], source: str):
    """Turn a composed YAML node into plain data, recording the line of every key and item."""
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for knode, vnode in node.value:
            key = _scalar(knode)
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise PolicyError(f"{source}:{knode.start_mark.line + 1} {_fmt(loc)}", "keys must be plain names")
            key = str(key)
            if key in out:
                raise PolicyError(f"{source}:{knode.start_mark.line + 1} {_fmt(loc + (key,))}", "duplicate key")
            out[key] = _plain(vnode, loc + (key,), lines, source)
            lines[loc + (key,)] = knode.start_mark.line + 1  # point at the key, not the value below it
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v, loc + (i,), lines, source) for i, v in enumerate(node.value)]
    return _scalar(node)


_constructor = yaml.constructor.SafeConstructor()


def _scalar(node: yaml.Node):
    if not isinstance(node, yaml.ScalarNode):
        return None  # a mapping used as a key: rejected by the caller
    return _constructor.construct_object(node)


def _fmt(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


class _Where:
    """Formats `file:line path` for a location, using the closest recorded line."""

    def __init__(self, source: str, lines: dict[Loc, int]):
        self.source, self.lines = source, lines

    def __call__(self, loc: Loc) -> str:
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.lines:
                return f"{self.source}:{self.lines[loc[:n]]} {_fmt(loc)}"
        return f"{self.source} {_fmt(loc)}"


def _data_loc(data, loc) -> Loc:
    """Keep the part of a pydantic error location that is a real path in the data (drop union tags)."""
    out, cur = (), data
    for part in loc:
        if part == "[key]":
            break
        if isinstance(cur, dict) and isinstance(part, str):
            out += (part,)
            if part not in cur:
                break  # a missing field: name it, nothing below
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out += (part,)
            cur = cur[part]
        # anything else is a pydantic union/validator tag, not a place in the file
    return out


def _reason(err: dict) -> str:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err["type"] == "extra_forbidden":
        return "unknown field"
    return msg


def load_text(text: str, source: str = "<policy>") -> Policy:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise PolicyError(where, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if root is None:
        raise PolicyError(source, "empty policy file")
    lines: dict[Loc, int] = {}
    data = _plain(root, (), lines, source)
    where = _Where(source, lines)
    if not isinstance(data, dict):
        raise PolicyError(where(()), "a policy is a mapping (interfaces, hooks)")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise PolicyError(where(_data_loc(data, err["loc"])), _reason(err)) from None
    check(policy, where)
    return policy


def load_file(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(str(path), f"cannot read: {e.strerror}") from None
    return load_text(text, path.name)


def check(policy: Policy, where=None) -> None:
    """Cross-field rules that the field types cannot say. Raises PolicyError at the offending field."""
    where = where or _Where("<policy>", {})
    for hook, hp in policy.hooks.items():
        seen: dict[str, int] = {}
        for i, rule in enumerate(hp.rules):
            base = ("hooks", hook.value, "rules", i)
            if rule.name in seen:
                raise PolicyError(where(base + ("name",)), f"rule name {rule.name!r} already used by rules[{seen[rule.name]}]")
            seen[rule.name] = i
            if rule.owner is not None:
                raise PolicyError(where(base + ("owner",)), "owner is set by the program that adds a rule "
                                  "(e.g. `bpfgate syn --block`), not in a policy file")
            problem = rule_problem(rule, hook)
            if problem:
                field, reason = problem
                raise PolicyError(where(base + ((field,) if field else ())), reason)


def rule_problem(rule: Rule, hook: Hook) -> tuple[str | None, str] | None:
    """(field, reason) when a rule cannot be compiled for this hook; None when it is fine."""
    protos = set(rule.matching("protocol") or ())
    for f in ("src_port", "dst_port"):
        if getattr(rule, f) is not None and (not protos or protos - PORT_PROTOCOLS):
            return f, "ports need protocol tcp, udp or sctp (and only those)"
    if rule.tcp_flags is not None and protos != {6}:
        return "tcp_flags", "tcp_flags needs protocol tcp"
    for f in ("icmp_type", "icmp_code"):
        if getattr(rule, f) is not None and (not protos or protos - ICMP_PROTOCOLS):
            return f, f"{f} needs protocol icmp or icmpv6"
    if rule.src and rule.dst:   # the families written (a negated prefix stays within its family)
        fam = {n.version for n in rule.src} & {n.version for n in rule.dst}
        if not fam:
            return "dst", "src and dst are of different address families: the rule can never match"
    if rule.action == "redirect" and rule.redirect is None:
        return "redirect", "action redirect needs redirect: {interface: NAME, direction: egress|ingress}"
    if rule.redirect is not None and rule.action != "redirect":
        return "redirect", f"redirect given but action is {rule.action}"
    if hook is Hook.XDP:
        if rule.mark is not None:
            return "mark", "mark is not possible at xdp (no socket buffer yet); use tc-ingress"
        if rule.redirect is not None and rule.redirect.direction == "ingress":
            return "redirect", "xdp can only redirect to an interface's egress; use tc-ingress for ingress"
    if rule.mark is not None and rule.action == "drop":
        return "mark", "mark on a dropped packet has no effect"
    return None
