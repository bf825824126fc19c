"""What the agent's policy directory asks for: every policy file in it, read on its own (a bad file is
reported and leaves the others alone), its interface entries expanded against the interfaces that exist
now (`veth*`, `eth[0-3]`: shell patterns, as container hosts need)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time
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


SETTLED_S = 2.0   # a file unchanged for this long is known by its stat (see _identity)


@dataclass
class _Seen:
    """A policy file as the last round read it."""
    identity: tuple | None   # _identity() when it may stand for the bytes, else None (read them again)
    raw: str                 # sha256 of its bytes
    docs: list[Policy]
    text: str
    split: object = None     # incremental.split(text), once a change needed it


def _identity(path: str) -> tuple | None:
    """What stands for a file's bytes between rounds: its stat, once it has not changed for SETTLED_S (a
    write also sets ctime, which no one can set back; two writes inside one clock tick of the kernel's can
    leave the same stat, so a file changed that recently is read again next round)."""
    st = os.stat(path)
    if time.time() - st.st_ctime < SETTLED_S:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def read(directory: str, interfaces: list[str], parsed: dict | None = None) -> list[PolicyFile]:
    """Every policy file, each with its policies per concrete interface or its error. An interface two
    files claim goes to the first file (by name); the second is in error. `parsed` (path -> what the last
    round read, kept by the caller between rounds): a file whose stat or bytes did not change is not read
    again (a round every few seconds must not parse, nor hash, a 100k-rule file each time), and one that
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
            hit = cache.pop(path, None)
            identity = _identity(path)
            if hit is not None and identity is not None and hit.identity == identity:
                seen = hit
            else:
                decoded, name = read_policy_file(path)
                raw = hashlib.sha256(decoded.encode("utf-8", "surrogatepass")).hexdigest()
                if hit is not None and hit.raw == raw:
                    seen = _Seen(identity, raw, hit.docs, hit.text, hit.split)
                else:   # a few rules changed: only they are read (policyctl/incremental.py)
                    done = hit is not None and incremental.patched(decoded, hit.text, hit.docs, name, hit.split)
                    seen = _Seen(identity, raw, done[0], decoded, done[1]) if done else \
                        _Seen(identity, raw, load_policies(decoded, name), decoded)
            cache[path] = seen
        except (OSError, BpfgateError) as e:
            out.append(PolicyFile(path, "", error=str(e)))
            continue
        docs = seen.docs
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
        digest = hashlib.sha256(f"{seen.raw}\0{expanded}".encode()).hexdigest()
        out.append(PolicyFile(path, digest, [] if error else policies, error))
    return out


def hooks_of(files: list[PolicyFile]) -> dict[Key, HookPolicy]:
    return {(dev, hook): hp for pf in files for p in pf.policies for dev in p.interfaces
            for hook, hp in p.hooks.items()}
