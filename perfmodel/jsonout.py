"""Strict JSON output (one home for how perfmodel writes JSON).

``json.dumps`` writes ``NaN`` and ``Infinity`` for non-finite floats, which is not JSON: strict readers
(``jq``, JavaScript, ``json.loads(..., parse_constant=...)``) reject the file. A number perfmodel could not
obtain (an interval with no kept resamples, a missing measurement) is written as ``null`` instead, and numpy
scalars and arrays as plain numbers and lists.
"""

from __future__ import annotations

import json
import math

import numpy as np


def json_safe(obj, default=None):
    """``obj`` with non-finite floats replaced by ``None``, numpy scalars/arrays as Python numbers/lists and
    tuples as lists; objects JSON cannot hold go through ``default`` (``TypeError`` if it is None)."""
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        return {_key(k): json_safe(v, default) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_safe(v, default) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if default is None:
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
    return json_safe(default(obj), None)


def _key(k) -> str:
    """A dict key as ``json.dumps`` writes it (``1`` -> ``"1"``, ``True`` -> ``"true"``, ``None`` -> ``"null"``)."""
    k = json_safe(k, str)
    return k if isinstance(k, str) else json.dumps(k)


def dumps(obj, *, indent: int | None = 2, default=None) -> str:
    """Strict JSON text of ``obj`` (:func:`json_safe`, then ``json.dumps(..., allow_nan=False)``)."""
    return json.dumps(json_safe(obj, default), indent=indent, allow_nan=False)


def loads_object(text: str, where: str, *, hint: str = "", fix: str = "") -> dict:
    """``json.loads(text)`` if it is a JSON object, else ``ValueError`` starting with ``where`` (file and line,
    or entry): ``"{where}: not valid JSON (...)"`` or ``"{where}: expected a JSON object{hint}, got list"``,
    each ending with ``fix`` (what to do about it)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg}){fix}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object{hint}, got {type(obj).__name__}{fix}")
    return obj
