"""Conntrack states as policy files name them -> enum bg_ct_state (engine.h). Light to import: the engine's
records read them without the models."""

from __future__ import annotations

from bpfgate import contract

CT_STATES = {word: value for value, word in contract.constants("engine").names("bg_ct_state", {
    "BG_CT_NEW": "new", "BG_CT_ESTABLISHED": "established", "BG_CT_RELATED": "related",
    "BG_CT_INVALID": "invalid"}).items()}
