"""Size limits on what input files may declare, each overridable by an environment variable."""
from __future__ import annotations

import os

from fwedge.errors import FwEdgeError


def byte_limit(variable: str, default: int, error: type[FwEdgeError]) -> int:
    """The limit in bytes that `variable` sets, else `default`.

    Raises:
        error: the variable is set but is not a positive integer.
    """
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) <= 0:
        raise error(f"{variable} must be a positive number of bytes, got {text!r}")
    return int(text)
