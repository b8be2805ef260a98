"""What every annotation reader produces (:class:`RawInstance` s in the source's pixels, or COCO's
:class:`DenseRows` blocks, and the keypoint metadata), the :class:`Reader` interface, and the helpers readers
share. Everything else happens once, in :mod:`kpconv.ingest`. Readers report a bad record with
``ctx.report.add(reason, message, location)`` and skip it, raise AnnotationError for a file that cannot be
read at all, and never print."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import ClassVar, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from .. import jsonparse
from ...errors import AnnotationError, Location
from ..problems import Report

# (x, y, v): pixel (or normalized, see RawInstance.normalized) coordinates and COCO visibility.
Point = Tuple[float, float, int]

# Where a source puts pixel centres (each reader's ``PIXEL_ORIGIN``) -> what ingest adds to its pixel keypoints
# (never to boxes or normalized coordinates) to reach kpconv's continuous convention, pixel i's centre at i + 0.5:
# "center" (pixel i's centre at i: COCO, DeepLabCut, dlib, SLEAP) + 0.5, "corner" (continuous) 0 (docs/formats.md).
PIXEL_ORIGINS = {"center": 0.5, "corner": 0.0}


def continuous_offset(origin: str) -> float:
    """What ingest adds to the pixel coordinates of a source whose pixel centres are at ``origin``."""
    try:
        return PIXEL_ORIGINS[origin]
    except KeyError:
        raise ValueError(f"pixel origin {origin!r}: expected one of {', '.join(PIXEL_ORIGINS)}") from None


def from_continuous(value, origin: str):
    """kpconv's continuous pixel coordinate(s) ``value`` as a tool whose pixel centres are at ``origin`` writes
    them (the inverse of ingest's conversion), e.g. ``from_continuous(x_px, kpconv.data.formats.dlc.PIXEL_ORIGIN)``."""
    return value - continuous_offset(origin)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def load_json(path: Path):
    """The JSON document in ``path``; a located AnnotationError when it cannot be read or parsed."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AnnotationError(f"cannot read file: {e.strerror}", Location(str(path))) from None
    try:
        return jsonparse.loads(data)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})",
                              Location(str(path), e.lineno)) from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"not UTF-8 text: {e.reason} at byte {e.start}", Location(str(path))) from None


def first_lines(path: Path, n: int) -> Optional[List[str]]:
    """The first ``n`` lines of a UTF-8 text file (64 KiB each at most), or None when it is not one."""
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            return [f.readline(1 << 16) for _ in range(n)]
    except (OSError, UnicodeDecodeError):
        return None


def wanted_keypoints(wanted: Optional[Sequence[str]], names: Sequence[str], what: str,
                     loc: Location) -> Optional[Set[str]]:
    """``--keypoints`` as a set (None: every keypoint), each checked to be one of ``names`` (``what`` they are)."""
    missing = [n for n in wanted or [] if n not in names]
    if missing:
        raise AnnotationError(f"--keypoints: {', '.join(map(repr, missing))} not among the {what} "
                              f"({', '.join(names)})", loc)
    return set(wanted) if wanted else None


def head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a file (b"" when it cannot be read): what ``detect`` looks at."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def opens_with(data: bytes, char: bytes) -> bool:
    """Whether a text's first character after a byte order mark and white space is ``char`` (``{``, ``[``)."""
    return data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(char)


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts with HDF5's signature."""
    return head(path, 8) == _HDF5_SIGNATURE


@dataclass
class RawInstance:
    image: str                          # as written in the annotation: relative to images_root, or absolute
    keypoints: Dict[str, Point]         # name -> point; names missing here are "not labelled"
    location: Location                  # where this instance was read (file and line, or annotation id)
    instance: Optional[str] = None      # instance id within the image; None: numbered in order of appearance
    bbox: Optional[Tuple[float, float, float, float]] = None  # x, y, w, h in the same units as keypoints
    size: Optional[Tuple[int, int]] = None  # (width, height) stated by the annotation, checked against the file
    group: Optional[str] = None
    split: Optional[str] = None
    normalized: bool = False            # True: coordinates are already 0..1 (YOLO)
    image_base: Optional[str] = None    # directory `image` is relative to, when not the images root (Labelme)
    # The instance's category (COCO category, YOLO class, ...), set only when the reader reads
    # several categories together; written as the record's ``category``.
    category: Optional[str] = None


@dataclass
class DenseRows:
    """Many instances at once, in columns (what COCO's reader yields): each row is the instance
    ``row(i)`` gives, in pixels, numbered in order of appearance, its keypoints the flat list
    ``[x, y, v] * K`` of exact int/float values (checked by the reader) in the order of the reader's
    ``DatasetMeta.keypoints`` (v == 0: not labelled). Ingest validates a block with numpy and takes only
    the rows with anything to report, clamp or fix the exact way (``row(i)``): no object per instance."""
    file: str                               # every row's Location.file
    record: List[str]                       # per row: its Location.record
    image: List[str]                        # per row: as RawInstance.image (relative to images_root)
    size: List[Optional[Tuple[int, int]]]   # per row: as RawInstance.size
    keypoints: List[list]
    bbox: List[Optional[list]]              # per row: as RawInstance.bbox
    category: List[Optional[str]]
    split: Optional[str] = None             # every row's split

    def __len__(self) -> int:
        return len(self.image)

    def row(self, i: int, names: Sequence[str]) -> RawInstance:
        """Row ``i`` as a RawInstance (``names``: the reader's ``DatasetMeta.keypoints``)."""
        d = self.keypoints[i]
        points = dict(compress(zip(names, zip(d[0::3], d[1::3], d[2::3])), d[2::3]))
        return RawInstance(self.image[i], points, Location(self.file, record=self.record[i]), bbox=self.bbox[i],
                           size=self.size[i], split=self.split, category=self.category[i])


@dataclass
class DatasetMeta:
    keypoints: List[str]
    skeleton: List[Tuple[int, int]] = field(default_factory=list)    # 0-based
    flip_pairs: List[Tuple[int, int]] = field(default_factory=list)  # 0-based; empty: inferred from names
    flip_pairs_given: bool = False       # True when the source states flip pairs (YOLO flip_idx)


@dataclass
class ReadResult:
    meta: DatasetMeta
    instances: Iterable[Union[RawInstance, DenseRows]]     # may be a generator; consumed once
    source_files: List[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # format-specific description for the manifest header


@dataclass
class IngestOptions:
    category: Optional[str] = None          # COCO: which category (name or id) when several have keypoints
    keypoints: Optional[List[str]] = None   # fix keypoint names and order (CSV; a subset/reorder elsewhere)
    flip_pairs: Optional[List[Tuple[str, str]]] = None
    skeleton: Optional[List[Tuple[str, str]]] = None   # edges by name; replaces the source's skeleton
    allow_outside_root: bool = False
    tolerance_px: float = 1.0               # coordinates at most this far (pixels) outside the image are clamped
    # readers that extract video frames to image files (SLEAP): the folder they go to; ingest sets it
    # (``<manifest stem>-frames`` beside the manifest) when not given
    frames_dir: Optional[str] = None


@dataclass
class ReadContext:
    options: IngestOptions
    report: Report
    images_root: Path


class Reader:
    """Base class of the annotation readers. Subclasses register themselves with ``@register``."""

    name: ClassVar[str] = ""
    expects: ClassVar[str] = ""     # what detect() looks for, for the message when no format matches
    pixel_origin: ClassVar[str] = ""  # the source's PIXEL_ORIGIN ("center" or "corner", see PIXEL_ORIGINS)
    # True: the reader writes the frames it labels as image files into IngestOptions.frames_dir, which
    # is then the default images root (SLEAP: frames of videos)
    extracts_frames: ClassVar[bool] = False

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        """True when ``sources`` (files or directories, as given on the command line) look like this
        format. Must look at content, cheaply (first bytes / header line), not only the extension."""
        raise NotImplementedError

    @classmethod
    def default_images_root(cls, sources: Sequence[Path]) -> Path:
        """Where images are looked for when ``--images`` is not given: the source's own folder."""
        first = sources[0]
        return first if first.is_dir() else first.parent

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        raise NotImplementedError
