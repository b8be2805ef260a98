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
import re
from typing import Iterator, Optional, Sequence, Tuple

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



# The sentinel put in place of the streamed array while the rest of the object is parsed.
_SENTINEL_TEXT = "\x00kpconv: streamed array\x00"
_SENTINEL = b'"\\u0000kpconv: streamed array\\u0000"'
_OBJECT_END = re.compile(rb"\}\s*\]")        # a last element (an object) and the array's end
_OBJECT_SPLIT = re.compile(rb"\}\s*,\s*\{")   # between two elements that are objects


def loads_streaming(data: bytes, key: str, required: Sequence[str] = (),
                    chunk_bytes: int = 1 << 20) -> Tuple[object, Optional[Iterator[list]]]:
    """``loads(data)`` of a JSON object whose ``key`` holds a big array of objects (COCO's
    ``annotations``), without holding all of the array's objects at once: ``(doc, chunks)`` where
    ``doc[key]`` is None and ``chunks`` yields the array's elements, a list of about ``chunk_bytes``
    of text at a time, parsed by orjson. Where that cannot be done exactly (no orjson, text that json
    reads differently, an escaped quote anywhere, an array not found, not of objects, or the rest of
    the object without one of the ``required`` keys) it returns ``(loads(data), None)``. Raises what
    :func:`loads` raises; ``chunks`` raises it too when the array itself is not valid JSON.

    Measured on the 43 MiB COCO file of 100,000 annotations of ``benchmarks/bench_ingest.py``: peak RSS
    of the parse 448 MiB for the whole document at once (orjson builds its own tree beside Python's
    objects), 101 MiB a chunk at a time, in about the same CPU time (+0.1 s for the checks of the text).

    Exactness: the array's end ``q`` (an object's ``}`` then ``]``, outside every string: quote parity,
    exact without escaped quotes) is found before the first chunk, as the rest of the object must be
    parsed first; the rest parses with a sentinel in place of the array as the value of its top-level
    ``key`` only when the brackets after ``q`` close the object, which rules out a ``q`` inside the
    array. A ``q`` after the array's end closes a later top-level array, whose key the rest then
    lacks (``required``) or nothing reads. Each chunk is a slice from a known element boundary that
    must parse as elements up to the next boundary or to ``q``; when none does, json parses the
    whole text and decides (its error, or the rest of its array)."""
    start = _array_start(data, key)
    if start is None:
        return loads(data), None
    for tries, m in enumerate(_OBJECT_END.finditer(data, start)):
        end = m.end() - 1
        if tries == 3 or data.count(b'"', start, end) % 2 == 0:
            break                                      # (an odd count: inside a string)
    else:
        return loads(data), None
    doc = None
    if tries < 3:
        try:
            doc = _orjson.loads(data[:start - 1] + _SENTINEL + data[end + 1:])
        except _orjson.JSONDecodeError:
            pass
    if not (isinstance(doc, dict) and doc.get(key) == _SENTINEL_TEXT and all(k in doc for k in required)):
        return loads(data), None
    doc[key] = None
    return doc, _chunks(data, start, end, key, chunk_bytes)


def _array_start(data: bytes, key: str) -> Optional[int]:
    """Just after the ``[`` of ``"key": [`` when streaming may be tried, else None."""
    if _orjson is None or b'\\"' in data or _SENTINEL in data or has_long_digit_run(data) or _may_be_deep(data):
        return None
    m = re.search(rb'"' + re.escape(key.encode()) + rb'"\s*:\s*\[', data)
    if m is None or data[m.end():m.end() + 64].lstrip()[:1] != b"{":
        return None
    return m.end()


def _chunks(data: bytes, start: int, q: int, key: str, chunk_bytes: int) -> Iterator[list]:
    pos, done = start, 0
    while pos <= q:
        part = None
        for tries, m in enumerate(_OBJECT_SPLIT.finditer(data, min(pos + chunk_bytes, q), q)):
            if tries == 4:
                break
            try:
                part = _orjson.loads(b"[" + data[pos:m.start() + 1] + b"]")
            except _orjson.JSONDecodeError:
                continue
            nxt = m.end() - 1
            break
        if part is None:                               # the rest at once
            try:
                part = _orjson.loads(b"[" + data[pos:q + 1])
            except _orjson.JSONDecodeError:         # json decides: its error, or (where it reads
                yield loads(data)[key][done:]       # what orjson refuses) the rest of its array
                return
            nxt = q + 1
        done += len(part)
        yield part
        pos = nxt


def _may_be_deep(data) -> bool:
    """False when ``data`` surely nests at most MAX_DEPTH levels: the running count of its opening minus
    closing brackets (strings not excluded: an upper bound) stays within it. Only the brackets are
    counted (``bytes.translate`` drops the rest): 0.015 s for the 43 MiB COCO file of
    ``benchmarks/bench_ingest.py``, against 0.46 s for the same count over every byte."""
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= MAX_DEPTH:     # (a manifest line: no need to encode it)
            return False
        data = data.encode("utf-8", "surrogatepass")
    brackets = data.translate(None, _NOT_BRACKETS)
    if len(brackets) <= MAX_DEPTH:
        return False
    if len(brackets) < 1 << 12:     # (a manifest header line: not worth numpy's import)
        level = 0
        for c in brackets:
            level += 1 if c in (91, 123) else -1
            if level > MAX_DEPTH:
                return True
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
