"""The policy control plane: what `bpfgate apply`, `rule add/del`, `rules`, `policy export|classifier` and
`confirm` do, as a Python API.

    from bpfgate import policyctl
    res = policyctl.apply("policy.yaml", netns="blue")           # validate, compile, compare, change
    print("\\n".join(res.plan.lines()) if res.changed else res.plan.summary())
    policyctl.apply("policy.yaml", netns="blue", confirm=30)    # rolled back in 30 s unless ...
    policyctl.confirm(netns="blue")                             # ... confirmed
    policyctl.add_rule("eth0", "tc-ingress", {"name": "web", "protocol": "tcp", "dst_port": 80,
                       "action": "drop"}, before="est", netns="blue")
    policyctl.delete_rule("eth0", "tc-ingress", "web", netns="blue")
    for r in policyctl.rules(netns="blue"): print(r.name, r.packets, r.bytes)
    text = policyctl.export(netns="blue")                       # YAML; apply(text) changes nothing
    for c in policyctl.classifier(netns="blue"): print(c.summary())   # hash lookups per packet

`apply` is idempotent (an unchanged hook is not touched), all-or-nothing across interfaces and hooks (see
apply.py), refuses a default-deny ingress without a `ct: established` pass rule unless `force` (guard.py),
and validates and compiles everything before the kernel is touched. Whole-hook changes go through the
engine's atomic swap (unchanged rules keep their counters). Every function takes `netns` (a named network
namespace; None: the current one) and `backend` (default: the engine; MemoryBackend for pure tests).

The functions are in api.py, imported on first use: `apply` of the file applied last (unchanged.py) is a
no-change from a digest and the engines' saved-state versions, and importing this package for it must not
cost the models, the compiler or netlink (most of that answer's time otherwise).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

# submodules named like a function of the API: the name is the function's, as when the API was this module
_FUNCTIONS_FIRST = frozenset({"apply", "plan", "explain", "export", "sets"})
# names served by a light submodule without api (`rules` at 100k rules: without the models and the compiler)
_LIGHT = {name: "listing" for name in ("rules", "RuleRow", "rule_tables", "HookRules", "rules_json")}


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__") and name != "__all__":
            raise AttributeError(name)
        if name in _LIGHT:
            return getattr(importlib.import_module(f"{__name__}.{_LIGHT[name]}"), name)
        if name not in _FUNCTIONS_FIRST and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")   # a submodule (pending, unchanged ...) alone
        api = importlib.import_module(f"{__name__}.api")
        if name in self.__dict__:   # `api` itself, or a submodule importing api bound
            return self.__dict__[name]
        return getattr(api, name)

    def __setattr__(self, name: str, value) -> None:
        if name in _FUNCTIONS_FIRST and isinstance(value, types.ModuleType):
            return   # the import system binding the submodule: importers find it in sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
