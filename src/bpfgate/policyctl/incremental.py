"""`apply` of a file that changes a few rules of the file applied last: only those rules are read.

The file applied last is kept beside its no-change record (unchanged.py). When the new file has the same
text outside its rules lists (interfaces, hooks, defaults, sets: the "frame") and each list differs from the
old one by a few whole items, neither file is read whole: the items that differ are read (inside the frame,
so the same checks apply) and become one atomic batch of live edits per engine (Engine.apply_edits). The
engines must be as that apply left them (the record says so), and only hooks the guard does not look at
(ingress hooks with default deny are) take this path.

Anything else (a new frame, moved rules, many changes, YAML whose items are not plain block-sequence items,
an edit the engine refuses) returns None: the full path runs and says what is wrong, with line numbers.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import os
import re
from dataclasses import dataclass

from bpfgate.errors import PolicyError

from . import unchanged
from .plan import BATCH_MAX, HookPlan, Plan, RuleChange

_RULES_KEY = re.compile(r"^( *)rules:[ \t]*(?:#.*)?\n(?:[ \t]*(?:#.*)?\n)*( *)- ", re.M)
_UNSAFE = ("&", "*", "!", "<<", "\t")   # anchors, aliases, tags, merges, tabs: an item whose meaning may hang
                                        # on text elsewhere (or that this reader does not split) is not read alone


@dataclass
class RulesList:
    """One block-sequence `rules:` list: where its items are in the text [start, end), and each item's text
    less its leading `- ` line prefix and last newline (item_text() puts them back)."""
    start: int
    end: int
    indent: int
    items: list[str]

    def item_text(self, piece: str) -> str:
        return " " * self.indent + "- " + piece + "\n"


def rules_lists(text: str) -> list[RulesList] | None:
    """Every `rules:` block sequence of the file, or None when a `rules:` key holds something else (flow
    style, tabs, ...). An item is the text from its `- ` line to the next one at its indentation (comment
    and blank lines within belong to it); the list ends at a line less indented, or as indented but no item."""
    out: list[RulesList] = []
    pos = 0
    keys = text.count("rules:")
    while True:
        m = _RULES_KEY.search(text, pos)
        if m is None:
            break
        indent = len(m.group(2))
        if indent < len(m.group(1)):
            return None
        first = m.end() - indent - 2
        # the list ends before the first line that is not blank, not a comment, not an item line and not
        # more indented ("\n" + lookaheads: ~7x faster than a ^ anchor over 100k items)
        stop = re.compile(rf"\n(?! {{{indent + 1}}}| {{{indent}}}- |[ \t]*(?:#|\n))").search(text, first)
        end = stop.start() + 1 if stop else len(text)
        # the items' text from the newline before the first (the match ends past it), less a last newline: one copy
        pieces = text[first - 1:end - (text[end - 1] == "\n")].split("\n" + " " * indent + "- ")[1:]
        out.append(RulesList(first, end, indent, pieces))
        pos = end
    if len(out) != keys:
        return None   # a `rules:` this reader does not split (or the word elsewhere): the full path
    return out


def frame(text: str, lists: list[RulesList], fill: list[list[str]]) -> str:
    """The file with list K's items replaced by fill[K]."""
    parts, at = [], 0
    for lst, items in zip(lists, fill):
        parts.append(text[at:lst.start])
        parts += items
        at = lst.end
    parts.append(text[at:])
    return "".join(parts)


@dataclass
class ListChange:
    removed: list[tuple[int, str]]   # (index in the old list, item text)
    added: list[tuple[int, str]]     # (index in the new list, item text)


def list_change(old: list[str], new: list[str], most: int, in_old: set[str] | None = None,
                in_new: set[str] | None = None) -> ListChange | None:
    """The items one list lost and gained (at most `most` of them), when the items both hold keep their
    order; else None. Set and list operations only (C speed: ~40 ms for two lists of 100k; ~5 ms when the
    lists differ only in place). `in_old`, `in_new`: the lists' sets, when the caller has them."""
    in_old = set(old) if in_old is None else in_old
    if len(in_old) != len(old):
        return None   # the same item twice: the full path names the duplicate rule
    if len(old) == len(new):   # rules edited in place (the commonest change): compare position by position
        at = list(itertools.islice(itertools.compress(itertools.count(), map(operator.ne, old, new)), most // 2 + 1))
        came = [new[i] for i in at]
        # every other position holds the same item in both lists (unique: the old one's are): when the new
        # items at these positions are distinct and none is an old item, they are exactly what came, the old
        # ones exactly what went, and the items both hold are in the same order (a moved item is in both)
        if 2 * len(at) <= most and len(set(came)) == len(came) and not any(t in in_old for t in came):
            return ListChange([(i, old[i]) for i in at], list(zip(at, came)))
    in_new = set(new) if in_new is None else in_new
    if len(in_new) != len(new):
        return None
    gone, came = in_old - in_new, in_new - in_old
    if len(gone) + len(came) > most:
        return None
    removed = _where(old, gone)
    added = _where(new, came)
    kept_old, kept_new = list(old), list(new)
    for i, _t in reversed(removed):
        del kept_old[i]
    for i, _t in reversed(added):
        del kept_new[i]
    if kept_old != kept_new:
        return None   # a rule moved
    return ListChange(removed, added)


def _where(items: list[str], wanted: set[str]) -> list[tuple[int, str]]:
    """(index, item) of the items in `wanted`, in order: one pass at C speed (a list.index per item is a
    pass each)."""
    found = list(itertools.compress(itertools.count(), map(wanted.__contains__, items))) if wanted else []
    return [(i, items[i]) for i in found]


def _marker(k: int, nonce: str) -> str:
    return f"bpfgate.list.{k}.{nonce}"


def _read_items(text: str, lists, chosen: list[list[str]], source: str):
    """Policy of the frame with list K holding a marker rule and then the items chosen[K] (RulesList.items'
    pieces); {K: (hook, its rules)}."""
    from bpfgate.policy.parse import load_text

    nonce = os.urandom(6).hex()
    fill = [[lst.item_text(f"name: {_marker(k, nonce)}"), *map(lst.item_text, items)] for k, (lst, items)
            in enumerate(zip(lists, chosen))]
    policy = load_text(frame(text, lists, fill), source)
    found = {}
    for hook, hp in policy.hooks.items():
        if hp.rules and hp.rules[0].name.startswith("bpfgate.list.") and hp.rules[0].name.endswith(nonce):
            found[int(hp.rules[0].name.split(".")[2])] = (hook, hp.rules[1:])
    return policy, found


def _edits(ch: ListChange, old_rules, new_rules, n_old: int, n_new: int) -> tuple[list, list[RuleChange]] | None:
    """Engine edits for one list (deletes, replaces, adds by new index: LiveHook.batch's order) and the
    plan's rule changes; None when the edits would not give the new list's order."""
    from .plan import rule_fields_changed

    old_by = {r.name: (i, r) for (i, _t), r in zip(ch.removed, old_rules)}
    new_by = {r.name: (i, r) for (i, _t), r in zip(ch.added, new_rules)}
    if len(old_by) != len(old_rules) or len(new_by) != len(new_rules):
        return None
    adds = sorted(((i, n, r) for n, (i, r) in new_by.items() if n not in old_by), key=lambda x: x[0])
    # the order the edits give: the old list less its removed rules (a changed one stays in its place), then
    # each add inserted at its index; every rule of new_by must land at its index in the new list (counted
    # from the edits alone: the lists are 100k long, the edits a few)
    deleted = sorted(i for n, (i, _r) in old_by.items() if n not in new_by)
    kept = n_old - len(deleted)
    if kept + len(adds) != n_new or any(i > kept + k for k, (i, _n, _r) in enumerate(adds)):
        return None   # (an add past the end of the list at its turn would land short of its index)
    for n, (i, _r) in new_by.items():
        if n in old_by:
            at = old_by[n][0] - bisect.bisect_left(deleted, old_by[n][0])
            for j, _n, _r in adds:
                at += j <= at
            if at != i:
                return None
    edits: list = [("delete", n) for n in old_by if n not in new_by]
    edits += [("replace", n, r) for n, (_i, r) in new_by.items() if n in old_by]
    edits += [("add", r, i) for i, _n, r in adds]
    changes = [RuleChange("removed", n, i) for n, (i, _r) in old_by.items() if n not in new_by]
    changes += [RuleChange("added", n, i) if n not in old_by else
                RuleChange("changed", n, i, rule_fields_changed(old_by[n][1], r))
                for n, (i, r) in sorted(new_by.items(), key=lambda kv: kv[1][0])]
    return edits, changes


class Split:
    """A text's rules lists, and each list's items as a set (made when first needed): what the next text is
    compared with (the agent keeps it between rounds, so only the new text is split)."""

    def __init__(self, lists: list[RulesList]):
        self.lists = lists
        self._sets: list[set[str]] | None = None

    @property
    def sets(self) -> list[set[str]]:
        if self._sets is None:
            self._sets = [set(lst.items) for lst in self.lists]
        return self._sets


def split(text: str) -> Split | None:
    lists = rules_lists(text)
    return None if lists is None else Split(lists)


@dataclass
class Change:
    plan: Plan
    forward: dict      # (dev, hook) -> edits
    backward: dict     # (dev, hook) -> edits that undo them
    patches: dict      # hook -> (old indices removed, [(new index, rule) added]): the new rules from the old
    split: Split       # of the new text


def small_change(text: str, old_text: str, source: str, netns: str | None,
                 old_split: Split | None = None) -> Change | None:
    """The change from the file applied last to `text` as batches of live edits, or None (see the module).
    `old_split`: split(old_text), when the caller kept it."""
    from . import guard
    from .export import desired_state

    new_split, old_split = split(text), old_split or split(old_text)
    if not new_split or not new_split.lists or old_split is None or len(new_split.lists) != len(old_split.lists):
        return None
    lists, old_lists = new_split.lists, old_split.lists
    if frame(text, lists, [[]] * len(lists)) != frame(old_text, old_lists, [[]] * len(lists)):
        return None
    changes = [list_change(o.items, n.items, min(2 * BATCH_MAX, len(n.items) // 5), os, ns)
               for o, n, os, ns in zip(old_lists, lists, old_split.sets, new_split.sets)]
    if any(c is None for c in changes) or not any(c.removed or c.added for c in changes):
        return None   # (no item changed: the frame's text is the same, so the digests cannot differ)
    if any(u in t for c in changes for _i, t in c.removed + c.added for u in _UNSAFE):
        return None
    try:
        new_policy, new_found = _read_items(text, lists, [[t for _i, t in c.added] for c in changes], source)
        _old_policy, old_found = _read_items(old_text, old_lists, [[t for _i, t in c.removed] for c in changes],
                                             source)
    except PolicyError:
        return None   # the full path reports it, with the line in the whole file
    if set(new_found) != set(range(len(lists))) or set(old_found) != set(new_found):
        return None
    per_hook, patches = {}, {}
    for k, c in enumerate(changes):
        hook, added = new_found[k]
        old_hook, removed = old_found[k]
        if hook != old_hook or len(added) != len(c.added) or len(removed) != len(c.removed):
            return None
        n_old, n_new = len(old_lists[k].items), len(lists[k].items)
        fwd = _edits(c, removed, added, n_old, n_new)
        back = _edits(ListChange(c.added, c.removed), added, removed, n_new, n_old)
        if fwd is None or back is None:
            return None
        per_hook[hook] = (fwd, back)
        patches[hook] = ([i for i, _t in c.removed], [(i, r) for (i, _t), r in zip(c.added, added)])
    forward, backward, hooks = {}, {}, []
    frame_hps = desired_state([new_policy])
    for (dev, hook), hp in sorted(frame_hps.items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        (edits, rule_changes), (undo, _c) = per_hook.get(hook, ((None, []), (None, [])))
        if not edits:
            hooks.append(HookPlan(dev, hook, "none", hp, hp))
            continue
        if guard.guarded(hook, hp.default):
            return None   # the guard reads every rule: the full path
        forward[(dev, hook)], backward[(dev, hook)] = edits, undo
        hooks.append(HookPlan(dev, hook, "swap", hp, hp, rule_changes))
    return Change(Plan(netns, hooks), forward, backward, patches, new_split)


def patched(text: str, old_text: str, old: list, source: str, old_split: Split | None = None):
    """(the documents of `text` made from those of `old_text` (`old`, one document) and the items that
    changed, split(text)), or None (read the file whole). What the agent does with a file that changed a
    little. The plan of making old's hook policies the new ones is remembered (plan.remember_changes): the
    agent's next apply need not compare 100k rules to find the few."""
    from .plan import remember_changes

    if len(old) != 1:
        return None
    change = small_change(text, old_text, source, None, old_split)
    if change is None:
        return None
    hooks = dict(old[0].hooks)
    for hook, (removed, added) in change.patches.items():
        if not removed and not added:
            continue
        rules = list(hooks[hook].rules)
        for i in reversed(removed):
            del rules[i]
        for i, rule in added:
            rules.insert(i, rule)
        hooks[hook] = hooks[hook].model_copy(update={"rules": tuple(rules)})
        remember_changes(old[0].hooks[hook], hooks[hook],
                         next(h.rules for h in change.plan.hooks if h.hook == hook and h.action == "swap"))
    return [old[0].model_copy(update={"hooks": hooks})], change.split


def apply(text: str, dig: str, netns: str | None, backend, state_root: str | None, source: str):
    """Under the control-plane lock: the ApplyResult of making the change as live edits, or None (nothing
    was changed: the full path runs)."""
    from .apply import ApplyError
    from .result import ApplyResult

    old_text = read_applied(netns, state_root)
    if old_text is None:
        return None
    change = small_change(text, old_text, source, netns)
    if change is None:
        return None
    done = []
    try:
        for key, edits in change.forward.items():
            backend.apply_edits(key[0], key[1], netns, edits)
            done.append(key)
    except PolicyError:   # refused before it wrote (a name taken, no room, ...): undo the others, full path
        _undo(change, done, backend, netns)
        return None
    except BaseException as e:
        errors = _undo(change, done, backend, netns)
        if not isinstance(e, Exception):
            raise
        raise ApplyError("apply policy", e, len(done), errors) from e
    unchanged.record(dig, change.plan, netns, state_root, text=text)
    return ApplyResult(change.plan, True, repaired=list(getattr(backend, "repaired", [])))


def _undo(change: Change, done: list, backend, netns: str | None) -> list[str]:
    errors = []
    for key in reversed(done):
        try:
            backend.apply_edits(key[0], key[1], netns, change.backward[key])
        except BaseException as e:  # noqa: BLE001 - keep undoing the others
            errors.append(f"{key[0]} {key[1].value}: {e}")
    return errors


def read_applied(netns: str | None, state_root: str | None) -> str | None:
    """The text of the file applied last, when its engines are as that apply left them."""
    rec = unchanged.as_recorded(netns, state_root)
    return None if rec is None else unchanged.applied_text(rec, netns, state_root)
