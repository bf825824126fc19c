"""YAML policy file -> validated Policy. Every error is a PolicyError whose path names the file, the line
and the field, e.g. `policy.yaml:12 hooks.tc-ingress.rules[3].dst_port: port 70000 out of range`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import PolicyError
from . import fastyaml
from .memo import ObjectMemo
from .source import MAX_BYTES, read_again, read_source  # noqa: F401 - read_source: the policy file's reader, named here too
from .model import (ICMP_PROTOCOLS, PORT_PROTOCOLS, SOCKET_HOOKS, Hook, Policy, Rule, SetRef, quick_rule,
                    share_fields_sets)

Loc = tuple  # path into the data: str keys and int list indices

# Input limits. A policy file may come from anyone who can write one: these bound what reading it costs
# (`apply /dev/zero`; a few hundred bytes of YAML aliases that expand to billions of nodes) and say so in
# one line. They are far above what a policy needs: a 1,000,000-rule file is about 60-150 MB and 5-10
# nesting levels deep; aliases may repeat a shared CIDR or port list, not multiply the file.
MAX_DEPTH = 32                    # nested mappings and lists: a policy needs 7 (hooks.H.rules[i].F[j])
ALIAS_NODES_FLOOR = 100_000       # aliases may add this many nodes to any file ...
ALIAS_NODES_RATIO = 10            # ... or this many times the nodes the file itself holds, if more


class _Loader(yaml.SafeLoader):
    """SafeLoader that notes which nodes aliases refer to (few): the builder counts what they expand to
    without remembering every node of a large file."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliased: set[int] = set()

    def compose_node(self, parent, index):
        alias = self.check_event(yaml.AliasEvent)
        node = super().compose_node(parent, index)
        if alias:
            self.aliased.add(id(node))
        return node


def _compose(text: str) -> tuple[yaml.Node | None, set[int]]:
    loader = _Loader(text)
    try:
        return loader.get_single_node(), loader.aliased
    finally:
        loader.dispose()


class _Builder:
    """Turns a composed YAML node graph into plain data, recording the line of every key and item, and
    enforcing MAX_DEPTH and the alias limits while it expands: a node an alias refers to is expanded
    again at each alias, and what it adds is counted against the nodes the file holds itself."""

    def __init__(self, source: str, lines: dict[Loc, int], aliased: set[int]):
        self.source, self.lines, self.aliased = source, lines, aliased
        self.expanded: set[int] = set()   # aliased nodes met once (their anchor)
        self.own = 0
        self.by_alias = 0

    def _count(self, node: yaml.Node, loc: Loc, by_alias: bool) -> bool:
        """Whether this node (and so everything under it) is an alias's expansion."""
        if len(loc) > MAX_DEPTH:
            raise PolicyError(f"{self.source}:{node.start_mark.line + 1}",
                              f"nested deeper than {MAX_DEPTH} levels, the limit for a policy file")
        if not by_alias and id(node) in self.aliased:
            by_alias = id(node) in self.expanded
            self.expanded.add(id(node))
        if not by_alias:
            self.own += 1
            return False
        self.by_alias += 1
        limit = max(ALIAS_NODES_FLOOR, ALIAS_NODES_RATIO * self.own)
        if self.by_alias > limit:
            raise PolicyError(f"{self.source}:{node.start_mark.line + 1}",
                              f"YAML aliases expand to more than {limit:,} nodes (limit: {ALIAS_NODES_RATIO} "
                              f"times the file's own, at least {ALIAS_NODES_FLOOR:,})")
        return True

    def plain(self, node: yaml.Node, loc: Loc, by_alias: bool = False):
        by_alias = self._count(node, loc, by_alias)
        lines, source = self.lines, self.source
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
                out[key] = self.plain(vnode, loc + (key,), by_alias)
                lines[loc + (key,)] = knode.start_mark.line + 1  # point at the key, not the value below it
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(v, loc + (i,), by_alias) for i, v in enumerate(node.value)]
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


def _reason(err: dict, shown: Loc) -> str:
    """The error's message; an unknown field named when the path `shown` stops above it (a shorthand such
    as `action: {reject: {...}}` has no place in the file for the fields below it)."""
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err["type"] in ("model_type", "dict_type"):   # pydantic names the class it would have built
        return "should be a mapping (key: value, ...)"
    if err["type"] == "extra_forbidden":
        field = err["loc"][-1] if err["loc"] else None
        return "unknown field" if not isinstance(field, str) or shown[-1:] == (field,) else f"unknown field {field!r}"
    return msg


def load_text(text: str, source: str = "<policy>", again: Callable[[], str | None] | None = None) -> Policy:
    """The policy of `text`. `again` gives the text once more (None when it is no longer this text): the
    compiler's errors, found after reading, name their line from it; without it the policy keeps the text."""
    policy = _loaded(text, source)
    later = again or (lambda: text)
    where = _Where(source, _LazyLines(lambda lines: _fill_lines(later(), source, lines)))
    for hp in policy.hooks.values():
        _WHERE.put(hp, where)
    return policy


def _loaded(text: str, source: str) -> Policy:
    if len(text) > MAX_BYTES:
        raise PolicyError(source, f"larger than {MAX_BYTES // 2**20} MiB, the limit for a policy file")
    data = fastyaml.parse(text)   # None: outside what the fast reader takes; PyYAML reads it below
    if data is not None:
        # the lines are only needed for an error: read again with them then (as cheap as without)
        return _validated(data, _Where(source, _LazyLines(lambda lines: fastyaml.parse(text, lines))))
    data = _json(text)
    if data is not None:   # the lines of an error: from PyYAML's reading (JSON is YAML), done only then
        return _validated(data, _Where(source, _LazyLines(lambda lines: _yaml_lines(text, source, lines))))
    lines: dict[Loc, int] = {}
    try:
        root, aliased = _compose(text)
        if root is None:
            raise PolicyError(source, "empty policy file")
        data = _Builder(source, lines, aliased).plain(root, ())   # scalars are constructed here: tags can fail
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise PolicyError(where, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:   # the composer recurses per nesting level
        raise PolicyError(source, f"nested deeper than {MAX_DEPTH} levels, the limit for a policy file") from None
    return _validated(data, _Where(source, lines))


class _NotPlainJson(Exception):
    """JSON that PyYAML reads otherwise (or refuses with a better message): PyYAML reads it."""


def _unique_keys(pairs):
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _NotPlainJson   # a duplicate key: an error with its line
    return out


def _plain_float(s: str) -> float:
    if "e" in s or "E" in s:
        raise _NotPlainJson   # YAML 1.1 reads 1e3 as text, 1.0e+3 as a number
    return float(s)


def _no_constant(s: str):
    raise _NotPlainJson   # NaN, Infinity


def _json(text: str):
    """A JSON policy (what scripts write) read by the json module: 100k rules in ~0.3 s, where PyYAML's reader
    takes ~30 s. None when the text is not JSON, or holds what YAML reads otherwise (duplicate keys, exponent
    floats, NaN): the YAML reader then reads it, as before."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_float=_plain_float,
                          parse_constant=_no_constant)
    except (ValueError, RecursionError, _NotPlainJson):   # JSONDecodeError is a ValueError
        return None


def _yaml_lines(text: str, source: str, lines: dict) -> None:
    """Fill `lines` (path -> line) as the YAML reader records them."""
    try:
        root, aliased = _compose(text)
        _Builder(source, lines, aliased).plain(root, ())
    except (yaml.YAMLError, PolicyError, RecursionError):   # the error is reported without its line
        pass


def _fill_lines(text: str | None, source: str, lines: dict) -> None:
    """Fill `lines` (path -> line) from a policy's text, read by the reader that read it (none: no lines)."""
    if text is not None and fastyaml.parse(text, lines) is None:
        lines.clear()
        _yaml_lines(text, source, lines)


# per hook policy read from a file: its `file:line path` formatter, for the errors found after reading it
_WHERE = ObjectMemo()


def where_of(hp) -> Callable[[Loc], str] | None:
    """How to name a place in the file this very HookPolicy was read from (None: not read from one)."""
    return _WHERE.get(hp)


class _LazyLines(dict):
    """The lines of a path and of the paths above it, filled by `fill(self)` when first looked up: only those
    are kept (a 100k-rule file has ~400k paths; their lines would outweigh its policy)."""

    def __init__(self, fill):
        super().__init__()
        self._fill, self._wanted = fill, frozenset()

    def __setitem__(self, loc, line) -> None:
        if loc in self._wanted:
            super().__setitem__(loc, line)

    def __contains__(self, loc) -> bool:
        if loc not in self._wanted:   # _Where asks for a path, then for the paths above it
            self.clear()
            self._wanted = frozenset(loc[:n] for n in range(len(loc) + 1))
            self._fill(self)
        return super().__contains__(loc)


def _validated(data, where: _Where) -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(where(()), "a policy is a mapping (interfaces, hooks)")
    try:
        policy = Policy.model_validate(_quick_rules(data))
    except ValidationError as e:
        err = e.errors()[0]
        shown = _data_loc(data, err["loc"])
        raise PolicyError(where(shown), _reason(err, shown)) from None
    check(policy, where)
    for hp in policy.hooks.values():
        share_fields_sets(hp.rules)
    return policy


def _quick_rules(data: dict) -> dict:
    """`data` with its rule mappings of the common form made Rules already (quick_rule), which pydantic
    takes as they are. `data` itself is left as read: an error's line is found in it."""
    hooks = data.get("hooks")
    if type(hooks) is not dict:
        return data
    out = {}
    for name, hp in hooks.items():
        rules = hp.get("rules") if type(hp) is dict else None
        out[name] = {**hp, "rules": [quick_rule(r) or r for r in rules]} if type(rules) is list else hp
    return {**data, "hooks": out}


def load_file(path: str | Path) -> Policy:
    text, source = read_source(path)
    return load_text(text, source, read_again(path, text))


def check(policy: Policy, where=None) -> None:
    """Cross-field rules that the field types cannot say. Raises PolicyError at the offending field."""
    from .sets import ref_problem, set_problem

    where = where or _Where("<policy>", {})
    for name, sd in policy.sets.items():
        problem = set_problem(sd)
        if problem:
            raise PolicyError(where(("sets", name, "elements", problem[0])), problem[1])
    for hook, hp in policy.hooks.items():
        for name, sd in hp.sets.items() if hp.sets is not policy.sets else ():   # sets written under a hook
            problem = set_problem(sd)
            if problem:
                raise PolicyError(where(("hooks", hook.value, "sets", name, "elements", problem[0])), problem[1])
        seen: dict[str, int] = {}
        packet_hook = hook not in SOCKET_HOOKS
        for i, rule in enumerate(hp.rules):
            if rule.name in seen:
                raise PolicyError(where(("hooks", hook.value, "rules", i, "name")),
                                  f"rule name {rule.name!r} already used by rules[{seen[rule.name]}]")
            seen[rule.name] = i
            d = rule.__dict__
            if packet_hook and rule.__pydantic_fields_set__ <= _ADDRESS_ONLY and d["action"] in ("pass", "drop") \
                    and (d["src"] is None or d["dst"] is None) and type(d["src"]) is not SetRef \
                    and type(d["dst"]) is not SetRef:
                continue   # most rules of a large policy: nothing below can be wrong with them
            if rule.owner is not None:
                raise PolicyError(where(("hooks", hook.value, "rules", i, "owner")), "owner is set by the program "
                                  "that adds a rule (e.g. `bpfgate syn --block`), not in a policy file")
            problem = rule_problem(rule, hook) or ref_problem(rule, policy.sets)
            if problem:
                field, reason = problem
                raise PolicyError(where(("hooks", hook.value, "rules", i) + ((field,) if field else ())), reason)
        _mark_checked(hp, hook)


# fields of a rule that rule_problem() and ref_problem() find nothing wrong with, for a packet hook, when its
# action is pass or drop, it has one of src/dst and names no set
_ADDRESS_ONLY = frozenset({"name", "src", "dst", "action", "negated", "comment", "count"})


# the hook policies whose rules check() found compilable, and for which hook: the compiler does not ask
# rule_problem of their rules again (~0.1 s at 100k rules)
_CHECKED = ObjectMemo()


def _mark_checked(hp, hook: Hook) -> None:
    _CHECKED.put(hp, hook)


def checked(hp) -> bool:
    """Whether check() passed this very HookPolicy (for its hook): its rules have no owner, among others."""
    return hp in _CHECKED


def checked_for(hp, hook: Hook) -> bool:
    """Whether check() found every rule of this very HookPolicy compilable for `hook`."""
    return _CHECKED.get(hp) is hook


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
    if isinstance(rule.src, tuple) and isinstance(rule.dst, tuple) and rule.src and rule.dst:
        # the families written (a negated prefix stays within its family; a set may hold both)
        fam = {n.version for n in rule.src} & {n.version for n in rule.dst}
        if not fam:
            return "dst", "src and dst are of different address families: the rule can never match"
    if rule.action == "redirect" and rule.redirect is None:
        return "redirect", "action redirect needs redirect: {interface: NAME, direction: egress|ingress}"
    if rule.redirect is not None and rule.action != "redirect":
        return "redirect", f"redirect given but action is {rule.action}"
    if rule.reject is not None and rule.action != "reject":
        return "reject", f"reject options given but action is {rule.action}"
    if hook is Hook.XDP:
        if rule.mark is not None:
            return "mark", "mark is not possible at xdp (no socket buffer yet); use tc-ingress"
        if rule.redirect is not None and rule.redirect.direction == "ingress":
            return "redirect", "xdp can only redirect to an interface's egress; use tc-ingress for ingress"
        if rule.action == "reject":
            return "action", ("reject is not supported at xdp (its replies are built at tc): use tc-ingress, "
                              "or drop at xdp")
    if hook in SOCKET_HOOKS:   # an address of a socket call, not a packet
        for f in ("tcp_flags", "icmp_type", "icmp_code", "ct", "mark"):
            if getattr(rule, f) is not None:
                return f, f"{hook.value} sees a socket call's address and port, not packets: no {f}"
        if rule.rate_limit is not None and rule.rate_limit.unit == "bytes":
            return "rate_limit", f"{hook.value} counts calls: rate_limit unit packets (calls) only"
        wrong = ("dst", "dst_port") if hook is Hook.CGROUP_BIND else ("src", "src_port")
        for f in wrong:
            if getattr(rule, f) is not None:
                side = "local address: src, src_port" if hook is Hook.CGROUP_BIND else "destination: dst, dst_port"
                return f, f"{hook.value} matches the {side}"
    if hook.on_cgroup:
        if rule.redirect is not None:
            return "redirect", "a cgroup hook can only pass or drop (cgroup_skb cannot redirect); use a tc hook"
        if rule.action == "reject":
            return "action", "a cgroup hook can only pass or drop (its replies are built at tc): use a tc hook"
        if rule.vlan is not None:
            return "vlan", "a cgroup hook sees packets from their IP header on: no VLAN tag to match"
    if rule.mark is not None and rule.action in ("drop", "reject"):
        return "mark", f"mark on a {'dropped' if rule.action == 'drop' else 'rejected'} packet has no effect"
    return None
