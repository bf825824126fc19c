"""The control plane's Python API (the package bpfgate.policyctl forwards to it: see its docstring)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bpfgate.agent import client as _agent
from bpfgate.errors import BadInput, BpfgateError, NotFound, PolicyError
from bpfgate.policy import layout as L
from bpfgate.policy.compile import CompiledHook, compile_hook
from bpfgate.policy.model import Hook, HookPolicy, Policy, Rule
from bpfgate.policy.packet import Packet
from bpfgate.policy.parse import rule_problem
from bpfgate.policy.source import read_again
from bpfgate.steer import policy as steer_policy

from . import guard
from . import pending as _confirm
from . import sets as _sets
from . import unchanged
from .apply import ApplyError, execute, precheck, resolver
from .backend import Backend, MemoryBackend
from .common import _backend, _gc_paused, _reading, _ready, _selected, _serialised, parse_hook, target
from .cost import TREE_NAMES, ClassifierReport, shape_fields
from .cost import report as cost_report
from .explain import Explanation, explain_hook, parse_packet
from .export import (
    desired_state,
    export_text,
    load_documents,
    load_policies,
    load_policy_file,
    read_policy_file,
    rule_data,
    split_documents,
)
from .listing import RuleRow, rules
from .plan import HookPlan, Plan, automation
from .plan import plan as make_plan
from .result import ApplyResult
from .sets import SetRow

__all__ = [
    "ApplyError",
    "ApplyResult",
    "Backend",
    "ClassifierReport",
    "Explanation",
    "HookPlan",
    "MemoryBackend",
    "Plan",
    "RuleRow",
    "SetRow",
    "TREE_NAMES",
    "add_rule",
    "apply",
    "classifier",
    "confirm",
    "delete_rule",
    "explain",
    "export",
    "load_policies",
    "load_policy_file",
    "parse_hook",
    "plan",
    "remove",
    "rule_from",
    "rules",
    "running",
    "set_add",
    "set_delete",
    "sets",
    "shape_fields",
]

Source = str | Path | Policy | Iterable[Policy]


def _ifindex(backend: Backend, netns: str | None):
    return (lambda name: 1) if isinstance(backend, MemoryBackend) else resolver(netns)


def _policies(source: Source) -> list[Policy]:
    if isinstance(source, Policy):
        return [source]
    if isinstance(source, (str, Path)):
        return load_policy_file(source)
    return list(source)


def rule_from(data: Rule | dict[str, Any]) -> Rule:
    """A Rule from the same fields as the policy file; errors name the rule and field."""
    if isinstance(data, Rule):
        return data
    from pydantic import ValidationError

    try:
        return Rule.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if isinstance(p, str))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise PolicyError(f"rule {data.get('name', '?')}" + (f".{loc}" if loc else ""), msg) from None


# ---- apply ---------------------------------------------------------------------------------------------

def running(netns: str | None = None, backend: Backend | None = None) -> dict[tuple[str, Hook], HookPolicy]:
    return _backend(backend).running(netns)


@_gc_paused
def plan(source: Source, *, netns: str | None = None, backend: Backend | None = None) -> Plan:
    policies = _policies(source)
    return make_plan(desired_state(policies), _backend(backend).running(netns), netns)


@_gc_paused
def apply(source: Source, *, netns: str | None = None, dry_run: bool = False, force: bool = False,
          confirm: float | None = None, mode: str | None = None, backend: Backend | None = None,
          state_root: str | None = None, start_watcher: bool = True) -> ApplyResult:
    """Validate, compile, compare with what runs, and change only what differs (all or nothing). The file's
    `nat:` documents (bpfgate.nat.policy) are applied first; a file with only those leaves engines alone.
    The file applied last, to engines nobody changed since, is a no-change without parsing it (unchanged.py)."""
    ours = backend is None   # the machine's engines (not a backend a caller passed in)
    _ready(_backend(backend), netns, "apply policy")   # privileges first: a file root alone may read is no user error
    nat_docs = []
    dig = None
    if isinstance(source, (str, Path)):
        from bpfgate.nat import policy as nat_policy

        text, name = read_policy_file(source)
        if confirm is None and not isinstance(backend, MemoryBackend):
            dig = unchanged.digest(text)
            same = unchanged.answer(dig, netns, dry_run, ours=ours, state_root=state_root,
                                    serialised=lambda: _serialised(netns, _backend(backend), state_root))
            if same is not None:
                return same
            b = _backend(backend)
            if not dry_run and hasattr(b, "apply_edits") and unchanged.recorded(netns, state_root):
                from . import incremental

                with _serialised(netns, b, state_root, "apply policy"):
                    done = incremental.apply(text, dig, netns, b, state_root, name)
                if done is not None:
                    return done
        docs = split_documents(text)
        if not docs:
            raise PolicyError(name, "empty policy file")
        engine_docs, nat_docs = nat_policy.split(docs, name)
        source = load_documents(engine_docs, name, read_again(source, text)) if engine_docs else []
        if nat_docs:
            if confirm is not None:
                raise BadInput("apply with --confirm", "confirmation covers policy engine documents only; "
                               "this file has nat documents")
            if engine_docs and backend is None and not dry_run:
                _agent.refuse_writes(netns, "apply")   # before the NAT changes: all of the file or none
            nat_changes = nat_policy.apply(nat_docs, netns, dry_run=dry_run)
            if not engine_docs:
                return ApplyResult(Plan(netns, []), bool(nat_changes) and not dry_run, dry_run=dry_run,
                                   nat=nat_changes, engine=False)
            res = apply(source, netns=netns, dry_run=dry_run, force=force, mode=mode, backend=backend,
                        state_root=state_root, start_watcher=start_watcher)
            res.nat = nat_changes
            return res
    backend = _backend(backend)
    policies = _policies(source)
    if ours and not dry_run:
        _agent.refuse_writes(netns, "apply")
    if confirm is not None and not 0 < confirm <= 86400:
        raise BadInput("apply with --confirm", f"{confirm:g} s is not between 0 and 86400 seconds")
    steer = _steer_section(policies, confirm)
    with (_serialised(netns, backend, state_root, "apply policy"),
          unchanged.staged_text(text if dig is not None and not dry_run else None, netns, state_root) as staged):
        text = docs = engine_docs = None   # the file's text is in `staged` for the record: not held meanwhile
        p = make_plan(desired_state(policies), backend.running(netns), netns)
        preload = getattr(backend, "preload", None)
        if preload is not None and not dry_run:   # verified by the kernel while the policy is checked
            for h in p.changes():
                if h.action == "attach" and h.new is not None:
                    preload(h.dev, h.hook, netns, h.new)
        remember = getattr(backend, "remember", None)
        if remember is not None and not dry_run:   # the hooks found running as wanted (held backends)
            for h in p.hooks:
                if h.action == "none":
                    remember(h.dev, h.hook, netns, h.new)
        live = getattr(backend, "live", None)
        compiled = precheck(p, force=force, ifindex=_ifindex(backend, netns),
                            check_interfaces=not isinstance(backend, MemoryBackend),
                            live=(lambda dev, hook: live(dev, hook, netns)) if live else None,
                            batches=not dry_run and hasattr(backend, "apply_edits"))   # a dry run compiles all
        steer_changes = steer_policy.plan(steer, netns) if steer else []
        waiting = None if dry_run else _confirm.read(netns, state_root)
        if waiting is not None and waiting.remaining == 0 and not _confirm.alive(waiting.watcher_pid):
            _recover(waiting, backend)
        repaired = list(getattr(backend, "repaired", []))
        if dry_run or not p.changed:
            if steer_changes and not dry_run and not isinstance(backend, MemoryBackend):
                steer_policy.apply(steer, netns)
            if not dry_run and dig is not None and steer is None:   # steering is not in the engines' state
                unchanged.record(dig, p, netns, state_root, staged=staged)
            return ApplyResult(p, bool(steer_changes) and not dry_run, dry_run=dry_run, repaired=repaired,
                               steer=steer_changes)
        if waiting is not None:
            raise BpfgateError("apply policy", f"a change is waiting for confirmation ({waiting.remaining:.0f} s left)",
                               hint="`bpfgate confirm` it first, or let it roll back")
        pending = None
        if confirm is not None:
            prev = {(h.dev, h.hook): h.old for h in p.changes()}
            # the clock restarts once the change is in place; until then it cannot run out mid-apply
            pending = _confirm.arm(_confirm.Pending(netns, time.time() + confirm + 60, prev, mode), state_root,
                                   start_watcher=start_watcher)
        if dig is not None:
            unchanged.forget(netns, state_root)   # until the change is made: a failed one leaves no record
        try:
            execute(p, backend, mode=mode, compiled=compiled)
        except BaseException:
            if pending is not None:
                _confirm.disarm(pending)
            raise
        if remember is not None:   # what runs now: the next plan starts from it, not from rules read back
            for h in p.changes():
                if h.new is not None:
                    remember(h.dev, h.hook, netns, h.new)
        if dig is not None and steer is None:
            unchanged.record(dig, p, netns, state_root, staged=staged)
        if pending is not None:
            _confirm.restart_clock(pending, confirm)
        if steer_changes and not isinstance(backend, MemoryBackend):
            steer_policy.apply(steer, netns)
        return ApplyResult(p, True, pending=pending, repaired=repaired, steer=steer_changes)


def _steer_section(policies: list[Policy], confirm: float | None) -> steer_policy.SteerPolicy | None:
    """The file's steer section (one per namespace), or None: then steering is left as it runs."""
    sections = [p.steer for p in policies if p.steer is not None]
    if len(sections) > 1:
        raise PolicyError("steer", "one steer section per namespace (it is in several documents)")
    if sections and confirm is not None:
        raise BpfgateError("apply with --confirm", "a steer section is not rolled back by --confirm",
                           hint="apply it without --confirm")
    return sections[0] if sections else None


def _recover(waiting: _confirm.Pending, backend: Backend) -> None:
    """An unconfirmed change is past its deadline and its watcher is gone (killed): roll back now."""
    claimed = _confirm.claim_for_rollback(waiting.path)
    if claimed is None:
        return
    try:
        n = _confirm.rollback(claimed, backend)
        _confirm.record_rollback(claimed, True, f"restored {n} hook(s) (watcher gone; by the next apply)")
    except BpfgateError as e:
        _confirm.record_rollback(claimed, False, str(e))
        raise
    finally:
        _confirm.disarm(claimed)
    raise BpfgateError("apply policy", f"an unconfirmed change had expired without its watcher (pid "
                       f"{waiting.watcher_pid}): the previous policy was restored now; run the apply again")


def confirm(netns: str | None = None, state_root: str | None = None) -> _confirm.Pending:
    """Keep the change made by apply(confirm=...): its rollback is cancelled."""
    if state_root is None:   # the machine's own state: the engine's privileges and namespace checks
        _ready(_backend(None), netns, "confirm policy")
    return _confirm.confirm(netns, state_root)


# ---- live edits ----------------------------------------------------------------------------------------

def _current(backend: Backend, dev: str, hook: Hook, netns: str | None) -> HookPolicy:
    one = getattr(backend, "policy", None)   # only this hook's state, not every hook's in the namespace
    hp = one(dev, hook, netns) if one else backend.running(netns).get((dev, hook))
    if hp is None:
        raise NotFound(f"edit rules on {dev} {hook.value}", "no bpfgate policy is attached there",
                       hint="`bpfgate apply` a policy for it first")
    return hp


def _outline(backend: Backend, dev: str, hook: Hook, netns: str | None) -> tuple[str, Sequence[str]]:
    """(default, rule names in order) of one hook: what a live edit checks, without the rules themselves
    when the backend can (reading 100k rules is most of the cost of a one-rule edit). The names may be a
    view of the live rules: read them before the edit."""
    one = getattr(backend, "outline", None)
    if one is None:
        hp = _current(backend, dev, hook, netns)
        return hp.default, [r.name for r in hp.rules]
    found = one(dev, hook, netns)
    if found is None:
        raise NotFound(f"edit rules on {dev} {hook.value}", "no bpfgate policy is attached there",
                       hint="`bpfgate apply` a policy for it first")
    return found


def _position(names: Sequence[str], before: str | None, after: str | None, position: int | None) -> int | None:
    if sum(x is not None for x in (before, after, position)) > 1:
        raise BadInput("add rule", "give only one of before, after, position")
    for ref, off in ((before, 0), (after, 1)):
        if ref is not None:
            if ref not in names:
                raise NotFound("add rule", f"no rule named {ref!r} to place it {'before' if off == 0 else 'after'}")
            return names.index(ref) + off
    if position is not None and not 0 <= position <= len(names):
        raise BadInput("add rule", f"position {position} is outside 0..{len(names)}")
    return position


@_gc_paused
def add_rule(dev: str, hook: str | Hook, rule: Rule | dict[str, Any], *, netns: str | None = None,
             before: str | None = None, after: str | None = None, position: int | None = None,
             force: bool = False, backend: Backend | None = None, owner: str | None = None) -> int:
    """Add one rule live (no reload; other rules keep their counters). Returns its index. `owner`: the
    program adding it, for automation (`apply` of a file keeps such rules, `policy export` leaves them out,
    `rules` shows the owner)."""
    hook = parse_hook(hook)
    dev = target(dev, hook)
    if backend is None:   # while an agent runs, it is the one writer (and checks the rule itself)
        done = _agent.offer(netns, "add_rule", dev=dev, hook=hook.value,
                            rule=rule_data(rule) if isinstance(rule, Rule) else rule, before=before, after=after,
                            position=position, force=force, owner=owner)
        if done is not _agent.NOT_RUNNING:
            return done
    rule = rule_from(rule)
    if owner is not None:
        rule = rule_from(rule_data(rule) | {"owner": owner})
    backend = _backend(backend)
    with _serialised(netns, backend, op=f"add rule {rule.name}"):
        _default, names = _outline(backend, dev, hook, netns)
        if rule.name in names:
            raise PolicyError(f"rule {rule.name}", f"a rule of that name exists on {dev} {hook.value}; delete it first")
        pos = _position(names, before, after, position)
        problem = rule_problem(rule, hook)   # the engine's live edit checks limits and shapes itself
        if problem:
            raise PolicyError(f"rule {rule.name}" + (f".{problem[0]}" if problem[0] else ""), problem[1])
        if rule.redirect is not None:
            _ifindex(backend, netns)(rule.redirect.interface)
        at = len(names) if pos is None else pos   # before the edit: `names` may be a view of the live rules
        backend.add_rule(dev, hook, netns, rule, pos)
        return at


def sets(name: str | None = None, *, netns: str | None = None, backend: Backend | None = None) -> list[SetRow]:
    """The named sets of the running policies (one set: `name`), with their elements and where they run."""
    backend = _backend(backend)
    with _reading(backend, netns, "list sets"):
        return _sets.list_sets(backend, netns, name)


def set_add(name: str, elements: Iterable[Any], *, netns: str | None = None,
            backend: Backend | None = None) -> list[str]:
    """Add elements to set `name` live in every running hook that has it (no reload: the rules naming the set
    see them at once). Returns those hooks ("dev hook"). Any bad element: nothing changes."""
    return _edit_set(name, list(elements), True, netns, backend)


def set_delete(name: str, elements: Iterable[Any], *, netns: str | None = None,
               backend: Backend | None = None) -> list[str]:
    """Delete elements from set `name` live (see set_add)."""
    return _edit_set(name, list(elements), False, netns, backend)


def _edit_set(name: str, elements: list, add: bool, netns: str | None, backend: Backend | None) -> list[str]:
    if backend is None:   # while an agent runs, it is the one writer
        done = _agent.offer(netns, "set_add" if add else "set_delete", name=name, elements=elements)
        if done is not _agent.NOT_RUNNING:
            return done
    backend = _backend(backend)
    with _serialised(netns, backend, op=f"{'add to' if add else 'delete from'} set {name}"):
        return _sets.edit_set(backend, netns, name, elements, add)


@_gc_paused
def delete_rule(dev: str, hook: str | Hook, name: str, *, netns: str | None = None, force: bool = False,
                backend: Backend | None = None) -> None:
    """Delete one rule live. Refused (unless force) when it is the rule that keeps established connections
    alive under a default deny."""
    hook = parse_hook(hook)
    dev = target(dev, hook)
    if backend is None:   # while an agent runs, it is the one writer
        if _agent.offer(netns, "delete_rule", dev=dev, hook=hook.value, name=name,
                        force=force) is not _agent.NOT_RUNNING:
            return
    backend = _backend(backend)
    with _serialised(netns, backend, op=f"delete rule {name}"):
        default, names = _outline(backend, dev, hook, netns)
        if name not in names:
            raise NotFound(f"delete rule {name} on {dev} {hook.value}", "no such rule")
        hp = _current(backend, dev, hook, netns) if not force and guard.guarded(hook, default) else None
        if hp is not None and guard.problem(dev, hook, hp) is None:
            new = hp.model_copy(update={"rules": tuple(r for r in hp.rules if r.name != name)})
            why = guard.problem(dev, hook, new)
            if why:
                raise BadInput(f"delete rule {name}", why)
        backend.delete_rule(dev, hook, netns, name)


def remove(dev: str | None = None, hook: str | Hook | None = None, *, netns: str | None = None,
           backend: Backend | None = None) -> list[tuple[str, Hook]]:
    """Detach the policies of one interface / hook (default: every one in `netns`). Returns what went."""
    backend = _backend(backend)
    hook = parse_hook(hook) if hook is not None else None
    dev = target(dev, hook) if dev is not None else None
    with _serialised(netns, backend, op="remove policy"):
        gone = []
        errors = []
        listing = getattr(backend, "attached", None)   # without reading each policy: works on broken state too
        keys = listing(netns) if listing else list(backend.running(netns))
        for d, h in sorted(keys, key=lambda k: (k[0], k[1].value)):
            if (dev is None or d == dev) and (hook is None or h == hook):
                try:
                    backend.detach(d, h, netns)
                    gone.append((d, h))
                except BpfgateError as e:   # go on with the others, report at the end
                    errors.append(str(e))
        if dev is None and hook is None and not errors and not isinstance(backend, MemoryBackend):
            _confirm.forget(netns)
    if errors:
        raise BpfgateError("remove policy", "; ".join(errors))
    if dev is not None and not gone:
        raise NotFound(f"remove policy of {dev}", "no bpfgate policy is attached there")
    return gone


# ---- reading -------------------------------------------------------------------------------------------

# ---- classifier cost -----------------------------------------------------------------------------------

def _live_classifier(backend: Backend, dev: str, hook: Hook, hp: HookPolicy,
                     netns: str | None) -> tuple[CompiledHook, L.Conf]:
    """What the data plane walks: the engine's live generation; a backend without one (MemoryBackend)
    compiles the running policy, which gives the same shapes and stage 0."""
    read = getattr(backend, "classifier", None)
    if read is not None:
        return read(dev, hook, netns)
    compiled = compile_hook(hp, hook, ifindex=lambda name: 1)   # redirect targets do not change the cost
    return compiled, compiled.conf()


def classifier(dev: str | None = None, *, netns: str | None = None, hook: str | Hook | None = None,
               backend: Backend | None = None) -> list[ClassifierReport]:
    """Per running hook (or one interface / hook): the classifier's shapes in visit order (one hash lookup
    each per packet, worst case all), its entries, and the stage 0 prefix-class trees in use."""
    backend = _backend(backend)
    hook = parse_hook(hook) if hook is not None else None
    with _reading(backend, netns, "read the classifier"):
        out = []
        for d, h, hp in _selected(backend, dev, hook, netns, "read the classifier"):
            compiled, conf = _live_classifier(backend, d, h, hp, netns)
            out.append(cost_report(d, h.value, len(hp.rules), compiled, conf))
        return out


def explain(packet: str | Packet, *, netns: str | None = None, dev: str | None = None,
            hook: str | Hook | None = None, file: Source | None = None,
            backend: Backend | None = None) -> list[Explanation]:
    """Which rule decides `packet` (a description, see policyctl/explain.py, or a Packet) at each running
    hook (or each hook of a policy `file`), one interface / hook if given, and why."""
    pkt = parse_packet(packet) if isinstance(packet, str) else packet
    hook = parse_hook(hook) if hook is not None else None
    out = []
    if file is not None:
        state = desired_state(_policies(file))
        if dev is not None and not any(d == dev for d, _ in state):
            raise NotFound(f"explain a packet at {dev}", "the policy file does not name that interface")
        for (d, h), hp in sorted(state.items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
            if (dev is None or d == dev) and (hook is None or h == hook):
                compiled = compile_hook(hp, h, ifindex=lambda name: 1)   # redirect targets do not decide
                out.append(explain_hook(d, h.value, hp, compiled, compiled.conf(), pkt))
        return out
    backend = _backend(backend)
    with _reading(backend, netns, "explain a packet"):
        for d, h, hp in _selected(backend, dev, hook, netns, "explain a packet"):
            compiled, conf = _live_classifier(backend, d, h, hp, netns)
            out.append(explain_hook(d, h.value, hp, compiled, conf, pkt))
    return out


def export(dev: str | None = None, *, netns: str | None = None, backend: Backend | None = None) -> str:
    """The running policy as YAML that `apply` turns back into the same state. Rules added by automation
    (owner set: temporary SYN-flood blocks ...) are left out and listed in the header: applied, the file
    would make a temporary block permanent, with nobody left to delete it; `apply` of the export keeps
    them as long as they live (plan.keep_automation), so it still changes nothing."""
    ours = backend is None   # the machine's (a backend passed in holds only engines)
    backend = _backend(backend)
    _ready(backend, netns, "export policy")
    state = backend.running(netns)
    more = _running_sections(netns, dev) if ours else []
    if dev is not None:
        state = {k: v for k, v in state.items() if k[0] == dev}
        if not state and not more:
            raise NotFound(f"export policy of {dev}", "no bpfgate policy is attached there")
    if not state and not more:
        raise NotFound("export policy", "no bpfgate policy is running" + (f" in {netns}" if netns else ""))
    header = "exported by `bpfgate policy export`" + (f" from netns {netns}: `bpfgate apply --netns {netns} FILE`"
                                                      if netns else "")
    left_out = [f"  {r.name} (added by {r.owner}) on {d} {h.value}"
                for (d, h), hp in sorted(state.items(), key=lambda kv: (kv[0][0], kv[0][1].value))
                for r in automation(hp)]
    if left_out:
        header += "\nleft out: rules added by automation (temporary; `apply` keeps them while they run):\n"
        header += "\n".join(left_out)
    state = {k: hp.model_copy(update={"rules": tuple(r for r in hp.rules if r.owner is None)})
             for k, hp in state.items()}
    return export_text(state, header=header, more=more)


def _running_sections(netns: str | None, dev: str | None) -> list[dict]:
    """The namespace's steering (a `steer:` document; namespace-wide, so not with `dev`) and NAT (a `nat:`
    document per interface), as apply reads them."""
    from bpfgate.nat import policy as nat_policy

    steer = steer_policy.running_section(netns) if dev is None else None
    return ([{"version": 1, "steer": steer}] if steer else []) + nat_policy.running_documents(netns, dev)


