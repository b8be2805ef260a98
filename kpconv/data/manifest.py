"""The canonical manifest: JSON Lines, one header line, then one line per instance
(``schemas/manifest.schema.json``; fields and the continuous, normalized coordinates: docs/ingest.md)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import orjson as _orjson

from . import jsonparse
from ..errors import Location, ManifestError, OutputError

if TYPE_CHECKING:
    import numpy as np

MANIFEST_VERSION = 1
DECIMALS = 6  # normalized coordinates are rounded to 1e-6 of the image size


@dataclass
class Header:
    keypoints: List[str]
    skeleton: List[Tuple[int, int]] = field(default_factory=list)  # 0-based index pairs
    flip_pairs: List[Tuple[int, int]] = field(default_factory=list)  # 0-based (left, right) pairs
    images_root: str = "."
    source: dict = field(default_factory=dict)  # {"format": ..., "files": [...], ...}
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict:
        return {
            "kpconv_manifest": self.version,
            "keypoints": list(self.keypoints),
            "skeleton": [list(p) for p in self.skeleton],
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "images_root": self.images_root,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict, loc: Location = Location()) -> "Header":
        if not isinstance(d, dict) or "kpconv_manifest" not in d:
            raise ManifestError("expected a manifest header line with 'kpconv_manifest' "
                                "(is this the output of 'kpconv ingest'?)", loc)
        if d["kpconv_manifest"] != MANIFEST_VERSION:
            raise ManifestError(f"manifest version {d['kpconv_manifest']!r} is not supported "
                                f"(this kpconv reads version {MANIFEST_VERSION})", loc.with_field("kpconv_manifest"))
        names = d.get("keypoints")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ManifestError("expected a non-empty list of keypoint names", loc.with_field("keypoints"))
        k = len(names)
        pairs = {}
        for key in ("skeleton", "flip_pairs"):
            value = d.get(key, [])
            if not isinstance(value, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(i, int) and 0 <= i < k for i in p)
                    for p in value):
                raise ManifestError(f"expected a list of [i, j] keypoint index pairs (0..{k - 1})",
                                    loc.with_field(key))
            pairs[key] = [tuple(p) for p in value]
        root = d.get("images_root", ".")
        if not isinstance(root, str):
            raise ManifestError("expected a path string", loc.with_field("images_root"))
        return cls(list(names), pairs["skeleton"], pairs["flip_pairs"], root, d.get("source") or {},
                   d["kpconv_manifest"])


@dataclass
class Record:
    image: str                      # path relative to images_root (posix separators)
    width: int                      # pixels, after EXIF orientation
    height: int
    keypoints: List[List[float]]    # K x [x, y, v], x and y normalized, v in {0, 1, 2}
    bbox: List[float]               # [x, y, w, h] normalized
    instance: str                   # instance id, unique within the image
    group: Optional[str] = None     # frames of one video, etc.: split together
    split: Optional[str] = None     # split given by the source (e.g. COCO train/val file)
    source: dict = field(default_factory=dict)  # {"file": ..., "line": n} or {"file": ..., "id": ...}
    category: Optional[str] = None  # only when records of several categories were read together

    @property
    def key(self) -> str:
        return f"{self.image}#{self.instance}"

    def to_json(self) -> dict:
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "keypoints": self.keypoints,
            "bbox": self.bbox,
            "instance": self.instance,
            "group": self.group,
            "split": self.split,
            "source": self.source,
            **({} if self.category is None else {"category": self.category}),
        }

    @classmethod
    def from_json(cls, d: dict, num_keypoints: int, loc: Location = Location()) -> "Record":
        if not isinstance(d, dict):
            raise ManifestError("expected a JSON object", loc)
        for key, kind in (("image", str), ("width", int), ("height", int), ("keypoints", list),
                          ("bbox", list), ("instance", str)):
            if key not in d:
                raise ManifestError("missing required field", loc.with_field(key))
            if not isinstance(d[key], kind) or isinstance(d[key], bool):
                raise ManifestError(f"expected {kind.__name__}, got {type(d[key]).__name__}",
                                    loc.with_field(key))
        if d["width"] <= 0 or d["height"] <= 0:
            raise ManifestError("expected a positive image size", loc.with_field("width"))
        kps = d["keypoints"]
        if len(kps) != num_keypoints:
            raise ManifestError(f"expected {num_keypoints} keypoints (as in the header), got {len(kps)}",
                                loc.with_field("keypoints"))
        for i, p in enumerate(kps):
            if (not isinstance(p, list) or len(p) != 3 or p[2] not in (0, 1, 2)  # (x, y checked inline: hot)
                    or not (isinstance(p[0], (int, float)) and math.isfinite(p[0]))
                    or not (isinstance(p[1], (int, float)) and math.isfinite(p[1]))):
                raise ManifestError(f"keypoint {i}: expected [x, y, v] with finite x, y and v in 0, 1, 2, got {p!r}",
                                    loc.with_field("keypoints"))
        box = d["bbox"]
        if len(box) != 4 or not all(isinstance(c, (int, float)) and 0 <= c <= 1 for c in box):   # (not NaN)
            raise ManifestError(f"expected [x, y, w, h], each from 0 to 1 (normalized), got {box!r}",
                                loc.with_field("bbox"))
        for key in ("group", "split", "category"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ManifestError("expected a string or null", loc.with_field(key))
        return cls(d["image"], d["width"], d["height"], kps, box, d["instance"], d.get("group"),
                   d.get("split"), d.get("source") or {}, d.get("category"))


@dataclass
class RecordBatch:
    """Records in columns, as ingest builds them a chunk at a time: ``keypoints`` (n, K, 3) and ``bbox`` (n, 4)
    float arrays (not yet rounded), every other field a list; written as the same :class:`Record` s
    (``batch.record(i)``) would be. Part of the DenseRows fast path (see :func:`dumps_records`)."""

    image: List[str]
    width: List[int]
    height: List[int]
    keypoints: "np.ndarray"
    bbox: "np.ndarray"
    instance: List[str]
    group: List[Optional[str]]
    split: List[Optional[str]]
    source: List[dict]
    category: List[Optional[str]]

    def __len__(self) -> int:
        return len(self.image)

    def record(self, i: int) -> Record:
        kps = [[x, y, int(v)] for x, y, v in self.keypoints[i].tolist()]
        return Record(self.image[i], self.width[i], self.height[i], kps, self.bbox[i].tolist(), self.instance[i],
                      self.group[i], self.split[i], self.source[i], self.category[i])


def dumps_records(records: Union[Sequence[Record], RecordBatch]) -> bytes:
    """The manifest lines of ``records``: the one place that decides the manifest's bytes. Records are written by
    the reference :func:`_json_line` (``json.dumps``, coordinates ``round(c, 6)``); a RecordBatch (ingest's) gives
    the same bytes faster: records with every number in 0..1 (all that ingest writes) are rounded together with numpy
    (:func:`_round_unit`) and written by one orjson call per batch and one ``%`` format per line; a value
    in (0, 1e-4) (orjson writes ``0.00005``), -0.0, a bad visibility or a field that is not a plain string
    sends the record to :func:`_json_line`. Kept with ingest's DenseRows blocks (they pay together): on
    150,000 COCO instances ingest without both took 11.1 s more (docs/benchmarks.md, *Ingest*)."""
    if not isinstance(records, RecordBatch):
        return b"".join(map(_json_line, records))
    numbers = _unit_numbers(records)
    text: dict = {None: b"null"}
    lines = []
    for i, (image, w, h, nums, inst, group, split, source, cat) in enumerate(zip(
            records.image, records.width, records.height, numbers, records.instance, records.group, records.split,
            records.source, records.category)):
        try:
            if nums is None or w.__class__ is not int or h.__class__ is not int:
                raise TypeError
            line = _LINE % (text.get(image) or _text(text, image), w, h, *nums, text.get(inst) or _text(text, inst),
                            text.get(group) or _text(text, group), text.get(split) or _text(text, split),
                            _orjson.dumps(source),
                            b"" if cat is None else b',"category":' + (text.get(cat) or _text(text, cat)))
        except TypeError:   # not a plain string or dict (orjson.JSONEncodeError is a TypeError)
            line = _json_line(records.record(i))
        lines.append(line)
    return b"".join(lines)


_LINE = (b'{"image":%s,"width":%d,"height":%d,"keypoints":[[%s]],"bbox":[%s],"instance":%s,"group":%s,"split":%s,'
         b'"source":%s%s}\n')


def _text(cache: dict, s) -> bytes:
    """The JSON text of the string ``s``, remembered in ``cache``; TypeError for anything else."""
    if s.__class__ is not str:
        raise TypeError
    t = cache[s] = _orjson.dumps(s)
    return t


def _json_line(r: Record) -> bytes:
    """The reference: one record's line by json, coordinates ``round(c, 6)``."""
    d = r.to_json()
    d["keypoints"] = [[round(float(x), DECIMALS), round(float(y), DECIMALS), int(v)] for x, y, v in r.keypoints]
    d["bbox"] = [round(float(c), DECIMALS) for c in r.bbox]
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def dumps_record(record: Record) -> bytes:
    """One manifest line with its newline (:func:`dumps_records`)."""
    return dumps_records([record])


def _unit_numbers(batch: RecordBatch) -> list:
    """Per record, its JSON texts ``x,y,v],...,[x,y,v`` and ``x,y,w,h`` when all its coordinates lie in
    0..1, none is -0.0 or rounds into (0, 1e-4) and its visibilities are 0, 1 or 2; else None."""
    import numpy as np

    kp, box = batch.keypoints, batch.bbox
    v = kp[:, :, 2]
    with np.errstate(invalid="ignore", over="ignore"):     # (the numbers of other records are not used)
        unit = (((kp[:, :, :2] >= 0) & (kp[:, :, :2] <= 1) & ~np.signbit(kp[:, :, :2])).all((1, 2))
                & ((box >= 0) & (box <= 1) & ~np.signbit(box)).all(1) & ((v == 0) | (v == 1) | (v == 2)).all(1))
        n_xy = _round_unit(kp[:, :, :2])
        n_box = _round_unit(box)
    unit &= ~(((n_xy >= 1) & (n_xy <= 99)).any((1, 2)) | ((n_box >= 1) & (n_box <= 99)).any(1))
    xyv = np.concatenate([n_xy / 1e6, kp[:, :, 2:]], 2)
    # one orjson call for all keypoints: "[[[x,y,v],...],[[...]]]" (NaN or infinity: null); a visibility
    # is the only number followed by "]", so ".0]" -> "]" writes them as ints; then cut at the records'
    # boundaries (a number's text holds no bracket)
    kp_text = _orjson.dumps(xyv, option=_orjson.OPT_SERIALIZE_NUMPY).replace(b".0]", b"]")[3:-3].split(b"]],[[")
    box_text = _orjson.dumps(n_box / 1e6, option=_orjson.OPT_SERIALIZE_NUMPY)[2:-2].split(b"],[")
    return [(kt, bt) if ok else None for ok, kt, bt in zip(unit.tolist(), kp_text, box_text)]


def _round_unit(c):
    """``c * 10**6`` (``c`` in 0..1) rounded to an integer exactly as ``round(c, 6)`` rounds; ``n / 1e6`` is then
    ``round(c, 6)``. ``rint(c * 1e6)`` is right unless the float product is a half-integer; there the exact
    product's rounding error (Dekker's product: ``1e6`` has 14 significant bits, the halves of ``c`` 26)
    decides, and only an exact tie goes to even."""
    import numpy as np

    p = c * 1e6
    n = np.rint(p)
    tie = (p - np.floor(p)) == 0.5
    if tie.any():
        c, p = c[tie], p[tie]
        t = c * 134217729.0                 # Veltkamp split of c into hi + lo, 26 bits each
        hi = t - (t - c)
        lo = c - hi
        err = (hi * 1e6 - p) + lo * 1e6     # c * 1e6 - p, exactly
        n[tie] = np.where(err > 0, np.ceil(p), np.where(err < 0, np.floor(p), n[tie]))
    return n


def dumps_header(header: Header) -> bytes:
    return json.dumps(header.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


@contextmanager
def atomic_output(path: str, mode: str = "w"):
    """Write to ``.<name>.<pid>.<random>.tmp`` beside ``path``, renamed into place only on success (those left by
    a dead process removed first). ``-`` (stdout), a device or a pipe get the output spooled, only once
    complete. Filesystem errors of the output raise :class:`OutputError`; those of other files (an input read
    while the output is open carries its own file name) pass."""
    try:
        with _atomic_output(path, mode) as f:
            yield f
    except OSError as e:
        if e.filename is not None and not _same_output(e.filename, path):
            raise
        raise OutputError(f"cannot write: {e.strerror or e}", Location(str(path))) from None


def _same_output(filename, path: str) -> bool:
    name = os.path.basename(str(filename))
    target = os.path.basename(str(path))
    return name == target or (name.startswith(f".{target}.") and name.endswith(".tmp")) or \
        os.path.abspath(str(path)).startswith(os.path.abspath(str(filename)))


@contextmanager
def _atomic_output(path: str, mode: str):
    target = None if path == "-" else Path(path)
    if target is not None and target.is_dir():
        raise OutputError("is a directory: expected a file path", Location(str(path)))
    if target is None or (target.exists() and not target.is_file() and not target.is_dir()):
        # stdout, or a device or pipe (/dev/null, a FIFO, /dev/stdout) that a rename would replace:
        # spool, then copy once complete.
        with tempfile.TemporaryFile(mode="w+b") as spool:
            text = io.TextIOWrapper(spool, encoding="utf-8", newline="\n") if "b" not in mode else spool
            yield text
            text.flush()
            spool.seek(0)
            with contextlib.ExitStack() as stack:
                out = sys.stdout.buffer if target is None else stack.enter_context(open(target, "wb"))
                shutil.copyfileobj(spool, out, 1 << 20)
                out.flush()
            if text is not spool:
                text.detach()
        return
    target = Path(path)
    for folder in (target.parent, *target.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"cannot write: {folder} is a file, not a directory", Location(str(path)))
            break
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = None
    try:
        with _interrupts_held():   # a Ctrl-C right after mkstemp would leave the file behind
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp",
                                       dir=str(target.parent))
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode open() would give
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            if tmp is not None:
                os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


@contextmanager
def _interrupts_held():
    """SIGINT held back (main thread, POSIX) for the duration: its KeyboardInterrupt comes at the end."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _remove_stale_temporaries(target: Path) -> None:
    """Remove ``.<name>.<pid>.<random>.tmp`` files of ``target`` whose process no longer runs."""
    from .workers import process_alive

    prefix = f".{target.name}."
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        try:
            os.unlink(target.parent / name)
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_manifest(path: str, header: Header, records: Iterable[Record]) -> int:
    """Write a manifest atomically (``-``: stdout); returns the number of records."""
    count = 0
    with atomic_output(path, "wb") as f:
        f.write(dumps_header(header))
        for record in records:
            f.write(_json_line(record))
            count += 1
    return count


def parse_json(line: bytes, loc: Location):
    """One manifest line as JSON (orjson where it gives json's objects); ManifestError when it is not JSON."""
    try:
        return jsonparse.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(f"invalid JSON: {e.msg} (column {e.colno})", loc) from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"invalid UTF-8 at byte {e.start}", loc) from None


def parse_record(line: bytes, num_keypoints: int, loc: Location) -> Record:
    """One record line, validated; ManifestError located at ``loc`` and the field."""
    return Record.from_json(parse_json(line, loc), num_keypoints, loc)


def scan(stream: IO[bytes], name: str) -> Tuple[Header, Iterator[Tuple[int, int, bytes, Record]]]:
    """Read a manifest from a binary stream: the header, and a lazy iterator of
    ``(byte offset, line number, line, Record)`` for each record line (blank lines are skipped); ManifestError
    (with a hint) when the first line is not a header."""
    first = stream.readline()
    loc = Location(name, 1)
    if not first.strip():
        raise ManifestError("empty manifest: expected a header line", loc)
    try:
        d = parse_json(first, loc)
    except ManifestError as e:
        raise ManifestError(f"{e.message}; expected the manifest's header line (a manifest is what "
                            "'kpconv ingest' writes: run it on annotation files first)", loc) from None
    header = Header.from_json(d, loc)
    k = len(header.keypoints)

    def lines():
        offset = len(first)
        for lineno, line in enumerate(stream, start=2):
            start, offset = offset, offset + len(line)
            if line.strip():
                loc = Location(name, lineno)
                yield start, lineno, line, parse_record(line, k, loc)

    return header, lines()


def open_manifest(path: str) -> Tuple[Header, Iterator[Record]]:
    """The header and a lazy record iterator of the manifest at a path or ``-`` (stdin); ManifestError located
    at the file and line of a malformed line."""
    name = "<stdin>" if path == "-" else str(path)
    if path == "-":
        stream = sys.stdin.buffer
    else:
        try:
            stream = open(path, "rb")
        except OSError as e:
            raise ManifestError(f"cannot open manifest: {e.strerror}", Location(name)) from None
    try:
        header, lines = scan(stream, name)
    except BaseException:
        if stream is not sys.stdin.buffer:
            stream.close()
        raise

    def records() -> Iterator[Record]:
        try:
            for _, _, _, record in lines:
                yield record
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

    return header, records()


def read_manifest(path: str) -> Tuple[Header, List[Record]]:
    header, it = open_manifest(path)
    return header, list(it)
