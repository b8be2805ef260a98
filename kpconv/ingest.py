"""``kpconv ingest``: any supported annotation format -> one validated, normalized manifest.

The reader (``kpconv.formats.<fmt>``) yields raw instances in its own units; this module does the rest
once for every format: image sizes from the image headers (in parallel, EXIF orientation applied),
path checks, normalization to 0..1, coordinate validation with a small clamping tolerance, bbox
derivation, instance numbering, duplicate detection, the problem report, and an atomic write.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
from json.encoder import encode_basestring as _jstr  # what json.dumps(ensure_ascii=False) uses
from math import isfinite
from dataclasses import dataclass
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import formats
from .errors import AnnotationError, ImageError, Location, NothingToWrite, ProblemsFound
from .formats.base import IngestOptions, RawInstance, ReadContext
from .imageinfo import read_sizes
from .keypoints import infer_flip_pairs, pairs_to_indices, remap_pairs
from .manifest import DECIMALS, Header, ManifestWriter, Record, _dumps, atomic_output
from .problems import Report
from .progress import progress

CHUNK = 4096


@dataclass
class IngestResult:
    format: str
    written: int
    header: Header
    report: Report
    output: str
    images: int = 0
    skipped: int = 0


def ingest(sources: Sequence[Union[str, Path]], output: str = "-", fmt: str = "auto",
           images: Optional[Union[str, Path]] = None, options: Optional[IngestOptions] = None,
           strict: bool = False, report_path: Optional[str] = None) -> IngestResult:
    """Read ``sources`` and write the manifest to ``output`` (a path, or ``-`` for stdout).

    Raises :class:`AnnotationError` for a malformed file, :class:`ProblemsFound` in strict mode when
    any record had a problem, :class:`NothingToWrite` when every record was skipped. In every failure
    case nothing is written to ``output``.
    """
    options = options or IngestOptions()
    paths = [Path(s) for s in sources]
    if not paths:
        raise AnnotationError("no annotation source given")
    for p in paths:
        if not p.exists():
            raise AnnotationError("no such file or directory", Location(str(p)))
    reader_cls = formats.detect(paths) if fmt == "auto" else formats.get(fmt)
    root = Path(images) if images is not None else reader_cls.default_images_root(paths)
    if not root.is_dir():
        raise AnnotationError("images root is not a directory (set it with --images)", Location(str(root)))
    root = Path(os.path.abspath(root))

    with contextlib.ExitStack() as stack:
        stack.enter_context(_gc_paused())
        report_stream = stack.enter_context(atomic_output(report_path)) if report_path else None
        report = Report(stream=report_stream)
        ctx = ReadContext(options=options, report=report, images_root=root)
        result = reader_cls().read(paths, ctx)
        header, index = _header(reader_cls.name, result, options, root)
        finalizer = _Finalizer(header, index, root, options, report, dense_names=result.meta.keypoints,
                               dense_checked=reader_cls.dense_checked)
        failure = None
        try:
            with atomic_output(output) as out:
                ManifestWriter(out, header)
                for text in finalizer.run(result.instances):
                    out.write(text)
                if strict and report.fails_strict:
                    first = report.first_failing()
                    raise ProblemsFound(report.first, f"--strict: {report.count('error') + report.count('warning')} "
                                                      f"problem(s), nothing written; first: {first}")
                if finalizer.written == 0:
                    first = report.first_failing() or (report.first[0] if report.first else None)
                    raise NothingToWrite("no record could be written: every record was skipped "
                                         f"({report.count()} problem(s))" + (f"; first: {first}" if first else ""))
        except (ProblemsFound, NothingToWrite) as e:
            failure = e  # no manifest, but the --report file is still written: it tells why
            failure.report = report
        if failure is None:
            return IngestResult(reader_cls.name, finalizer.written, header, report, output,
                                images=len(finalizer.sizes), skipped=report.skipped)
    raise failure


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection while ingesting (restored afterwards).

    A parsed annotation file is millions of objects, and each collection walks them all while
    ingest creates next to no reference cycles; pausing the collector saved ~13% of the time of
    100,000 COCO instances (``benchmarks/bench_ingest.py``)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _display(path: str, root: Path) -> str:
    p = Path(os.path.abspath(path))
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def _header(fmt: str, result, options: IngestOptions, root: Path) -> Tuple[Header, Dict[str, int]]:
    meta = result.meta
    names = list(options.keypoints) if options.keypoints else list(meta.keypoints)
    if not names:
        raise AnnotationError("no keypoint names found in the annotations; give them with --keypoints")
    if options.skeleton:
        try:
            skeleton = pairs_to_indices(options.skeleton, names)
        except ValueError as e:
            raise AnnotationError(f"--skeleton: {e}") from None
    else:
        skeleton = remap_pairs(meta.skeleton, meta.keypoints, names)
    if options.flip_pairs:
        try:
            flips = pairs_to_indices(options.flip_pairs, names)
        except ValueError as e:
            raise AnnotationError(f"--flip-pairs: {e}") from None
    elif meta.flip_pairs_given:
        flips = remap_pairs(meta.flip_pairs, meta.keypoints, names)
    else:
        flips = infer_flip_pairs(names)
    source = {"format": fmt, "files": [_display(f, root) for f in result.source_files]}
    source.update(result.extra)
    header = Header(names, sorted(skeleton), sorted(flips), root.as_posix(), source)
    return header, {n: i for i, n in enumerate(names)}


class _Finalizer:
    """Turns raw instances into manifest lines (JSON text), reporting and skipping bad ones.

    Hot path (profiled on 100,000 COCO instances, see ``benchmarks/bench_ingest.py``): everything
    that depends only on the image (path checks, size, scale, tolerances, the JSON of the line's first
    fields) is computed once per image and cached, and each line is formatted directly, byte for byte
    what ``json.dumps(Record.to_json())`` gives (``_slow_line`` falls back to exactly that for a value
    of an unexpected type; ``tests/test_ingest_lines.py`` checks both against each other).
    """

    def __init__(self, header: Header, index: Dict[str, int], root: Path, options: IngestOptions,
                 report: Report, dense_names: Optional[Sequence[str]] = None, dense_checked: bool = False):
        self.k = len(header.keypoints)
        self.dense_names = list(dense_names) if dense_names is not None else None
        self.dense_checked = dense_checked      # the reader checked the types of the dense values
        # RawInstance.dense rows are validated and formatted a chunk at a time when their order is
        # the manifest's; any other row (or a dense row with any problem) goes through _finalize.
        self._chunked = self.dense_names == list(header.keypoints)
        self._fmt = _ChunkFormat(self.k) if self._chunked else None
        self.index = index
        self.root = root
        self.root_str = str(root)
        # root + "/" when it is a normalized absolute path: joined with a plain relative path (see
        # _PLAIN_PATH) that is the normalized full path, and the path is its own relative path
        self._plain_root = self.root_str + "/" if (os.path.isabs(self.root_str) and self.root_str != "/"
                                                   and os.path.normpath(self.root_str) == self.root_str) else None
        self.options = options
        self.report = report
        self.sizes: Dict[str, Union[Tuple[int, int], ImageError]] = {}
        self.seen: set = set()
        self.next_instance: Dict[str, int] = {}
        self.skipped = 0
        self.written = 0
        self.source_display: Dict[str, str] = {}
        self._paths: Dict[Tuple[Optional[str], str], Union[Tuple[str, str], bool]] = {}
        self._images: Dict[Tuple[str, bool], tuple] = {}     # (full path, normalized) -> per-image constants
        self._sources: Dict[Optional[str], str] = {}          # source file -> '{"file":"..."'
        self._blank = [0.0, 0.0, 0] * self.k
        self._kp_format = ",".join(["[%r,%r,%d]"] * self.k)
        self._num_format = ",".join(["[%.6f,%.6f,%d]"] * self.k) + '],"bbox":[%.6f,%.6f,%.6f,%.6f'
        assert DECIMALS == 6, "_num_format writes 6 decimals"

    def run(self, instances) -> Iterator[str]:
        """Manifest lines (with their newline), one text per chunk of instances."""
        it = iter(progress(instances, desc="ingest", unit="inst"))
        resolve, finalize, sizes = self._resolve, self._finalize, self.sizes
        while True:
            chunk = list(islice(it, CHUNK))
            if not chunk:
                return
            resolved = [resolve(raw) for raw in chunk]
            todo = {p[1] for p in resolved if p is not None and p[1] not in sizes}
            if todo:
                sizes.update(read_sizes(sorted(todo), self.options.workers))
            fast = self._dense_chunk(chunk, resolved) if self._chunked else None
            lines = []
            for raw, res, head in zip(chunk, resolved, fast or _nones(len(chunk))):
                if head is not None:
                    line = self._fast_line(raw, res[0], head)
                elif res is None:
                    line = None
                else:
                    line = finalize(raw, res)
                if line is None:
                    self.skipped += 1
                else:
                    lines.append(line)
            self.written += len(lines)
            yield "".join(lines)

    def _resolve(self, raw: RawInstance) -> Optional[Tuple[str, str]]:
        """(path relative to root, absolute path) or None after reporting a path problem."""
        key = (raw.image_base, raw.image)
        res = self._paths.get(key)
        if res is None and raw.image_base is None and self._plain_root and raw.image.__class__ is str \
                and _PLAIN_PATH(raw.image):
            res = self._paths[key] = (raw.image, self._plain_root + raw.image)  # what the below gives
        if res is None:
            base = raw.image_base or self.root_str
            given = raw.image.replace("\\", "/")
            full = os.path.normpath(os.path.join(base, given))
            rel = os.path.relpath(full, self.root_str)
            outside = os.path.isabs(given) or rel == ".." or rel.startswith("../") or os.path.isabs(rel)
            res = self._paths[key] = False if outside and not self.options.allow_outside_root \
                else (Path(rel).as_posix(), full)
        if res is False:
            self.report.add("path_outside_root",
                            f"image path {raw.image!r} is outside the images root {self.root_str} "
                            "(use --allow-outside-root to accept it)", raw.location.with_field("image"))
            return None
        return res

    def _image(self, rel: str, full: str, normalized: bool):
        """Per-image constants: (w, h, sx, sy, tol_x, tol_y, line prefix), or the ImageError."""
        size = self.sizes[full]
        if isinstance(size, ImageError):
            return size
        w, h = size
        sx, sy = (1.0, 1.0) if normalized else (1.0 / w, 1.0 / h)
        tol_x = max(self.options.tolerance_px / w, self.options.tolerance_frac)
        tol_y = max(self.options.tolerance_px / h, self.options.tolerance_frac)
        prefix = None
        if type(w) is int and type(h) is int and type(rel) is str:
            prefix = f'{{"image":{_jstr(rel)},"width":{w},"height":{h},"keypoints":['
        consts = self._images[(full, normalized)] = (w, h, sx, sy, tol_x, tol_y, prefix)
        return consts

    def _finalize(self, raw: RawInstance, res: Tuple[str, str]) -> Optional[str]:
        """One instance, keypoint by keypoint: reports the first problem and skips, else the line."""
        rel, full = res
        consts = self._images.get((full, raw.normalized))
        if consts is None:
            consts = self._image(rel, full, raw.normalized)
        loc = raw.location
        if isinstance(consts, ImageError):
            reason = "missing_image" if "does not exist" in consts.message else "unreadable_image"
            self.report.add(reason, f"image {raw.image!r}: {consts.message}", loc.with_field("image"))
            return None
        w, h, sx, sy, tol_x, tol_y, prefix = consts
        if raw.size is not None and tuple(raw.size) != (w, h):
            self.report.add("size_mismatch", f"annotation states {raw.size[0]}x{raw.size[1]} but image "
                            f"{rel} is {w}x{h} (EXIF orientation applied); using the image's size", loc)
        kps = self._blank[:]    # flat [x0, y0, v0, x1, ...]
        xs: List[float] = []
        ys: List[float] = []
        index = self.index
        points = raw.keypoints if raw.dense is None else raw.points(self.dense_names)
        for name, point in points.items():
            i = index.get(name)
            if i is None:
                self.report.add("unknown_keypoint", f"keypoint {name!r} is not one of the keypoint names "
                                f"({', '.join(index)})", loc.with_field(name))
                return None
            x, y, v = point
            if v not in (0, 1, 2) or isinstance(v, bool):
                self.report.add("bad_visibility", f"keypoint {name!r}: expected visibility 0, 1 or 2, got {v!r}",
                                loc.with_field(name))
                return None
            if v == 0:
                continue
            if not (isinstance(x, _NUMBER) and isinstance(y, _NUMBER) and _finite(x) and _finite(y)):
                self.report.add("bad_coordinate", f"keypoint {name!r}: expected finite x and y, got ({x!r}, {y!r})",
                                loc.with_field(name))
                return None
            cx = x * sx
            cy = y * sy
            if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
                cx, cy = self._clamp(name, x, y, cx, cy, w, h, tol_x, tol_y, raw.normalized, loc)
                if cx is None:
                    return None
            j = 3 * i
            kps[j] = cx            # rounded to DECIMALS when formatted (_numbers)
            kps[j + 1] = cy
            kps[j + 2] = int(v)
            xs.append(cx)
            ys.append(cy)
        if not xs:
            self.report.add("no_keypoints", "instance has no labelled keypoint", loc)
            return None
        bbox = self._bbox_values(raw, sx, sy, xs, ys, loc)
        instance = self._instance(rel, raw, loc)
        if instance is None:
            return None
        group, split = raw.group, raw.split
        if prefix is None or not (group is None or type(group) is str) or not (split is None or type(split) is str):
            return self._slow_line(rel, w, h, kps, bbox, instance, raw, loc)
        return "%s%s],\"instance\":%s,\"group\":%s,\"split\":%s,\"source\":%s%s}\n" % (
            prefix, self._numbers(kps, bbox), _jstr(instance),
            "null" if group is None else _jstr(group), "null" if split is None else _jstr(split),
            self._source_json(loc), _category_json(raw))

    def _instance(self, rel: str, raw: RawInstance, loc: Location) -> Optional[str]:
        """The instance id (numbered in order of appearance when not given), or None after
        reporting a duplicate."""
        if raw.instance is None:
            n = self.next_instance.get(rel, 0)
            instance = _SMALL[n] if n < len(_SMALL) else str(n)
            self.next_instance[rel] = n + 1
        else:
            instance = str(raw.instance)
        key = (rel, instance)
        if key in self.seen:
            self.report.add("duplicate_instance", f"image {rel} instance {instance!r} appears twice; "
                            "keeping the first", loc)
            return None
        self.seen.add(key)
        return instance

    def _dense_chunk(self, chunk: List[RawInstance], resolved: list) -> Optional[list]:
        """Per row of ``chunk``: the start of its line up to the bbox's last number (image, size,
        keypoints and bbox, exactly what ``_finalize`` writes) for a row in dense form that is valid as
        it is, with nothing to report, clamp or fix; None for any other row (``_finalize`` does it).
        Validated, normalized and formatted for the whole chunk at once with numpy, with the very
        float operations ``_finalize`` does (IEEE-exact), so the bytes are the same."""
        rows, heads, boxes, derived, dense = [], [], [], [], []
        n3, images, sizes = 3 * self.k, self._images, self.sizes
        sx, sy = [], []
        for i, (raw, res) in enumerate(zip(chunk, resolved)):
            d = raw.dense
            if d is None or res is None or raw.normalized or d.__class__ is not list or len(d) != n3:
                continue
            full = res[1]
            consts = images.get((full, False))
            if consts is None:
                consts = self._image(res[0], full, False)
            if consts.__class__ is not tuple or consts[6] is None:
                continue
            if raw.size is not None and raw.size != sizes[full]:
                continue    # a tuple equal to the image's size passes; anything else: the exact way
            g, s = raw.group, raw.split
            if not (g is None or g.__class__ is str) or not (s is None or s.__class__ is str):
                continue
            b = raw.bbox
            if b is None:
                derived.append(True)
                boxes.append(_UNIT_BOX)
            elif (b.__class__ is list or b.__class__ is tuple) and len(b) == 4:
                derived.append(False)
                boxes.append(b)
            else:
                continue
            rows.append(i)
            dense.append(d)
            sx.append(consts[2])
            sy.append(consts[3])
            heads.append(consts[6])
        if not rows:
            return None
        if not ((self.dense_checked or set(map(type, chain.from_iterable(dense))) <= _NUMBER_TYPES)
                and set(map(type, chain.from_iterable(boxes))) <= _NUMBER_TYPES):
            keep = [j for j, (d, b) in enumerate(zip(dense, boxes))
                    if set(map(type, d)) <= _NUMBER_TYPES and set(map(type, b)) <= _NUMBER_TYPES]
            rows, heads, boxes, derived, dense, sx, sy = ([a[j] for j in keep]
                                                          for a in (rows, heads, boxes, derived, dense, sx, sy))
            if not rows:
                return None
        m = len(rows)
        try:
            a = np.fromiter(chain.from_iterable(dense), np.float64, m * n3).reshape(m, n3)
            bb = np.fromiter(chain.from_iterable(boxes), np.float64, m * 4).reshape(m, 4)
        except OverflowError:   # an int beyond the float range: those rows the exact way
            return None
        texts = self._fmt.rows(a, bb, np.array(derived, dtype=bool), np.array(sx), np.array(sy))
        out = [None] * len(chunk)
        for j, head, text in zip(rows, heads, texts):
            if text.__class__ is tuple:     # valid, but a value the exact formatter must write
                out[j] = head + self._numbers(*text)
            elif text is not None:
                out[j] = head + text
        return out

    def _fast_line(self, raw: RawInstance, rel: str, head: str) -> Optional[str]:
        """The line of a row ``_dense_chunk`` validated and wrote ``head`` of; None after reporting
        a duplicate."""
        if raw.instance is None:
            n = self.next_instance.get(rel, 0)
            instance = _SMALL[n] if n < 256 else str(n)
            self.next_instance[rel] = n + 1
            key = (rel, instance)
            if key in self.seen:
                self.report.add("duplicate_instance", f"image {rel} instance {instance!r} appears twice; "
                                "keeping the first", raw.location)
                return None
            self.seen.add(key)
        else:
            instance = self._instance(rel, raw, raw.location)
            if instance is None:
                return None
        group, split, loc = raw.group, raw.split, raw.location
        if loc.line is None and loc.record.__class__ is str:    # file and record id (COCO)
            src = self._sources.get(loc.file)
            if src is None:
                src = self._sources[loc.file] = _dumps(self._source(Location(loc.file)))[:-1]
            src = (src + ',"id":' if src != "{" else '{"id":') + _jstr(loc.record) + "}"
        else:
            src = self._source_json(loc)
        return "%s],\"instance\":%s,\"group\":%s,\"split\":%s,\"source\":%s%s}\n" % (
            head, _jstr(instance), "null" if group is None else _jstr(group),
            "null" if split is None else _jstr(split), src, _category_json(raw))

    def _numbers(self, kps: list, bbox: List[float]) -> str:
        """``[x,y,v],...],"bbox":[x,y,w,h`` with every coordinate as ``repr(round(c, DECIMALS))``.

        All coordinates are in 0..1 here. ``"%.6f" % c`` has the very digits ``round(c, 6)`` rounds
        to (both are CPython's correctly rounded dtoa, mode 3), and the repr of that rounded float is
        those digits without trailing zeros, except below 1e-4 where repr switches to exponent
        notation: those few lines are formatted from ``round`` instead. Three times faster than
        ``repr(round(c, 6))`` per value, which dominated ingest time.
        """
        # Every coordinate is followed by a comma (one added at the end), visibilities by "]": strip
        # up to six trailing zeros of every coordinate with four C-speed passes, then "0." -> "0.0".
        text = (self._num_format % (*kps, *bbox) + ",").replace("000,", ",").replace("000,", ",") \
            .replace("00,", ",").replace("0,", ",").replace(".,", ".0,")[:-1]
        if "0.0000" in text:        # a value in (0, 1e-4): repr writes it as 5e-05
            r = [round(c, DECIMALS) if c.__class__ is float else c for c in kps]
            b = [round(c, DECIMALS) for c in bbox]
            text = self._kp_format % tuple(r) + '],"bbox":[%r,%r,%r,%r' % (b[0], b[1], b[2], b[3])
        return text

    def _slow_line(self, rel, w, h, kps, bbox, instance, raw, loc) -> str:
        kps = [round(c, DECIMALS) if c.__class__ is float else c for c in kps]
        bbox = [round(c, DECIMALS) for c in bbox]
        points = [kps[j:j + 3] for j in range(0, len(kps), 3)]
        rec = Record(rel, w, h, points, bbox, instance, raw.group, raw.split, self._source(loc), raw.category)
        return _dumps(rec.to_json()) + "\n"

    def _clamp(self, name, x, y, xn, yn, w, h, tol_x, tol_y, normalized, loc):
        """A point outside 0..1: clamped into the image within the tolerance, else (None, None)."""
        cx, cy = min(max(xn, 0.0), 1.0), min(max(yn, 0.0), 1.0)
        if abs(cx - xn) > tol_x or abs(cy - yn) > tol_y:
            shown = f"({x:g}, {y:g})" + ("" if normalized else " px")
            self.report.add("out_of_image", f"keypoint {name!r} at {shown} is outside the "
                            f"{w}x{h} image", loc.with_field(name))
            return None, None
        if (cx, cy) != (xn, yn):
            self.report.add("clamped", f"keypoint {name!r} at ({x:g}, {y:g}) clamped into the image",
                            loc.with_field(name))
        return cx, cy

    def _bbox_values(self, raw, sx, sy, xs, ys, loc) -> List[float]:
        """[x, y, w, h], normalized, not yet rounded: the given bbox clipped to the image, else
        (reported when one was given) the box around the labelled keypoints ``xs``, ``ys``."""
        if raw.bbox is not None:
            try:
                x, y, bw, bh = map(float, raw.bbox)
                ok = bw > 0 and bh > 0 and isfinite(x) and isfinite(y) and isfinite(bw) and isfinite(bh)
            except (TypeError, ValueError):
                ok = False
            if ok:
                x0, y0 = min(max(x * sx, 0.0), 1.0), min(max(y * sy, 0.0), 1.0)
                x1, y1 = min(max((x + bw) * sx, 0.0), 1.0), min(max((y + bh) * sy, 0.0), 1.0)
                if x1 > x0 and y1 > y0:
                    return [x0, y0, x1 - x0, y1 - y0]
            try:
                shown = list(raw.bbox)
            except TypeError:       # a number, not a list: it used to crash here
                shown = raw.bbox
            self.report.add("bad_bbox", f"bbox {shown!r} is not a box inside the image; "
                            "deriving it from the keypoints", loc.with_field("bbox"))
        x0, y0 = min(xs), min(ys)
        return [x0, y0, max(xs) - x0, max(ys) - y0]

    def _source(self, loc: Location) -> dict:
        d = {}
        if loc.file is not None:
            shown = self.source_display.get(loc.file)
            if shown is None:
                shown = self.source_display[loc.file] = _display(loc.file, self.root)
            d["file"] = shown
        if loc.line is not None:
            d["line"] = loc.line
        if loc.record is not None:
            d["id"] = loc.record
        return d

    def _source_json(self, loc: Location) -> str:
        """JSON of ``_source(loc)``, from a per-file cached prefix."""
        line, rec = loc.line, loc.record
        if not (line is None or type(line) is int) or not (rec is None or type(rec) is str):
            return _dumps(self._source(loc))
        head = self._sources.get(loc.file)
        if head is None:
            head = self._sources[loc.file] = _dumps(self._source(Location(loc.file)))[:-1]
        parts = [head]
        if line is not None:
            parts.append(f'"line":{line}')
        if rec is not None:
            parts.append('"id":' + _jstr(rec))
        if head == "{":
            return "{" + ",".join(parts[1:]) + "}"
        return ",".join(parts) + "}"


_NUMBER = (int, float)
_NUMBER_TYPES = frozenset((int, float))   # exact types: bool is not a number here
_SMALL = [str(i) for i in range(256)]
_UNIT_BOX = (0.0, 0.0, 1.0, 1.0)          # placeholder where the bbox is derived from the keypoints
# a relative path of plain names: no empty, "." or ".." part, no backslash
_PLAIN_PATH = re.compile(r"(?:(?!\.\.?(?:/|$))[^/\\]+/)*(?!\.\.?$)[^/\\]+").fullmatch


def _category_json(raw: RawInstance) -> str:
    """``,"category":"..."`` for a record that has one (the last field, as ``Record.to_json``)."""
    return "" if raw.category is None else ',"category":' + _jstr(str(raw.category))


def _nones(n: int):
    return repeat(None, n)


def _round6(c):
    """``c * 10**6`` rounded to an integer exactly as ``"%.6f" % c`` rounds (the exact binary value
    of ``c``, ties to even), for ``c`` in 0..1, elementwise.

    ``p = c * 1e6`` is the product rounded to the nearest float; when ``p`` is not a half-integer,
    ``rint(p)`` is right (the exact product lies on the same side of every half-integer, which is a
    float here). When it is one, the exact product may be just above or below it: its rounding error
    (exactly, with Dekker's product: ``1e6`` has 14 significant bits, the halves of ``c`` 26) decides,
    and only an exact tie goes to even, like ``rint``."""
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


def _finite(c) -> bool:
    """``math.isfinite``, and False for an int beyond the float range (isfinite raises there)."""
    try:
        return isfinite(c)
    except OverflowError:
        return False


def _clip(a):
    """``min(max(a, 0.0), 1.0)`` elementwise with Python's semantics (signed zeros kept as they are)."""
    a = np.where(0.0 > a, 0.0, a)
    return np.where(1.0 < a, 1.0, a)


class _ChunkFormat:
    """Validation, normalization and formatting of a chunk of dense rows with numpy.

    ``rows`` gives per row: None when the row has anything to report, clamp or fix (``_finalize``
    then handles it the exact, one-by-one way), a tuple ``(kps, bbox)`` of Python values for
    ``_Finalizer._numbers`` when a value needs its exact formatter (exponent notation below 1e-4),
    else the text of ``_numbers(kps, bbox)``.

    The text is built as bytes, fixed width (``d.dddddd`` per coordinate, from a table of the 1,000,001
    values ``_round6`` gives), and the trailing zeros are dropped with a mask (the table holds the
    length of each value's text).
    """

    _table = None   # (digits as uint64 of 8 bytes, text length) per value 0 ... 1000000 (shared, lazily)

    def __init__(self, k: int):
        self.k = k

    @classmethod
    def table(cls):
        if cls._table is None:
            three = np.arange(1000)
            d3 = np.stack([48 + three // 100, 48 + three // 10 % 10, 48 + three % 10], 1).astype(np.uint8)
            len3 = 3 - (three % 10 == 0) - (three % 100 == 0) - (three == 0)   # digits left of trailing 0s
            digits = np.empty((1000001, 8), dtype=np.uint8)
            body = digits[:1000000].reshape(1000, 1000, 8)          # value = 1000 * hi + lo
            body[:, :, 0] = 48
            body[:, :, 1] = 46
            body[:, :, 2:5] = d3[:, None, :]
            body[:, :, 5:8] = d3[None, :, :]
            digits[1000000] = np.frombuffer(b"1.000000", dtype=np.uint8)
            kept = np.where(len3[None, :] > 0, 3 + len3[None, :], np.maximum(len3[:, None], 1))
            length = np.empty(1000001, dtype=np.uint8)
            length[:1000000] = 2 + kept.ravel()
            length[1000000] = 3                                      # "1.0"
            cls._table = (digits.view(np.uint64).ravel(), length)
        return cls._table

    def rows(self, a, bb, derived, sx, sy) -> list:
        m, k = len(a), self.k
        x, y, v = a[:, 0::3], a[:, 1::3], a[:, 2::3]
        with np.errstate(invalid="ignore", over="ignore"):
            lab = v != 0
            cx = x * sx[:, None]
            cy = y * sy[:, None]
            inside = ((cx >= 0.0) & (cx <= 1.0) & (cy >= 0.0) & (cy <= 1.0)
                      & ~np.signbit(cx) & ~np.signbit(cy))
            ok = ((v == 0) | (v == 1) | (v == 2)).all(1) & (inside | ~lab).all(1) & lab.any(1)
            cx = np.where(lab, cx, 0.0)
            cy = np.where(lab, cy, 0.0)
            # the given bbox, clipped to the image
            bx, by, bw, bh = bb[:, 0], bb[:, 1], bb[:, 2], bb[:, 3]
            x0, y0 = _clip(bx * sx), _clip(by * sy)
            x1, y1 = _clip((bx + bw) * sx), _clip((by + bh) * sy)
            given = np.stack([x0, y0, x1 - x0, y1 - y0], 1)
            given_ok = (bw > 0) & (bh > 0) & np.isfinite(bb).all(1) & (x1 > x0) & (y1 > y0)
            # else the box around the labelled keypoints
            dx0 = np.where(lab, cx, np.inf).min(1)
            dy0 = np.where(lab, cy, np.inf).min(1)
            dx1 = np.where(lab, cx, -np.inf).max(1)
            dy1 = np.where(lab, cy, -np.inf).max(1)
            around = np.stack([dx0, dy0, dx1 - dx0, dy1 - dy0], 1)
            box = np.where(derived[:, None], around, given)
            ok &= (derived | given_ok) & ~np.signbit(box).any(1)
            okc = ok[:, None]
            xy = np.where(okc[:, :, None], np.stack([cx, cy], 2), 0.0)       # (m, k, 2)
            box = np.where(okc, box, 0.0)
            n_xy = _round6(xy).astype(np.int64)
            n_box = _round6(box).astype(np.int64)
        exact = ~(((n_xy >= 1) & (n_xy <= 99)).any((1, 2)) | ((n_box >= 1) & (n_box <= 99)).any(1))
        digits, length = self.table()
        d_xy = digits[n_xy].view(np.uint8).reshape(m, k, 16)      # x's 8 bytes, then y's
        d_box = digits[n_box].view(np.uint8).reshape(m, 4, 8)
        l_xy = length[n_xy]
        l_box = length[n_box]
        col = np.arange(8, dtype=np.uint8)
        # per keypoint: "[" x "," y "," v "]" ","  (22 bytes; the last one's comma dropped)
        kp = np.empty((m, k, 22), dtype=np.uint8)
        kp[:, :, 0] = 91
        kp[:, :, 1:9] = d_xy[:, :, :8]
        kp[:, :, 9] = 44
        kp[:, :, 10:18] = d_xy[:, :, 8:]
        kp[:, :, 18] = 44
        kp[:, :, 19] = 48 + np.where(okc, v, 0.0).astype(np.uint8)
        kp[:, :, 20] = 93
        kp[:, :, 21] = 44
        kp_keep = np.ones((m, k, 22), dtype=bool)
        kp_keep[:, :, 1:9] = col < l_xy[:, :, 0, None]
        kp_keep[:, :, 10:18] = col < l_xy[:, :, 1, None]
        kp_keep[:, k - 1, 21] = False
        # '],"bbox":[' b0 "," b1 "," b2 "," b3
        bx_ = np.empty((m, 4, 9), dtype=np.uint8)
        bx_[:, :, :8] = d_box
        bx_[:, :, 8] = 44
        bx_keep = np.ones((m, 4, 9), dtype=bool)
        bx_keep[:, :, :8] = col < l_box[:, :, None]
        bx_keep[:, 3, 8] = False
        text = np.concatenate([kp.reshape(m, -1), np.broadcast_to(_BBOX_KEY, (m, len(_BBOX_KEY))),
                               bx_.reshape(m, -1)], 1)
        keep = np.concatenate([kp_keep.reshape(m, -1), np.ones((m, len(_BBOX_KEY)), dtype=bool),
                               bx_keep.reshape(m, -1)], 1)
        blob = text[keep].tobytes().decode("ascii")
        ends = np.cumsum(keep.sum(1)).tolist()
        out = []
        start = 0
        for r, (good, fine, end) in enumerate(zip(ok.tolist(), exact.tolist(), ends)):
            if not good:
                out.append(None)
            elif fine:
                out.append(blob[start:end])
            else:
                kps = [c for cxy, vv in zip(zip(cx[r].tolist(), cy[r].tolist()), v[r].tolist())
                       for c in (*cxy, int(vv))]
                out.append((kps, box[r].tolist()))
            start = end
        return out


_BBOX_KEY = np.frombuffer(b'],"bbox":[', dtype=np.uint8)
