"""``json.loads`` with orjson's speed where it gives the very same objects.

orjson refuses what Python's json accepts (NaN and Infinity literals, which kpconv reports as
bad_coordinate problems, a byte order mark, lone surrogates, UTF-16) and turns integers beyond 64 bits
into floats: on any orjson error, and for input with 19 or more digits in a row, json parses it, so
results and error messages are always json's. Used for COCO files and manifest lines.
"""
from __future__ import annotations

import json

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; json alone gives the same results, slower
    _orjson = None

_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))   # digit -> "0", anything else -> " "
_LONG = b"0" * 19


def has_long_digit_run(data: bytes, step: int = 1 << 22) -> bool:
    """True when ``data`` holds 19 digits in a row (an integer orjson would turn into a float), looked
    for a slice at a time (no copy of a whole large file)."""
    for start in range(0, len(data), step):
        if _LONG in data[max(0, start - 18):start + step].translate(_DIGITS):
            return True
    return False


def loads(data: bytes):
    """``json.loads(data)``; raises what json raises (``json.JSONDecodeError``, ``UnicodeDecodeError``)."""
    if _orjson is not None and not has_long_digit_run(data):
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(data)
