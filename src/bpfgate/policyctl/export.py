"""Running policy -> YAML that re-applies to the same state, and multi-document policy files.

`rule_data(rule)` (defined in bpfgate.policy.ruledata, importable from here) is the inverse of the model's
validators: `Rule.model_validate(rule_data(r)) == r` for every valid rule (unit-tested), so
`bpfgate policy export | bpfgate apply -` changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from bpfgate.cgroups import is_cgroup
from bpfgate.errors import PolicyError
from bpfgate.policy.model import Hook, HookPolicy, Policy
from bpfgate.policy.parse import load_text, read_again, read_source
from bpfgate.policy.ruledata import rule_data, set_data


def hook_data(hp: HookPolicy) -> dict[str, Any]:
    return {"default": hp.default, "rules": [rule_data(r) for r in hp.rules]}


def policy_data(policy: Policy) -> dict[str, Any]:
    targets = {"interfaces": list(policy.interfaces)} if policy.interfaces else {}
    if policy.cgroups:
        targets["cgroups"] = list(policy.cgroups)
    sets = dict(policy.sets)
    for hp in policy.hooks.values():   # a running hook carries the sets (as edited live)
        for name, sd in hp.sets.items():
            sets.setdefault(name, sd)
    named = {"sets": {name: set_data(sd) for name, sd in sets.items()}} if sets else {}
    return {"version": policy.version, **targets, **named,
            "hooks": {h.value: hook_data(hp) for h, hp in policy.hooks.items()}}


# libyaml's emitter when PyYAML has it: the same text as the pure-Python one, ~3x faster (export at 100k rules)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _yaml(data: Any, indent: int = 0) -> str:
    """`data` as the emitter writes it, placed `indent` columns in (lines folded where they would be there)."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=None, width=110 - indent)


# Scalars as the emitter writes them, without building its events: names and words (not YAML 1.1's
# booleans and null), IPv4 CIDRs and port ranges plain; IPv6 CIDRs plain in a block, quoted in a flow
# collection; anything else by the emitter's own analysis; None when it would need more than single quotes.
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*|\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?|\d+-\d+")
_IPV6 = re.compile(r"[0-9a-f:]*:[0-9a-f:.]*/\d{1,3}")
_YAML11_WORDS = frozenset({"y", "yes", "n", "no", "true", "false", "on", "off", "null"})
_STR_TAG = "tag:yaml.org,2002:str"


def _analysis(text: str):
    return yaml.emitter.Emitter(None).analyze_scalar(text)


def _scalar(v: Any, flow: bool) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if not isinstance(v, str) or not v:
        return None
    if _PLAIN.fullmatch(v) and v.lower() not in _YAML11_WORDS:
        return v
    if _IPV6.fullmatch(v):
        return f"'{v}'" if flow else v
    a = _analysis(v)
    if a.multiline or not v.isascii():
        return None
    if ((a.allow_flow_plain if flow else a.allow_block_plain)
            and yaml.resolver.Resolver().resolve(yaml.ScalarNode, v, (True, False)) == _STR_TAG):
        return v
    return f"'{v}'" if a.allow_single_quoted and "'" not in v else None


# a list longer than this (a blocklist written in the rule) is written one item a line, not as a flow list
# the emitter would fold over many lines: the fast reader reads it, and an error names its item's line
LONG_LIST = 16


def _rule_text(rule: dict[str, Any], indent: str) -> str | None:
    """A rule of scalars and lists of scalars as the emitter writes it (one flow mapping when every value is
    a scalar, else a block mapping of flow lists; a list past LONG_LIST items a block list), or None when it
    needs the emitter (other values, or a line long enough that the emitter might fold it)."""
    fields = []   # (key, text, or the item texts of a block list; whether a list)
    for k, v in rule.items():
        if isinstance(v, list):
            block_list = len(v) > LONG_LIST
            items = [_scalar(x, flow=not block_list) for x in v]
            if not items or None in items:
                return None
            fields.append((k, items if block_list else "[" + ", ".join(items) + "]", True))
        else:
            fields.append((k, v, False))
    block = any(is_list for _k, _t, is_list in fields)   # the emitter's rule: a mapping of scalars is a flow one
    for i, (k, v, is_list) in enumerate(fields):
        if not is_list:
            text = _scalar(v, flow=not block)
            if text is None:
                return None
            fields[i] = (k, text, False)
    if block:
        lines = []
        for i, (k, t, _l) in enumerate(fields):
            head = f"{indent}{'- ' if i == 0 else '  '}{k}:"
            if isinstance(t, list):
                lines.append(head)
                lines += [f"{indent}  - {x}" for x in t]
            else:
                lines.append(f"{head} {t}")
    else:
        lines = [indent + "- {" + ", ".join(f"{k}: {t}" for k, t, _l in fields) + "}"]
    if any(len(ln) > 100 for ln in lines):
        return None
    return "\n".join(lines) + "\n"


def _rules_text(rules: list[dict[str, Any]], indent: str) -> str:
    out = []
    for r in rules:
        text = _rule_text(r, indent)
        if text is None:
            text = "".join(indent + ln for ln in _yaml([r], len(indent)).splitlines(keepends=True))
        out.append(text)
    return "".join(out)


_RULES_TOKEN = re.compile(r"^( *)- \{bpfgate-rules: (\d+)\}\n", re.M)


def dump(data: Any) -> str:
    """YAML of a policy document (or any data); a policy's rules are written line by line, the rest by the
    emitter (a 100k-rule export is then ~the time of writing its lines, not of emitting 100k mappings)."""
    hooks = data.get("hooks") if isinstance(data, dict) else None
    if not isinstance(hooks, dict) or not any(isinstance(h, dict) and h.get("rules") for h in hooks.values()):
        return _yaml(data)
    lists, shell = [], dict(data, hooks={})
    for name, h in hooks.items():
        if isinstance(h, dict) and h.get("rules"):
            lists.append(h["rules"])
            h = dict(h, rules=[{"bpfgate-rules": len(lists) - 1}])   # one line the rules then replace
        shell["hooks"][name] = h
    return _RULES_TOKEN.sub(lambda m: _rules_text(lists[int(m.group(2))], m.group(1)), _yaml(shell))


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
    return [Policy(cgroups=list(devs), hooks=hooks) if is_cgroup(devs[0]) else Policy(interfaces=list(devs), hooks=hooks)
            for devs, hooks in groups]


def export_text(state: dict[tuple[str, Hook], HookPolicy], header: str | None = None,
                more: Iterable[dict[str, Any]] = ()) -> str:
    """YAML (several documents when interfaces differ) that `apply` turns back into `state`; `more`: other
    documents as data (the steering's and the NAT's), after the engines'."""
    docs = [dump(policy_data(p)) for p in policies_of(state)] + [dump(d) for d in more]
    text = "---\n".join(docs)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return text


# ---- reading policy files with several documents -------------------------------------------------------

def split_documents(text: str) -> list[tuple[int, str]]:
    """(first line index, text) of each YAML document separated by `---` lines; blank documents dropped."""
    if "---" not in text:   # one document: no line-by-line walk (~0.1 s for a 100k-rule file)
        return [(0, text)] if _has_content(text) else []
    return [(s, d) for s, d in _walk_documents(text) if _has_content(d)]


def _walk_documents(text: str) -> list[tuple[int, str]]:
    """Every document, blank ones too, found by a walk over the lines."""
    docs, start, cur = [], 0, []
    for i, line in enumerate(text.splitlines(keepends=True)):
        if line.rstrip() == "---" or line.startswith("--- "):
            docs.append((start, "".join(cur)))
            start, cur = i, [line[3:].lstrip() if line.startswith("--- ") else "\n"]
            continue
        cur.append(line)
    docs.append((start, "".join(cur)))
    return docs


def _has_content(doc: str) -> bool:
    """A line that is neither blank nor a comment (looked for in the first lines first: a policy file's
    first key is there, and its 300k lines need not be split to find it)."""
    head = doc[:4096].splitlines()[:-1]   # the last piece may be a part of a line
    return any(_content(ln) for ln in head) or any(_content(ln) for ln in doc.splitlines())


def _content(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def load_policies(text: str, source: str = "<policy>", again: Callable[[], str | None] | None = None) -> list[Policy]:
    """Every document of a policy file, validated; line numbers in errors are those of the whole file.
    An interface may appear in one document only. `again`: the file's text read once more (parse.load_text)."""
    docs = split_documents(text)
    if not docs:
        raise PolicyError(source, "empty policy file")
    return load_documents(docs, source, again)


def load_documents(docs: list[tuple[int, str]], source: str,
                   again: Callable[[], str | None] | None = None) -> list[Policy]:
    """split_documents()'s documents, validated (line numbers: the whole file's). `again`: the whole file's
    text read once more, for the lines of the compiler's errors (without it each policy keeps its text)."""
    out: list[Policy] = []
    seen: dict[str, int] = {}
    for n, (start, doc) in enumerate(docs):
        # padding keeps the file's line numbers
        p = load_text("\n" * start + doc, source, _document_again(again, start) if again else None)
        for dev in (*p.interfaces, *p.cgroups):
            if dev in seen:
                kind = "cgroups" if is_cgroup(dev) else "interfaces"
                raise PolicyError(f"{source}:{start + 1} {kind}",
                                  f"{kind[:-1]} {dev!r} is already in document {seen[dev] + 1}")
            seen[dev] = n
        out.append(p)
    return out


def _document_again(again: Callable[[], str | None], start: int) -> Callable[[], str | None]:
    """The document starting at line index `start` of the file's text read again, padded as it was read."""
    def doc() -> str | None:
        text = again()
        found = [d for s, d in split_documents(text) if s == start] if text is not None else []
        return "\n" * start + found[0] if found else None
    return doc


def read_policy_file(path: str | Path) -> tuple[str, str]:
    """(text, name for errors) of a policy file (`-` is stdin). Size and encoding limits: parse.read_source."""
    return read_source(path)


def load_policy_file(path: str | Path) -> list[Policy]:
    """A policy file (`-` is stdin) -> its documents."""
    text, source = read_policy_file(path)
    return load_policies(text, source, read_again(path, text))


def desired_state(policies: Iterable[Policy]) -> dict[tuple[str, Hook], HookPolicy]:
    return {(dev, hook): hp for p in policies for hook, hp in p.hooks.items() for dev in p.targets(hook)}
