"""COCO's id and size rules, shared by the ground-truth reader and the results check.

JSON tells numbers, strings and booleans apart, Python's dictionaries do not (True == 1): `id_key`
keys ids the way JSON compares them.
"""

from __future__ import annotations

import math
from typing import Any


def id_key(value: Any) -> tuple[str, Any] | None:
    """A dictionary key under which ids are equal exactly when JSON says so: 1 and 1.0 are one number,
    "1" is a string and `true` a boolean (Python would confuse True with 1). None for a non-scalar."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("number", value)
    if isinstance(value, float):
        return ("number", value) if math.isfinite(value) else None
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("null", None)
    return None


def is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean, not a string), that a float can hold."""
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and abs(value) < 1e300


def pixels(value: Any) -> int:
    """A width or height: a positive integer, or a float that is one (640.0); else -1 (unknown)."""
    if is_number(value) and value > 0 and float(value).is_integer():
        return int(value)
    return -1
