"""Where running policies live. The control plane talks to a Backend; the real one drives the engine
(bpfgate.engine: programs, maps and state pinned per namespace/interface/hook), MemoryBackend keeps
hooks in a dict for the pure tests of planning, rollback and confirmation logic.

A Backend works in one network namespace at a time (`netns` None: the current one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from bpfgate.errors import BpfgateError, NotFound
from bpfgate.policy.hooks import Hook

if TYPE_CHECKING:   # light to import: `rules` lists without the models
    from bpfgate.policy.compile import CompiledHook
    from bpfgate.policy.model import HookPolicy, Rule

State = dict[tuple[str, Hook], "HookPolicy"]


class RuleCounters(NamedTuple):   # a tuple: 100k of them are made per listing
    name: str
    packets: int
    bytes: int


class Backend(Protocol):
    def running(self, netns: str | None) -> State: ...

    def policy(self, dev: str, hook: Hook, netns: str | None) -> HookPolicy | None: ...

    def attach(self, dev: str, hook: Hook, netns: str | None, hp: HookPolicy, mode: str | None,
               compiled: CompiledHook | None = None) -> None: ...   # compiled: hp already compiled

    def swap(self, dev: str, hook: Hook, netns: str | None, hp: HookPolicy) -> None: ...

    def detach(self, dev: str, hook: Hook, netns: str | None) -> None: ...

    def add_rule(self, dev: str, hook: Hook, netns: str | None, rule: Rule, position: int | None) -> None: ...

    def delete_rule(self, dev: str, hook: Hook, netns: str | None, name: str) -> None: ...

    def counters(self, dev: str, hook: Hook, netns: str | None) -> dict[str, RuleCounters]: ...

    def reset_counters(self, dev: str, hook: Hook, netns: str | None,
                       names: list[str] | None) -> dict[str, RuleCounters]: ...   # zeroed; returns the values before


class MemoryBackend:
    """Hooks in a dict, per namespace. `fail_on` = {(op, dev, hook)}: that operation raises, to test that
    a failure part way through leaves nothing half-applied."""

    def __init__(self) -> None:
        self.hooks: dict[str | None, State] = {}
        self.packets: dict[tuple, dict[str, int]] = {}
        self.fail_on: set[tuple[str, str, Hook]] = set()
        self.log: list[tuple] = []

    def _fail(self, op: str, dev: str, hook: Hook) -> None:
        if (op, dev, hook) in self.fail_on:
            raise BpfgateError(f"{op} {dev} {hook.value}", "injected failure")

    def running(self, netns):
        return dict(self.hooks.get(netns, {}))

    def policy(self, dev, hook, netns):
        return self.hooks.get(netns, {}).get((dev, hook))

    def attach(self, dev, hook, netns, hp, mode=None, compiled=None):
        self._fail("attach", dev, hook)
        self.hooks.setdefault(netns, {})[(dev, hook)] = hp
        self.log.append(("attach", dev, hook))

    def _get(self, dev, hook, netns) -> HookPolicy:
        try:
            return self.hooks[netns][(dev, hook)]
        except KeyError:
            raise NotFound(f"open policy on {dev} {hook.value}", "no bpfgate policy is attached there") from None

    def swap(self, dev, hook, netns, hp):
        self._get(dev, hook, netns)
        self._fail("swap", dev, hook)
        self.hooks[netns][(dev, hook)] = hp
        self.log.append(("swap", dev, hook))

    def detach(self, dev, hook, netns):
        self._get(dev, hook, netns)
        self._fail("detach", dev, hook)
        del self.hooks[netns][(dev, hook)]
        self.log.append(("detach", dev, hook))

    def add_rule(self, dev, hook, netns, rule, position):
        hp = self._get(dev, hook, netns)
        self._fail("add_rule", dev, hook)
        rules = list(hp.rules)
        rules.insert(len(rules) if position is None else position, rule)
        self.hooks[netns][(dev, hook)] = hp.model_copy(update={"rules": tuple(rules)})
        self.log.append(("add_rule", dev, hook, rule.name))

    def sets(self, dev, hook, netns):
        from bpfgate.policy.sets import SetState

        return {n: SetState.of(sd) for n, sd in self._get(dev, hook, netns).sets.items()}

    def attached(self, netns):
        return list(self.hooks.get(netns, {}))

    def edit_set(self, dev, hook, netns, name, elements, add):
        from bpfgate.policy.model import parse_element

        hp = self._get(dev, hook, netns)
        self._fail("edit_set", dev, hook)
        sd = hp.sets[name]
        parsed = [parse_element(e) for e in elements]
        kept = sd.elements + tuple(parsed) if add else tuple(e for e in sd.elements if e not in parsed)
        new = sd.model_copy(update={"elements": kept})
        self.hooks[netns][(dev, hook)] = hp.model_copy(update={"sets": {**hp.sets, name: new}})
        self.log.append(("edit_set", dev, hook, name))

    def delete_rule(self, dev, hook, netns, name):
        hp = self._get(dev, hook, netns)
        self.hooks[netns][(dev, hook)] = hp.model_copy(update={"rules": tuple(r for r in hp.rules if r.name != name)})
        self.log.append(("delete_rule", dev, hook, name))

    def counters(self, dev, hook, netns):
        hp = self._get(dev, hook, netns)
        pk = self.packets.get((netns, dev, hook), {})
        names = [r.name for r in hp.rules] + ["(default)"]
        return {n: RuleCounters(n, pk.get(n, 0), pk.get(n, 0) * 100) for n in names}

    def reset_counters(self, dev, hook, netns, names):
        before = self.counters(dev, hook, netns)
        want = list(before) if names is None else names
        missing = [n for n in want if n not in before]
        if missing:
            raise NotFound(f"reset counters of rule {missing[0]}", "no such rule in the running policy")
        pk = self.packets.setdefault((netns, dev, hook), {})
        for n in want:
            pk.pop(n, None)
        self.log.append(("reset_counters", dev, hook, tuple(want)))
        return {n: before[n] for n in want}
