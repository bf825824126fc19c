"""rule_id -> Rule of a compiled hook (CompiledHook.source), saved with the engine's state as one blob that
is read back only when a rule itself is looked up.

Opening an engine (every CLI command on it) unpickles its saved state; at 100k rules, unpickling the Rule
models is most of that (~0.9 of ~1.3 s). A live edit or a counter read needs no rule but the one it
adds: edits made before the blob is read are kept beside it and applied when it is.

The blob holds the rules as rows (rule_id, index of its fields_set, every field's value in model order)
under the field names: a tuple of a model's values pickles and loads ~2x faster than a reduce per rule,
and the rows are rebuilt without validation (they were valid when saved).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, MutableMapping

from .model import Rule, rebuild_rule

_GONE = None   # an edit that removed the rule
_FIELDS = tuple(Rule.model_fields)


CHUNK = 4096   # rules per pickle of the blob


def _encode(rules: dict[int, Rule]) -> list[bytes]:
    """The rules as pickles of CHUNK rows each: a pickle's rows and memo (which holds every object it wrote)
    live only while it is made, ~50 MB less at 100k rules than one pickle of all the rows."""
    rids = list(rules)
    return [_encode_rows(rules, rids[i:i + CHUNK]) for i in range(0, len(rids), CHUNK)]


def _encode_rows(rules: dict[int, Rule], rids: list[int]) -> bytes:
    field_sets: dict[tuple, int] = {}
    rows = []
    for rid in rids:
        rule = rules[rid]
        fs = field_sets.setdefault(tuple(rule.__pydantic_fields_set__), len(field_sets))
        rows.append((rid, fs, *rule.__dict__.values()))
    return pickle.dumps((_FIELDS, list(field_sets), rows), protocol=pickle.HIGHEST_PROTOCOL)


def _decode(blob: list[bytes]) -> dict[int, Rule]:
    rules: dict[int, Rule] = {}
    for chunk in blob:
        rules.update(_decode_rows(chunk))
    return rules


def _decode_rows(blob: bytes) -> dict[int, Rule]:
    fields, field_sets, rows = pickle.loads(blob)
    if fields != _FIELDS:   # saved by a version whose Rule had other fields: keep the known ones
        known = [i for i, f in enumerate(fields) if f in _FIELDS]
        fields = tuple(fields[i] for i in known)
        rows = [(r[0], r[1], *(r[2 + i] for i in known)) for r in rows]
        field_sets = [tuple(f for f in fs if f in _FIELDS) for fs in field_sets]
    # the rules of one fields_set share one set object (they are frozen: pydantic never changes it, and a
    # model_copy copies it): ~200 bytes less per rule held, 20 MB at 100k rules
    shared = [set(fs) for fs in field_sets]
    return {row[0]: rebuild_rule(dict(zip(fields, row[2:])), shared[row[1]]) for row in rows}


class RuleSources(MutableMapping):
    def __init__(self, rules: dict[int, Rule] | None = None):
        self._rules: dict[int, Rule] = dict(rules or {})
        self._blob: list[bytes] | None = None     # the saved rules (_encode), not read yet
        self._edits: dict[int, Rule | None] = {}  # changes made since, while the blob is unread

    def _all(self) -> dict[int, Rule]:
        if self._blob is not None:
            rules = _decode(self._blob)
            for rid, rule in self._edits.items():
                if rule is _GONE:
                    rules.pop(rid, None)
                else:
                    rules[rid] = rule
            self._rules, self._blob, self._edits = rules, None, {}
        return self._rules

    def __getitem__(self, rid: int) -> Rule:
        if self._blob is not None and self._edits.get(rid) is not None:
            return self._edits[rid]
        return self._all()[rid]

    def __setitem__(self, rid: int, rule: Rule) -> None:
        if self._blob is not None:
            self._edits[rid] = rule
        else:
            self._rules[rid] = rule

    def __delitem__(self, rid: int) -> None:
        self._all().__delitem__(rid)

    def changed_since_saved(self) -> set[int] | None:
        """The rule ids whose rules were set or removed since the saved blob (what is known of them is here,
        not in it), or None when the blob has been read or there is none: then no rule is known unchanged."""
        return set(self._edits) if self._blob is not None else None

    def discard(self, rid: int) -> None:
        """Remove the rule if it is there, without reading the saved ones."""
        if self._blob is not None:
            self._edits[rid] = _GONE
        else:
            self._rules.pop(rid, None)

    def __iter__(self) -> Iterator[int]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"RuleSources({self._all()!r})"

    def __getstate__(self) -> dict:
        if self._blob is None:
            return {"rows": _encode(self._rules), "edits": {}}
        return {"rows": self._blob, "edits": self._edits}   # never read: saved again as it was loaded

    def __setstate__(self, state: dict) -> None:
        self._rules, self._blob, self._edits = {}, state["rows"], dict(state["edits"])
