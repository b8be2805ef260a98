"""``kpconv ingest``: any supported annotation format -> one validated, normalized manifest. The reader yields
raw instances in its own units; everything else (image sizes, path checks, normalization, clamping, boxes,
instance numbers, duplicates, the problem report, the atomic write) is done here, once for every format."""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass, replace
from itertools import chain
from math import isfinite
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import formats
from ..errors import AnnotationError, ImageError, Location, NothingToWrite, OutputError, ProblemsFound
from .formats.base import DenseRows, IngestOptions, RawInstance, ReadContext, continuous_offset
from .imageinfo import read_sizes, real_root
from .keypoints import infer_flip_pairs, pairs_to_indices, remap_pairs
from .manifest import Header, Record, RecordBatch, atomic_output, dumps_header, dumps_records
from .problems import Report
from ..progress import progress

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
    frames = created = None
    if reader_cls.extracts_frames:
        options, frames, created = _frames_dir(options, output, paths)
        if images is None:
            root = frames
    if not root.is_dir():
        raise AnnotationError("images root is not a directory (set it with --images)", Location(str(root)))
    root = Path(os.path.abspath(root))
    # no cyclic garbage collection while ingesting: each collection walks the millions of objects of a parsed
    # annotation file, and ingest makes next to no cycles (~13% of the time of 100,000 COCO instances)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _ingest(paths, output, reader_cls, root, options, strict, report_path)
    except BaseException:
        if created is not None:     # a frames folder made for nothing goes again (extracted frames stay)
            with contextlib.suppress(OSError):
                created.rmdir()
        raise
    finally:
        if gc_was_enabled:
            gc.enable()


def _frames_dir(options: IngestOptions, output: str, paths: List[Path]
                ) -> Tuple[IngestOptions, Path, Optional[Path]]:
    """For a reader that extracts video frames: the options with ``frames_dir`` set (default
    ``<manifest stem>-frames`` beside the manifest, ``<source stem>-frames`` for ``-o -``; a ``.pkg`` before
    the suffix goes too), that folder, created, and the folder when this call created it (else None)."""
    if options.frames_dir is not None:
        frames = Path(options.frames_dir)
    else:
        base = paths[0] if output == "-" else Path(output)
        stem = Path(base.stem).stem if base.stem.lower().endswith(".pkg") else base.stem
        frames = base.parent / f"{stem or base.name}-frames"
    frames = Path(os.path.abspath(frames))
    created = None if frames.is_dir() else frames
    try:
        frames.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the frames folder: {e.strerror or e}", Location(str(frames))) from None
    return replace(options, frames_dir=str(frames)), frames, created


def _ingest(paths: List[Path], output: str, reader_cls, root: Path, options: IngestOptions, strict: bool,
            report_path: Optional[str]) -> IngestResult:
    with contextlib.ExitStack() as stack:
        report_stream = stack.enter_context(atomic_output(report_path)) if report_path else None
        report = Report(stream=report_stream)
        ctx = ReadContext(options=options, report=report, images_root=root)
        result = reader_cls().read(paths, ctx)
        header, index = _header(reader_cls.name, result, options, root)
        finalizer = _Finalizer(header, index, root, options, report, result.meta.keypoints,
                               continuous_offset(reader_cls.pixel_origin))
        failure = None
        try:
            with atomic_output(output, "wb") as out:
                out.write(dumps_header(header))
                for batch in finalizer.run(_chunks(result.instances)):
                    out.write(dumps_records(batch))
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
        raise AnnotationError("no keypoint names found in the annotations; give them with --keypoints",
                              Location(", ".join(str(f) for f in result.source_files) or None))
    def given(pairs, option: str):
        try:
            return pairs_to_indices(pairs, names)
        except ValueError as e:
            raise AnnotationError(f"{option}: {e}") from None

    skeleton = given(options.skeleton, "--skeleton") if options.skeleton else \
        remap_pairs(meta.skeleton, meta.keypoints, names)
    if options.flip_pairs:
        flips = given(options.flip_pairs, "--flip-pairs")
    elif meta.flip_pairs_given:
        flips = remap_pairs(meta.flip_pairs, meta.keypoints, names)
    else:
        flips = infer_flip_pairs(names)
    source = {"format": fmt, "files": [_display(f, root) for f in result.source_files]}
    source.update(result.extra)
    header = Header(names, sorted(skeleton), sorted(flips), root.as_posix(), source)
    return header, {n: i for i, n in enumerate(names)}


class _Finalizer:
    """Turns RawInstances and DenseRows blocks into :class:`RecordBatch` es, reporting and skipping bad ones; what
    depends only on the image (path, size, scale, tolerances) is computed once per image."""

    def __init__(self, header: Header, index: Dict[str, int], root: Path, options: IngestOptions,
                 report: Report, reader_names: Sequence[str], offset: float = 0.0):
        self.k = len(header.keypoints)
        # added to the reader's pixel keypoint coordinates (not to normalized ones, nor to boxes): its source's
        # pixel convention -> kpconv's continuous one (formats.base.PIXEL_ORIGINS)
        self.offset = offset
        self.names = list(header.keypoints)
        self.reader_names = list(reader_names)  # the order of DenseRows keypoints
        self.index = index
        self.root = root
        self.root_str = str(root)
        self.options = options
        self.report = report
        self.sizes: Dict[str, Union[Tuple[int, int], ImageError]] = {}
        self.seen: set = set()
        self.next_instance: Dict[str, int] = {}
        self.written = 0
        self._confine = None if options.allow_outside_root else real_root(self.root_str)  # (resolved once)
        self._paths: Dict[Tuple[Optional[str], str], Union[Tuple[str, str], bool]] = {}
        self._images: Dict[Tuple[str, bool], tuple] = {}     # (full path, normalized) -> per-image constants
        self._shown: Dict[Optional[str], str] = {}            # source file -> as shown in the manifest
        self._dense_scale: Dict[tuple, Union[Tuple[float, float], bool]] = {}  # (full path, stated size) -> (sx, sy)

    def run(self, chunks: Iterable[Union[DenseRows, List[RawInstance]]]) -> Iterator[RecordBatch]:
        """The records of each chunk (:func:`_chunks`)."""
        bar = progress(desc="ingest", unit="inst")      # (None when not shown)
        for chunk in chunks:
            if bar is not None:
                bar.update(len(chunk))
            batch = self._batch(chunk)
            if batch is not None:
                yield batch
        if bar is not None:
            bar.close()

    def _batch(self, chunk: Union[DenseRows, List[RawInstance]]) -> Optional[RecordBatch]:
        """The records of a chunk (its new images' sizes read first); None when none is valid."""
        dense = chunk.__class__ is DenseRows
        if dense:
            paths = {name: self._resolve(None, name) for name in set(chunk.image)}
            resolved = [paths[name] for name in chunk.image]
        else:
            resolved = [self._resolve(raw.image_base, raw.image) for raw in chunk]
        todo = sorted({p[1] for p in resolved if p}.difference(self.sizes))
        self.sizes.update(read_sizes(todo, self._confine))
        rows, kps, boxes = self._dense(chunk, resolved) if dense else (None, None, None)
        out = []                # per record: image, width, height, instance, group, split, source, category
        take, exact = [], []    # per record: its row in kps/boxes, or -1 and its Record in exact
        shown = self._source(chunk.file, None, None)["file"] if dense else None
        for i, res in enumerate(resolved):
            j = rows[i] if dense else -1
            if j >= 0:
                rel = res[0]
                inst = self._instance(rel, None, lambda: Location(chunk.file, record=chunk.record[i]))
                if inst is None:
                    continue
                w, h = self.sizes[res[1]]
                out.append((rel, w, h, inst, None, chunk.split, {"file": shown, "id": chunk.record[i]},
                            chunk.category[i]))
                take.append(j)
                continue
            raw = chunk.row(i, self.reader_names) if dense else chunk[i]
            if not res:
                self._outside(raw)
                continue
            rec = self._finalize(raw, res)
            if rec is not None:
                out.append((rec.image, rec.width, rec.height, rec.instance, rec.group, rec.split, rec.source,
                            rec.category))
                take.append(-1)
                exact.append(rec)
        if not take:
            return None
        take = np.array(take)
        kp, box = np.zeros((len(take), self.k, 3)), np.zeros((len(take), 4))
        if kps is not None:
            kp[take >= 0], box[take >= 0] = kps[take[take >= 0]], boxes[take[take >= 0]]
        if exact:
            kp[take < 0] = [r.keypoints for r in exact]
            box[take < 0] = [r.bbox for r in exact]
        self.written += len(take)
        image, width, height, instance, group, split, source, category = map(list, zip(*out))
        return RecordBatch(image, width, height, kp, box, instance, group, split, source, category)

    def _resolve(self, base: Optional[str], image: str):
        """(path relative to root, absolute path), or False for a path outside the root (reported by
        :meth:`_outside`)."""
        key = (base, image)
        res = self._paths.get(key)
        if res is not None:
            return res
        given = image.replace("\\", "/")
        full = os.path.normpath(os.path.join(base or self.root_str, given))
        rel = os.path.relpath(full, self.root_str)
        outside = os.path.isabs(given) or rel == ".." or rel.startswith("../") or os.path.isabs(rel)
        res = False if outside and not self.options.allow_outside_root else (Path(rel).as_posix(), full)
        self._paths[key] = res
        return res

    def _outside(self, raw: RawInstance) -> None:
        self.report.add("path_outside_root", f"image path {raw.image!r} is outside the images root {self.root_str} "
                        "(use --allow-outside-root to accept it)", raw.location.with_field("image"))

    def _image(self, full: str, normalized: bool):
        """Per-image constants: (w, h, sx, sy, tol_x, tol_y), or the ImageError."""
        size = self.sizes[full]
        if isinstance(size, ImageError):
            return size
        w, h = size
        sx, sy = (1.0, 1.0) if normalized else (1.0 / w, 1.0 / h)
        tol_x = self.options.tolerance_px / w
        tol_y = self.options.tolerance_px / h
        consts = self._images[(full, normalized)] = (w, h, sx, sy, tol_x, tol_y)
        return consts

    def _finalize(self, raw: RawInstance, res: Tuple[str, str]) -> Optional[Record]:
        """One instance, keypoint by keypoint: reports the first problem and skips, else the record."""
        rel, full = res
        consts = self._images.get((full, raw.normalized))
        if consts is None:
            consts = self._image(full, raw.normalized)
        loc = raw.location
        if isinstance(consts, ImageError):
            reason = consts.reason if consts.reason in ("missing_image", "path_outside_root") else "unreadable_image"
            self.report.add(reason, f"image {raw.image!r}: {consts.message}", loc.with_field("image"))
            return None
        w, h, sx, sy, tol_x, tol_y = consts
        off = 0.0 if raw.normalized else self.offset
        if raw.size is not None and tuple(raw.size) != (w, h):
            if tuple(raw.size) == (h, w):
                self.report.add("size_swapped", f"annotation states {raw.size[0]}x{raw.size[1]} but image {rel} "
                                f"is {w}x{h} (EXIF orientation applied): the annotation was made on the image "
                                "turned by 90 degrees, its coordinates cannot be placed on this one; rotate the "
                                "image file (or its EXIF orientation) to match the annotation", loc.with_field("image"))
                return None
            self.report.add("size_mismatch", f"annotation states {raw.size[0]}x{raw.size[1]} but image "
                            f"{rel} is {w}x{h} (EXIF orientation applied); using the image's size", loc)
        kps = [[0.0, 0.0, 0] for _ in range(self.k)]
        xs: List[float] = []
        ys: List[float] = []
        index = self.index
        for name, point in raw.keypoints.items():
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
            if off:
                cx = (x + off) * sx
                cy = (y + off) * sy
            else:
                cx = x * sx
                cy = y * sy
            if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
                cx, cy = self._clamp(name, x, y, cx, cy, w, h, tol_x, tol_y, raw.normalized, loc)
                if cx is None:
                    return None
            kps[i] = [cx, cy, int(v)]
            xs.append(cx)
            ys.append(cy)
        if not xs:
            self.report.add("no_keypoints", "instance has no labelled keypoint", loc)
            return None
        bbox = self._bbox_values(raw, sx, sy, xs, ys, loc)
        instance = self._instance(rel, raw.instance, loc)     # (None: a duplicate, reported)
        if instance is None:
            return None
        return Record(rel, w, h, kps, bbox, instance, raw.group, raw.split, self._source(loc.file, loc.line, loc.record),
                      None if raw.category is None else str(raw.category))

    def _dense(self, rows: DenseRows, resolved: list):
        """The rows with nothing to report, clamp or fix, validated at once with numpy by the same float operations
        as ``_finalize``: ``(take, keypoints, bbox)``, ``take[i]`` = ``i`` for such a row, -1 where ``_finalize``
        decides. Kept with the RecordBatch serializer (see :func:`kpconv.data.manifest.dumps_records`)."""
        n, n3 = len(rows), 3 * self.k
        if self.reader_names != self.names:     # (not in the manifest's keypoint order)
            return [-1] * n, None, None
        fits = self._dense_scale   # (full path, stated size) -> (sx, sy), or False: such rows go the exact way
        keys = [(res and res[1], size) for res, size in zip(resolved, rows.size)]
        for full, size in set(keys).difference(fits):
            consts = full and (self._images.get((full, False)) or self._image(full, False))
            fits[(full, size)] = consts.__class__ is tuple and size in (None, consts[:2]) and consts[2:4]
        scale = [fits[key] for key in keys]
        boxes = rows.bbox
        given = [b for b in boxes if b is not None]
        if given and not (set(map(type, given)) <= _LIST_TYPES and set(map(len, given)) == {4}
                          and set(map(type, chain.from_iterable(given))) <= _NUMBER_TYPES):
            scale = [sxy if b is None or (b.__class__ in _LIST_TYPES and len(b) == 4
                                          and set(map(type, b)) <= _NUMBER_TYPES) else False
                     for sxy, b in zip(scale, boxes)]
            boxes = [b if sxy else None for sxy, b in zip(scale, boxes)]
        try:
            a = np.fromiter(chain.from_iterable(rows.keypoints), np.float64, n * n3).reshape(n, n3)
            bb = np.fromiter(chain.from_iterable([_UNIT_BOX if b is None else b for b in boxes]), np.float64,
                             n * 4).reshape(n, 4)
        except OverflowError:   # an int beyond the float range: the exact way
            return [-1] * n, None, None
        s = np.fromiter(chain.from_iterable([sxy or (1.0, 1.0) for sxy in scale]), np.float64, 2 * n).reshape(n, 2)
        ok, kps, box = _check_dense(a, bb, np.array([b is None for b in boxes]), s[:, 0:1], s[:, 1:2], self.offset)
        ok &= np.array([bool(sxy) for sxy in scale])
        return np.where(ok, np.arange(n), -1).tolist(), kps, box

    def _instance(self, rel: str, given: Optional[str], where) -> Optional[str]:
        """The instance id (``given``, or numbered in order of appearance when None), or None after
        reporting a duplicate at ``where`` (a Location, or a function that makes it)."""
        if given is None:
            n = self.next_instance.get(rel, 0)
            instance = str(n)
            self.next_instance[rel] = n + 1
        else:
            instance = str(given)
        key = (rel, instance)
        if key in self.seen:
            self.report.add("duplicate_instance", f"image {rel} instance {instance!r} appears twice; "
                            "keeping the first", where if isinstance(where, Location) else where())
            return None
        self.seen.add(key)
        return instance

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

    def _source(self, file: Optional[str], line: Optional[int], record: Optional[str]) -> dict:
        d = {}
        if file is not None:
            shown = self._shown.get(file)
            if shown is None:
                shown = self._shown[file] = _display(file, self.root)
            d["file"] = shown
        if line is not None:
            d["line"] = line
        if record is not None:
            d["id"] = record
        return d


_NUMBER = (int, float)
_NUMBER_TYPES = frozenset((int, float))   # exact types: bool is not a number here
_LIST_TYPES = frozenset((list, tuple))
_UNIT_BOX = (0.0, 0.0, 1.0, 1.0)          # placeholder where the bbox is derived from the keypoints


def _chunks(instances: Iterable[Union[RawInstance, DenseRows]]) -> Iterator[Union[DenseRows, List[RawInstance]]]:
    """Each DenseRows block as it is, the RawInstances between them in lists of up to CHUNK."""
    chunk: List[RawInstance] = []
    for item in instances:
        if item.__class__ is DenseRows:
            if chunk:
                yield chunk
                chunk = []
            yield item
        else:
            chunk.append(item)
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _finite(c) -> bool:
    """``math.isfinite``, and False for an int beyond the float range (isfinite raises there)."""
    try:
        return isfinite(c)
    except OverflowError:
        return False


def _clip(a):
    """``min(max(a, 0.0), 1.0)`` elementwise with Python's semantics (signed zeros kept as they are)."""
    return np.where(1.0 < a, 1.0, np.where(0.0 > a, 0.0, a))


def _check_dense(a, bb, derived, sx, sy, off=0.0):
    """``_finalize`` for ``m`` dense rows ``a`` (m, 3K) with boxes ``bb`` (m, 4) at once: (ok per row, the
    keypoints (m, K, 3) as [x, y, v], the boxes (m, 4); meaningless in rows not ok). A row is ok when it
    has nothing to report, clamp or fix: visibilities 0, 1 or 2, labelled points inside the image, at least
    one labelled, and a usable given box (or none: the box around the labelled points). ``off``: added to the
    keypoints' pixel coordinates first (the source's pixel convention, ``_Finalizer.offset``)."""
    x, y, v = a[:, 0::3], a[:, 1::3], a[:, 2::3]
    with np.errstate(invalid="ignore", over="ignore"):
        lab = v != 0
        cx, cy = ((x + off) * sx, (y + off) * sy) if off else (x * sx, y * sy)
        inside = (cx >= 0.0) & (cx <= 1.0) & (cy >= 0.0) & (cy <= 1.0) & ~np.signbit(cx) & ~np.signbit(cy)
        ok = ((v == 0) | (v == 1) | (v == 2)).all(1) & (inside | ~lab).all(1) & lab.any(1)
        cx, cy = np.where(lab, cx, 0.0), np.where(lab, cy, 0.0)
        bx, by, bw, bh = bb[:, 0:1], bb[:, 1:2], bb[:, 2:3], bb[:, 3:4]
        x0, y0, x1, y1 = _clip(bx * sx), _clip(by * sy), _clip((bx + bw) * sx), _clip((by + bh) * sy)
        given = np.concatenate([x0, y0, x1 - x0, y1 - y0], 1)
        given_ok = ((bw > 0) & (bh > 0) & (x1 > x0) & (y1 > y0))[:, 0] & np.isfinite(bb).all(1)
        dx0, dy0 = np.where(lab, cx, np.inf).min(1), np.where(lab, cy, np.inf).min(1)
        dx1, dy1 = np.where(lab, cx, -np.inf).max(1), np.where(lab, cy, -np.inf).max(1)
        around = np.stack([dx0, dy0, dx1 - dx0, dy1 - dy0], 1)
        box = np.where(derived[:, None], around, given)
        ok &= (derived | given_ok) & ~np.signbit(box).any(1)
    kps = np.stack([cx, cy, np.where(lab, v, 0.0)], 2)
    return ok, kps, box
