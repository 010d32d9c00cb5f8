"""Strict JSON for files from strangers: UTF-8, no NaN/Infinity literals, no key twice in one object."""
from __future__ import annotations

import json


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):  # linear: a hostile object may have very many keys
        seen = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {repeated[:60]!r} appears twice in one object")
    return result


def loads(raw: bytes) -> object:
    """Parse strict JSON.

    Raises:
        ValueError: not UTF-8, not JSON, a NaN/Infinity literal, a repeated key, an integer
            beyond Python's digit limit (the message's first line says which).
        RecursionError: nested too deeply.
    """
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
