"""``json.loads`` with orjson's speed where it gives the very same objects.

orjson refuses what Python's json accepts (NaN and Infinity literals, which kpconv reports as
bad_coordinate problems, a byte order mark, lone surrogates, UTF-16) and turns integers beyond 64 bits
into floats: on any orjson error, and for input with 19 or more digits in a row, json parses it, so
results and error messages are always json's. Used by every JSON reader (annotation files, manifest
lines, ``dataset_info.json``, shard state files).

Nesting is limited to :data:`MAX_DEPTH` levels (no annotation format needs more than ten): deeper input
raises :class:`TooDeep`, a ``json.JSONDecodeError``, instead of a ``RecursionError`` here or in any code
that walks the result (schema validation, printing).
"""
from __future__ import annotations

import json

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; json alone gives the same results, slower
    _orjson = None

_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))   # digit -> "0", anything else -> " "
_LONG = b"0" * 19
_NOT_BRACKETS = bytes(i for i in range(256) if i not in b"[]{}")
MAX_DEPTH = 64


class TooDeep(json.JSONDecodeError):
    """JSON nested deeper than :data:`MAX_DEPTH` levels (a ``json.JSONDecodeError``, so callers that
    report invalid JSON report this too, located)."""

    def __init__(self, doc, pos: int = 0):
        doc = doc if isinstance(doc, str) else ""
        super().__init__(f"nested deeper than {MAX_DEPTH} levels", doc, pos)


def has_long_digit_run(data: bytes, step: int = 1 << 22) -> bool:
    """True when ``data`` holds 19 digits in a row (an integer orjson would turn into a float), looked
    for a slice at a time (no copy of a whole large file)."""
    for start in range(0, len(data), step):
        if _LONG in data[max(0, start - 18):start + step].translate(_DIGITS):
            return True
    return False


def loads(data):
    """``json.loads(data)`` (bytes or str); raises what json raises (``json.JSONDecodeError``,
    ``UnicodeDecodeError``) and :class:`TooDeep`."""
    deep = _may_be_deep(data)
    if _orjson is not None and not deep and not has_long_digit_run(data.encode("utf-8", "surrogatepass")
                                                                 if isinstance(data, str) else data):
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    try:
        obj = json.loads(data)
    except RecursionError:
        raise TooDeep(data) from None
    if deep and depth(obj) > MAX_DEPTH:
        raise TooDeep(data)
    return obj


def _may_be_deep(data) -> bool:
    """False when ``data`` surely nests at most MAX_DEPTH levels: the running count of its opening minus
    closing brackets (strings not excluded: an upper bound) stays within it. Only the brackets are
    counted (``bytes.translate`` drops the rest): 0.015 s for the 43 MiB COCO file of
    ``benchmarks/bench_ingest.py``, against 0.46 s for the same count over every byte."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    brackets = data.translate(None, _NOT_BRACKETS)
    if len(brackets) <= MAX_DEPTH:
        return False
    import numpy as np

    level = 0
    for start in range(0, len(brackets), 1 << 22):     # (bounded memory for a file of nothing but brackets)
        a = np.frombuffer(brackets, np.uint8, count=min(1 << 22, len(brackets) - start), offset=start)
        levels = np.cumsum(np.where((a == 91) | (a == 123), 1, -1), dtype=np.int64) + level
        if levels.max() > MAX_DEPTH:
            return True
        level = int(levels[-1])
    return False


def depth(obj) -> int:
    """Nesting depth of a parsed JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = o.values()
        elif not isinstance(o, list):
            continue
        deepest = max(deepest, d)
        stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return deepest
