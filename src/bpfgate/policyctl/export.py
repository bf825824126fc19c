"""Running policy -> YAML that re-applies to the same state, and multi-document policy files.

`rule_data(rule)` is the inverse of the model's validators: `Rule.model_validate(rule_data(r)) == r` for
every valid rule (unit-tested), so `bpfgate policy export | bpfgate apply -` changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from bpfgate.errors import PolicyError
from bpfgate.policy.model import (
    CT_STATES,
    PROTOCOLS,
    TCP_FLAGS,
    Hook,
    HookPolicy,
    Policy,
    Rule,
)
from bpfgate.policy.parse import load_text

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


def rule_data(rule: Rule) -> dict[str, Any]:
    """A rule as the YAML fields a user would write (only what differs from the defaults)."""
    d: dict[str, Any] = {"name": rule.name}
    if rule.src is not None:
        d["src"] = _one_or_list([str(n) for n in rule.src])
    if rule.dst is not None:
        d["dst"] = _one_or_list([str(n) for n in rule.dst])
    if rule.protocol is not None:
        d["protocol"] = _one_or_list([_PROTO_NAMES.get(p, p) for p in rule.protocol])
    if rule.src_port is not None:
        d["src_port"] = _ports(rule.src_port)
    if rule.dst_port is not None:
        d["dst_port"] = _ports(rule.dst_port)
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
        d["redirect"] = rule.redirect.model_dump()
    if rule.mark is not None:
        d["mark"] = rule.mark
    if rule.rate_limit is not None:
        d["rate_limit"] = rule.rate_limit.model_dump(exclude_none=True)
    if rule.log is not None:
        d["log"] = rule.log.model_dump()
    if not rule.count:
        d["count"] = False
    return d


def hook_data(hp: HookPolicy) -> dict[str, Any]:
    return {"default": hp.default, "rules": [rule_data(r) for r in hp.rules]}


def policy_data(policy: Policy) -> dict[str, Any]:
    return {"version": policy.version, "interfaces": list(policy.interfaces),
            "hooks": {h.value: hook_data(hp) for h, hp in policy.hooks.items()}}


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110)


def policies_of(state: dict[tuple[str, Hook], HookPolicy]) -> list[Policy]:
    """Running hooks (dev, hook) -> HookPolicy as the fewest Policy documents: interfaces with identical
    hook sets share one document (the policy file's model applies one hook set to all its interfaces)."""
    per_dev: dict[str, dict[Hook, HookPolicy]] = {}
    for (dev, hook), hp in sorted(state.items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        per_dev.setdefault(dev, {})[hook] = hp
    groups: list[tuple[list[str], dict[Hook, HookPolicy]]] = []
    for dev, hooks in per_dev.items():
        for devs, same in groups:
            if same == hooks:
                devs.append(dev)
                break
        else:
            groups.append(([dev], hooks))
    return [Policy(interfaces=list(devs), hooks=hooks) for devs, hooks in groups]


def export_text(state: dict[tuple[str, Hook], HookPolicy], header: str | None = None) -> str:
    """YAML (several documents when interfaces differ) that `apply` turns back into `state`."""
    docs = [dump(policy_data(p)) for p in policies_of(state)]
    text = "---\n".join(docs)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return text


# ---- reading policy files with several documents -------------------------------------------------------

def split_documents(text: str) -> list[tuple[int, str]]:
    """(first line index, text) of each YAML document separated by `---` lines; blank documents dropped."""
    docs, start, cur = [], 0, []
    for i, line in enumerate(text.splitlines(keepends=True)):
        if line.rstrip() == "---" or line.startswith("--- "):
            docs.append((start, "".join(cur)))
            start, cur = i, [line[3:].lstrip() if line.startswith("--- ") else "\n"]
            continue
        cur.append(line)
    docs.append((start, "".join(cur)))
    return [(s, d) for s, d in docs if any(ln.strip() and not ln.lstrip().startswith("#")
                                           for ln in d.splitlines())]


def load_policies(text: str, source: str = "<policy>") -> list[Policy]:
    """Every document of a policy file, validated; line numbers in errors are those of the whole file.
    An interface may appear in one document only."""
    docs = split_documents(text)
    if not docs:
        raise PolicyError(source, "empty policy file")
    out: list[Policy] = []
    seen: dict[str, int] = {}
    for n, (start, doc) in enumerate(docs):
        p = load_text("\n" * start + doc, source)   # padding keeps the file's line numbers
        for dev in p.interfaces:
            if dev in seen:
                raise PolicyError(f"{source}:{start + 1} interfaces",
                                  f"interface {dev!r} is already in document {seen[dev] + 1}")
            seen[dev] = n
        out.append(p)
    return out


def load_policy_file(path: str | Path) -> list[Policy]:
    """A policy file (`-` is stdin) -> its documents."""
    import sys

    if str(path) == "-":
        return load_policies(sys.stdin.read(), "<stdin>")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PolicyError(str(path), f"cannot read: {e.strerror}") from None
    return load_policies(text, path.name)


def desired_state(policies: Iterable[Policy]) -> dict[tuple[str, Hook], HookPolicy]:
    return {(dev, hook): hp for p in policies for dev in p.interfaces for hook, hp in p.hooks.items()}
