"""``kpconv ingest``: any supported annotation format -> one validated, normalized manifest.

The reader (``kpconv.formats.<fmt>``) yields raw instances in its own units; this module does the rest
once for every format: image sizes from the image headers (in parallel, EXIF orientation applied),
path checks, normalization to 0..1, coordinate validation with a small clamping tolerance, bbox
derivation, instance numbering, duplicate detection, the problem report, and an atomic write.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import formats
from .errors import AnnotationError, ImageError, Location, NothingToWrite, ProblemsFound
from .formats.base import IngestOptions, RawInstance, ReadContext
from .imageinfo import read_sizes
from .keypoints import infer_flip_pairs, pairs_to_indices, remap_pairs
from .manifest import DECIMALS, Header, ManifestWriter, Record, atomic_output
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
        report_stream = stack.enter_context(atomic_output(report_path)) if report_path else None
        report = Report(stream=report_stream)
        ctx = ReadContext(options=options, report=report, images_root=root)
        result = reader_cls().read(paths, ctx)
        header, index = _header(reader_cls.name, result, options, root)
        finalizer = _Finalizer(header, index, root, options, report)
        failure = None
        try:
            with atomic_output(output) as out:
                writer = ManifestWriter(out, header)
                for record in finalizer.run(result.instances):
                    writer.write(record)
                if strict and report.fails_strict:
                    first = report.first_failing()
                    raise ProblemsFound(report.first, f"--strict: {report.count('error') + report.count('warning')} "
                                                      f"problem(s), nothing written; first: {first}")
                if writer.count == 0:
                    first = report.first_failing() or (report.first[0] if report.first else None)
                    raise NothingToWrite("no record could be written: every record was skipped "
                                         f"({report.count()} problem(s))" + (f"; first: {first}" if first else ""))
        except (ProblemsFound, NothingToWrite) as e:
            failure = e  # no manifest, but the --report file is still written: it tells why
            failure.report = report
        if failure is None:
            return IngestResult(reader_cls.name, writer.count, header, report, output,
                                images=len(finalizer.sizes), skipped=finalizer.skipped)
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
        raise AnnotationError("no keypoint names found in the annotations; give them with --keypoints")
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
    def __init__(self, header: Header, index: Dict[str, int], root: Path, options: IngestOptions,
                 report: Report):
        self.k = len(header.keypoints)
        self.index = index
        self.root = root
        self.root_str = str(root)
        self.options = options
        self.report = report
        self.sizes: Dict[str, Union[Tuple[int, int], ImageError]] = {}
        self.seen: set = set()
        self.next_instance: Dict[str, int] = {}
        self.skipped = 0
        self.source_display: Dict[str, str] = {}

    def run(self, instances) -> Iterator[Record]:
        it = iter(progress(instances, desc="ingest", unit="inst"))
        while True:
            chunk = list(islice(it, CHUNK))
            if not chunk:
                return
            resolved = [self._resolve(raw) for raw in chunk]
            todo = [p for p in resolved if p is not None and p[1] not in self.sizes]
            self.sizes.update(read_sizes([full for _, full in todo], self.options.workers))
            for raw, res in zip(chunk, resolved):
                rec = self._finalize(raw, res) if res is not None else None
                if rec is None:
                    self.skipped += 1
                else:
                    yield rec

    def _resolve(self, raw: RawInstance) -> Optional[Tuple[str, str]]:
        """(path relative to root, absolute path) or None after reporting a path problem."""
        base = raw.image_base or self.root_str
        given = raw.image.replace("\\", "/")
        full = os.path.normpath(os.path.join(base, given))
        rel = os.path.relpath(full, self.root_str)
        outside = os.path.isabs(given) or rel == ".." or rel.startswith("../") or os.path.isabs(rel)
        if outside and not self.options.allow_outside_root:
            self.report.add("path_outside_root",
                            f"image path {raw.image!r} is outside the images root {self.root_str} "
                            "(use --allow-outside-root to accept it)", raw.location.with_field("image"))
            return None
        return Path(rel).as_posix(), full

    def _finalize(self, raw: RawInstance, res: Tuple[str, str]) -> Optional[Record]:
        rel, full = res
        size = self.sizes[full]
        loc = raw.location
        if isinstance(size, ImageError):
            reason = "missing_image" if "does not exist" in size.message else "unreadable_image"
            self.report.add(reason, f"image {raw.image!r}: {size.message}", loc.with_field("image"))
            return None
        w, h = size
        if raw.size is not None and tuple(raw.size) != (w, h):
            self.report.add("size_mismatch", f"annotation states {raw.size[0]}x{raw.size[1]} but image "
                            f"{rel} is {w}x{h} (EXIF orientation applied); using the image's size", loc)
        sx, sy = (1.0, 1.0) if raw.normalized else (1.0 / w, 1.0 / h)
        tol_x = max(self.options.tolerance_px / w, self.options.tolerance_frac)
        tol_y = max(self.options.tolerance_px / h, self.options.tolerance_frac)
        kps = [[0.0, 0.0, 0] for _ in range(self.k)]
        labelled = []
        for name, point in raw.keypoints.items():
            i = self.index.get(name)
            if i is None:
                self.report.add("unknown_keypoint", f"keypoint {name!r} is not one of the keypoint names "
                                f"({', '.join(self.index)})", loc.with_field(name))
                return None
            x, y, v = point
            if v not in (0, 1, 2) or isinstance(v, bool):
                self.report.add("bad_visibility", f"keypoint {name!r}: expected visibility 0, 1 or 2, got {v!r}",
                                loc.with_field(name))
                return None
            if v == 0:
                continue
            if not (isinstance(x, (int, float)) and isinstance(y, (int, float))
                    and math.isfinite(x) and math.isfinite(y)):
                self.report.add("bad_coordinate", f"keypoint {name!r}: expected finite x and y, got ({x!r}, {y!r})",
                                loc.with_field(name))
                return None
            xn, yn = x * sx, y * sy
            cx, cy = min(max(xn, 0.0), 1.0), min(max(yn, 0.0), 1.0)
            if abs(cx - xn) > tol_x or abs(cy - yn) > tol_y:
                shown = f"({x:g}, {y:g})" + ("" if raw.normalized else " px")
                self.report.add("out_of_image", f"keypoint {name!r} at {shown} is outside the "
                                f"{w}x{h} image", loc.with_field(name))
                return None
            if (cx, cy) != (xn, yn):
                self.report.add("clamped", f"keypoint {name!r} at ({x:g}, {y:g}) clamped into the image",
                                loc.with_field(name))
            kps[i] = [round(cx, DECIMALS), round(cy, DECIMALS), int(v)]
            labelled.append((cx, cy))
        if not labelled:
            self.report.add("no_keypoints", "instance has no labelled keypoint", loc)
            return None
        bbox = self._bbox(raw, sx, sy, labelled, loc)
        if raw.instance is None:
            n = self.next_instance.get(rel, 0)
            instance = str(n)
            self.next_instance[rel] = n + 1
        else:
            instance = str(raw.instance)
        key = f"{rel}#{instance}"
        if key in self.seen:
            self.report.add("duplicate_instance", f"image {rel} instance {instance!r} appears twice; "
                            "keeping the first", loc)
            return None
        self.seen.add(key)
        return Record(rel, w, h, kps, bbox, instance, raw.group, raw.split, self._source(loc))

    def _bbox(self, raw, sx, sy, labelled, loc) -> List[float]:
        if raw.bbox is not None:
            try:
                x, y, bw, bh = (float(c) for c in raw.bbox)
                ok = all(math.isfinite(c) for c in (x, y, bw, bh)) and bw > 0 and bh > 0
            except (TypeError, ValueError):
                ok = False
            if ok:
                x0, y0 = min(max(x * sx, 0.0), 1.0), min(max(y * sy, 0.0), 1.0)
                x1, y1 = min(max((x + bw) * sx, 0.0), 1.0), min(max((y + bh) * sy, 0.0), 1.0)
                if x1 > x0 and y1 > y0:
                    return [round(x0, DECIMALS), round(y0, DECIMALS),
                            round(x1 - x0, DECIMALS), round(y1 - y0, DECIMALS)]
            self.report.add("bad_bbox", f"bbox {list(raw.bbox)!r} is not a box inside the image; "
                            "deriving it from the keypoints", loc.with_field("bbox"))
        xs = [p[0] for p in labelled]
        ys = [p[1] for p in labelled]
        x0, y0 = min(xs), min(ys)
        return [round(x0, DECIMALS), round(y0, DECIMALS),
                round(max(xs) - x0, DECIMALS), round(max(ys) - y0, DECIMALS)]

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
