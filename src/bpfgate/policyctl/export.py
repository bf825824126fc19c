"""Running policy -> YAML that re-applies to the same state, and multi-document policy files.

`rule_data(rule)` (defined in bpfgate.policy.ruledata, importable from here) is the inverse of the model's
validators: `Rule.model_validate(rule_data(r)) == r` for every valid rule (unit-tested), so
`bpfgate policy export | bpfgate apply -` changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from bpfgate.cgroups import is_cgroup
from bpfgate.errors import PolicyError
from bpfgate.policy.model import Hook, HookPolicy, Policy
from bpfgate.policy.parse import load_text, read_source
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


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=None, width=110)


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
    return load_documents(docs, source)


def load_documents(docs: list[tuple[int, str]], source: str) -> list[Policy]:
    """split_documents()'s documents, validated (line numbers: the whole file's)."""
    out: list[Policy] = []
    seen: dict[str, int] = {}
    for n, (start, doc) in enumerate(docs):
        p = load_text("\n" * start + doc, source)   # padding keeps the file's line numbers
        for dev in (*p.interfaces, *p.cgroups):
            if dev in seen:
                kind = "cgroups" if is_cgroup(dev) else "interfaces"
                raise PolicyError(f"{source}:{start + 1} {kind}",
                                  f"{kind[:-1]} {dev!r} is already in document {seen[dev] + 1}")
            seen[dev] = n
        out.append(p)
    return out


def read_policy_file(path: str | Path) -> tuple[str, str]:
    """(text, name for errors) of a policy file (`-` is stdin). Size and encoding limits: parse.read_source."""
    return read_source(path)


def load_policy_file(path: str | Path) -> list[Policy]:
    """A policy file (`-` is stdin) -> its documents."""
    return load_policies(*read_policy_file(path))


def desired_state(policies: Iterable[Policy]) -> dict[tuple[str, Hook], HookPolicy]:
    return {(dev, hook): hp for p in policies for hook, hp in p.hooks.items() for dev in p.targets(hook)}
