"""What the agent's policy directory asks for: every policy file in it, read on its own (a bad file is
reported and leaves the others alone), its interface entries expanded against the interfaces that exist
now (`veth*`, `eth[0-3]`: shell patterns, as container hosts need)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass, field

from bpfgate.errors import BpfgateError
from bpfgate.policy.model import Hook, HookPolicy, Policy

SUFFIXES = (".yaml", ".yml", ".json")
Key = tuple[str, Hook]


@dataclass
class PolicyFile:
    path: str
    digest: str                                         # of the text and of the interfaces it expanded to
    policies: list[Policy] = field(default_factory=list)   # one per concrete interface
    error: str | None = None

    @property
    def keys(self) -> list[Key]:
        return [(dev, hook) for p in self.policies for dev in p.interfaces for hook in p.hooks]


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def policy_files(directory: str) -> list[str]:
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise BpfgateError(f"read policy directory {directory}", e.strerror or str(e)) from None
    return [os.path.join(directory, n) for n in names
            if n.endswith(SUFFIXES) and not n.startswith(".") and os.path.isfile(os.path.join(directory, n))]


def read(directory: str, interfaces: list[str], parsed: dict | None = None) -> list[PolicyFile]:
    """Every policy file, each with its policies per concrete interface or its error. An interface two
    files claim goes to the first file (by name); the second is in error. `parsed` ({path: (digest of its
    bytes, its documents, its text)}, kept by the caller between rounds): a file whose bytes did not change is
    not read again (a round every few seconds must not parse a 100k-rule file each time), and one that
    changed a few rules is read only where it changed."""
    from bpfgate.policyctl import incremental
    from bpfgate.policyctl.export import load_policies, read_policy_file

    out: list[PolicyFile] = []
    claimed: dict[str, str] = {}
    cache = parsed if parsed is not None else {}
    paths = policy_files(directory)
    for gone in set(cache) - set(paths):
        del cache[gone]
    for path in paths:
        try:
            decoded, name = read_policy_file(path)
            text = decoded.encode("utf-8", "surrogatepass")
            raw = hashlib.sha256(text).hexdigest()
            hit = cache.pop(path, None)
            if hit is not None and hit[0] == raw:
                docs = hit[1]
            else:   # a few rules changed: only they are read (policyctl/incremental.py)
                docs = (hit is not None and incremental.patched(decoded, hit[2], hit[1], name)) or \
                    load_policies(decoded, name)
            cache[path] = (raw, docs, decoded)
        except (OSError, BpfgateError) as e:
            out.append(PolicyFile(path, "", error=str(e)))
            continue
        policies, error = [], None
        for doc in docs:
            if doc.cgroups:   # the agent keeps interfaces in step; a cgroup's engine is applied by hand
                error = f"{path}: the agent does not keep cgroup policies (cgroups:); `bpfgate apply` them"
                break
            for entry in doc.interfaces:
                devs = sorted(fnmatch.filter(interfaces, entry)) if is_pattern(entry) else [entry]
                for dev in devs:
                    if claimed.get(dev, path) != path:
                        error = f"{path}: interface {dev} is already in {claimed[dev]}"
                        break
                    claimed[dev] = path
                    policies.append(Policy(interfaces=[dev], hooks=dict(doc.hooks)))
        expanded = ",".join(sorted(d for p in policies for d in p.interfaces))
        digest = hashlib.sha256(text + b"\0" + expanded.encode()).hexdigest()
        out.append(PolicyFile(path, digest, [] if error else policies, error))
    return out


def hooks_of(files: list[PolicyFile]) -> dict[Key, HookPolicy]:
    return {(dev, hook): hp for pf in files for p in pf.policies for dev in p.interfaces
            for hook, hp in p.hooks.items()}
