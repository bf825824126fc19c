"""A rule as `bpfgate rules` lists it, from its plain fields (ruledata.rule_data's output, or a journal
line's rule). Light to import: a listing builds the rows of rules edited since its last save from the
journal without the models."""

from __future__ import annotations

from typing import Any

# Rule's fields that say what a rule matches, in its order (a test checks them against the model)
MATCH_FIELDS = ("src", "dst", "protocol", "src_port", "dst_port", "tcp_flags", "icmp_type", "icmp_code", "vlan", "ct")
LISTED_OPTIONS = ("redirect", "reject", "mark", "rate_limit", "log", "count")
_MATCH = frozenset(MATCH_FIELDS)


def match_text(data: dict[str, Any]) -> str:
    """The match fields of a rule's plain fields on one line, as `bpfgate rules` shows them."""
    return " ".join(f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
                    for k, v in data.items() if k in _MATCH) or "any"


def data_row(data: dict[str, Any]) -> tuple:
    """(name, action, match text, options, owner, comment) of a rule's plain fields."""
    return (data["name"], data.get("action", "pass"), match_text(data),
            {k: data[k] for k in LISTED_OPTIONS if k in data}, data.get("owner"), data.get("comment"))
