"""Values remembered for objects while they live, by identity: what was found out about a 100k-rule hook
policy once (its rules checked, its automation rules) is not found out again, and a memo never keeps the
policy alive (a weak reference) nor answers for another object that got its id. Models compare and hash by
value, or not at all: a WeakKeyDictionary does not serve."""

from __future__ import annotations

import weakref
from typing import Any


class ObjectMemo:
    def __init__(self):
        self._entries: dict[int, tuple[weakref.ref, Any]] = {}

    def put(self, obj, value) -> None:
        key = id(obj)
        self._entries[key] = (weakref.ref(obj, lambda _ref: self._entries.pop(key, None)), value)

    def get(self, obj, default=None):
        """The value put for this very object, or `default`."""
        entry = self._entries.get(id(obj))
        return entry[1] if entry is not None and entry[0]() is obj else default

    def __contains__(self, obj) -> bool:
        entry = self._entries.get(id(obj))
        return entry is not None and entry[0]() is obj
