"""Warnings for fields a request carries that the API does not know (``pairid``, ``encodng``).

The contract ignores unknown fields, so that older and newer clients keep working; but a
misspelt optional field then does nothing without a word. The answer says so instead,
additively: a ``warnings`` list, present only when there is something to say, one entry
per distinct unknown name and place, with the nearest known name when one is close.

Bounded like every error path: at most ``MAX_WARNINGS`` entries, names cut to
``MAX_NAME_CHARS`` and shown through ``ascii()``, whatever the body holds.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

MAX_WARNINGS = 20
MAX_NAME_CHARS = 64


def _known(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _shown(name: str) -> str:
    cut = name[:MAX_NAME_CHARS] + ("..." if len(name) > MAX_NAME_CHARS else "")
    return ascii(cut)


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_fields(body: Any, model: type[BaseModel], list_key: str,
                   item_model: type[BaseModel]) -> list[str]:
    """Warnings naming each unknown field of ``body`` and of its ``body[list_key]`` items.

    Args:
        body: the parsed JSON body (already validated against ``model``).
        model: the request model (``SimilarityRequest``, ``EmbedRequest``).
        list_key: its list of items (``pairs``, ``images``).
        item_model: the model of one item (``ImagePair``, ``EmbedImage``).

    Returns:
        e.g. ``["unknown field 'pairid' in pairs[0] ignored (did you mean 'pair_id'?);
        also in 29 more of the pairs"]``; empty when every field is known.
    """
    if not isinstance(body, Mapping):
        return []
    found: dict[tuple[str, str], list[int]] = {}  # (place, name) -> item indexes
    top = _known(model)
    for name in body:
        if isinstance(name, str) and name not in top and len(found) <= MAX_WARNINGS:
            found.setdefault(("", name), [])
    items = body.get(list_key)
    if isinstance(items, list):
        known_item = _known(item_model)
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                continue
            for name in item:
                if isinstance(name, str) and name not in known_item:
                    key = (list_key, name)
                    if key in found or len(found) < MAX_WARNINGS + 1:
                        found.setdefault(key, []).append(index)
    warnings = []
    for (place, name), indexes in found.items():
        if not place:
            warnings.append(f"unknown field {_shown(name)} ignored{_hint(name, top)}")
            continue
        more = (f"; also in {len(indexes) - 1} more of the {place}" if len(indexes) > 1
                else "")
        warnings.append(f"unknown field {_shown(name)} in {place}[{indexes[0]}] ignored"
                        f"{_hint(name, _known(item_model))}{more}")
    if len(warnings) > MAX_WARNINGS:
        warnings = [*warnings[:MAX_WARNINGS], "more unknown fields left out"]
    return warnings
