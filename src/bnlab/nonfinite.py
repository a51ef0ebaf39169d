"""How bnlab writes NaN and infinities in JSON, and reads them back.

JSON has no NaN or infinity: a non-finite float is written as the string ``"NaN"``,
``"Infinity"`` or ``"-Infinity"``, and a reader turns those strings back into floats.
The run folder's writers and readers (``bnlab.train.io``) and the report's readers
(``bnlab.report.files``) both use this one codec; it imports nothing of bnlab, so each
may import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["NAN", "NON_FINITE", "decoded", "encodable"]

#: How the infinities are written to JSON, and read back.
NON_FINITE: dict[float, str] = {math.inf: "Infinity", -math.inf: "-Infinity"}
#: How NaN is written.
NAN = "NaN"
_FROM_TEXT = {"Infinity": math.inf, "-Infinity": -math.inf, NAN: math.nan}


def encodable(value: Any) -> Any:
    """``value`` with every NaN/inf float (also inside containers) as its string."""
    if isinstance(value, float) and not math.isfinite(value):
        return NAN if math.isnan(value) else NON_FINITE[value]
    if isinstance(value, Mapping):
        return {k: encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v) for v in value]
    return value


def decoded(value: Any) -> Any:
    """The inverse of :func:`encodable`: the strings "NaN", "Infinity" and "-Infinity"
    (also inside dicts and lists) as floats."""
    if isinstance(value, str):
        return _FROM_TEXT.get(value, value)
    if isinstance(value, dict):
        return {k: decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value
