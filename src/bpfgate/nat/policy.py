"""NAT and load balancing in the policy file: documents with a top-level `nat:` key, next to the policy
engine's documents in the same file (`bpfgate apply`).

    ---
    nat:
      interface: eth0
      rules:
        - {name: web, kind: dnat, proto: tcp, match: "198.18.200.1:80", to: "198.18.1.2:8080"}
        - {name: out, kind: snat, match: 198.18.1.0/24, to: 198.18.0.1, ports: 20000-30000}
      services:
        - name: api
          proto: udp
          vip: "198.18.200.1:53"
          table_size: 65537
          backends: ["198.18.1.2@2", {backend: "198.18.1.3:5353", weight: 1, drained: true}]

A document states the whole NAT of its interface: apply adds, changes and removes rules and services of
the interfaces the file names until they match (a document with no rules and no services detaches the
NAT); interfaces the file does not name are left alone. Each service change reports the share of its
table's slots that moved. Everything is parsed and checked before anything changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from bpfgate.errors import PolicyError
from bpfgate.policy import fastyaml

from .rules import NatRule, Service, rule_from, service_from


# A document that can be a nat one names the key somewhere; one that does not is not parsed here (PyYAML took
# ~80% of `apply` of a 100k-rule file just to find out). The literal first: a pattern that starts with \b
# is tried at every position (~200 ms over a 100k-rule file), one that starts with a literal is a fast scan.
_NAT_WORD = re.compile(r"nat\b")


def _maybe_nat(text: str) -> bool:
    """The word `nat` is in the text (as \bnat\b finds it)."""
    for m in _NAT_WORD.finditer(text):
        before = text[m.start() - 1] if m.start() else " "
        if not (before.isalnum() or before == "_"):
            return True
    return False


@dataclass
class NatDocument:
    interface: str
    rules: dict[str, NatRule] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)


def split(docs: list[tuple[int, str]], source: str) -> tuple[list[tuple[int, str]], list[NatDocument]]:
    """(start line, text) documents -> (the engine's documents, the NAT documents, parsed)."""
    engine, nat = [], []
    seen: set[str] = set()
    for start, text in docs:
        if not _maybe_nat(text):   # no `nat` key anywhere: an engine document, read once by the engine
            engine.append((start, text))
            continue
        data = fastyaml.parse(text)
        if data is None:
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                engine.append((start, text))   # the engine's parser reports it with its line
                continue
        if not (isinstance(data, dict) and "nat" in data):
            engine.append((start, text))
            continue
        where = f"{source}:{start + 1} nat"
        if set(data) != {"nat"}:
            raise PolicyError(where, "a nat document has only the `nat:` key")
        doc = document(data["nat"], where)
        if doc.interface in seen:
            raise PolicyError(f"{where}.interface", f"{doc.interface!r} is in another nat document")
        seen.add(doc.interface)
        nat.append(doc)
    return engine, nat


def document(d, where: str) -> NatDocument:
    if not isinstance(d, dict):
        raise PolicyError(where, "nat: is a mapping (interface, rules, services)")
    extra = set(d) - {"interface", "rules", "services"}
    if extra:
        raise PolicyError(f"{where}.{sorted(extra)[0]}", "unknown field")
    dev = d.get("interface")
    if not isinstance(dev, str) or not 1 <= len(dev) <= 15:
        raise PolicyError(f"{where}.interface", "an interface name (1..15 characters)")
    doc = NatDocument(dev)
    for kind, parse, out in (("rules", rule_from, doc.rules), ("services", service_from, doc.services)):
        items = d.get(kind) or []
        if not isinstance(items, list):
            raise PolicyError(f"{where}.{kind}", "a list")
        for item in items:
            try:
                x = parse(item)
            except PolicyError as e:
                raise PolicyError(f"{where}.{kind}: {e.path}", e.reason) from None
            if x.name in out:
                raise PolicyError(f"{where}.{kind}", f"{x.name!r} is listed twice")
            out[x.name] = x
    return doc


def _same_service(a: Service, b: Service) -> bool:
    return (a.proto, a.vip, a.table_size, [bb.to_dict() for bb in a.backends]) == \
        (b.proto, b.vip, b.table_size, [bb.to_dict() for bb in b.backends])


def plan(doc: NatDocument, netns: str | None) -> list[dict]:
    """What apply would change on the document's interface."""
    from .gateway import Gateway, _read_config

    running = _read_config(doc.interface, netns) if Gateway.exists(doc.interface, netns) else None
    rules = running.rules if running else {}
    services = running.services if running else {}
    out = []
    for name, r in rules.items():
        if doc.rules.get(name) != r:
            out.append({"interface": doc.interface, "op": "delete rule", "name": name})
    for name, r in doc.rules.items():
        if rules.get(name) != r:
            out.append({"interface": doc.interface, "op": "add rule", "name": name, "rule": r.to_dict()})
    for name in services:
        if name not in doc.services or (services[name].proto, services[name].vip) != \
                (doc.services[name].proto, doc.services[name].vip):
            out.append({"interface": doc.interface, "op": "delete service", "name": name})
    for name, s in doc.services.items():
        old = services.get(name)
        if old is None or (old.proto, old.vip) != (s.proto, s.vip):
            out.append({"interface": doc.interface, "op": "add service", "name": name})
        elif not _same_service(old, s):
            out.append({"interface": doc.interface, "op": "update service", "name": name})
    if running is not None and not doc.rules and not doc.services:
        out.append({"interface": doc.interface, "op": "detach"})
    return out


def apply(docs: list[NatDocument], netns: str | None, *, dry_run: bool = False) -> list[dict]:
    """Make each named interface's NAT match its document; returns the changes made (or, dry run, due)."""
    from bpfgate.kernel import netlink

    from .gateway import Gateway

    for doc in docs:
        netlink.ifindex(doc.interface, netns)   # NotFound before anything changes
    todo = [(doc, plan(doc, netns)) for doc in docs]
    if dry_run:
        return [c for _, changes in todo for c in changes]
    done = []
    for doc, changes in todo:
        if not changes:
            continue
        if changes[-1]["op"] == "detach":
            Gateway.open(doc.interface, netns, create=False).detach()
            done.append(changes[-1])
            continue
        with Gateway.open(doc.interface, netns) as gw:
            for c in changes:
                name = c["name"]
                if c["op"] == "delete rule":
                    gw.delete_rule(name)
                elif c["op"] == "delete service":
                    gw.delete_service(name)
            for c in changes:
                name = c["name"]
                if c["op"].startswith("delete"):
                    continue
                if c["op"] == "add rule":
                    gw.add_rule(doc.rules[name])
                elif c["op"] == "add service":
                    c["moved"] = round(gw.add_service(doc.services[name]).moved, 6)
                elif c["op"] == "update service":
                    c["moved"] = round(gw.update_service(doc.services[name]).moved, 6)
                done.append(c)
            done += [c for c in changes if c["op"].startswith("delete")]
    return done


def running_documents(netns: str | None, dev: str | None = None) -> list[dict]:
    """Each running NAT of the namespace (or of `dev`) as the `nat:` document apply turns back into it."""
    from .gateway import _read_config, running

    out = []
    for d in running(netns):
        if dev is not None and d != dev:
            continue
        cfg = _read_config(d, netns)
        out.append({"nat": {"interface": d, "rules": [r.to_dict() for r in cfg.rules.values()],
                            "services": [sv.to_dict() for sv in cfg.services.values()]}})
    return out
