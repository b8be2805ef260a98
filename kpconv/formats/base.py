"""What every annotation reader produces, and the interface it implements.

A reader turns one dataset in its format into :class:`RawInstance` objects in *pixel* coordinates
(or already-normalized ones, for formats such as YOLO that store them so) plus the dataset's keypoint
metadata. Everything shared (image sizes, normalization, validation of coordinates and paths, bbox
derivation, duplicate detection, the manifest) happens once, in :mod:`kpconv.ingest`.

Readers report problems with single records through ``ctx.report.add(reason, message, location)``
and skip the record; they raise :class:`kpconv.errors.AnnotationError` when a file cannot be read at
all. They never print.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import Location
from ..problems import Report

# (x, y, v): pixel (or normalized, see RawInstance.normalized) coordinates and COCO visibility.
Point = Tuple[float, float, int]


@dataclass
class RawInstance:
    image: str                          # as written in the annotation: relative to images_root, or absolute
    keypoints: Optional[Dict[str, Point]]  # name -> point; names missing here are "not labelled"
                                        # (None when ``dense`` is given instead)
    location: Location                  # where this instance was read (file and line, or annotation id)
    instance: Optional[str] = None      # instance id within the image; None: numbered in order of appearance
    bbox: Optional[Tuple[float, float, float, float]] = None  # x, y, w, h in the same units as keypoints
    size: Optional[Tuple[int, int]] = None  # (width, height) stated by the annotation, checked against the file
    group: Optional[str] = None
    split: Optional[str] = None
    normalized: bool = False            # True: coordinates are already 0..1 (YOLO)
    image_base: Optional[str] = None    # directory `image` is relative to, when not the images root (Labelme)
    # Dense form, instead of ``keypoints`` (COCO): the flat list ``[x, y, v] * K`` of exact int/float
    # values aligned with the reader's ``DatasetMeta.keypoints``; a point with v == 0 is not labelled.
    # Ingest validates a whole chunk of these at once; ``points()`` gives the same as the dict form.
    dense: Optional[list] = None
    # The instance's category (COCO category, YOLO class, ...), set only when the reader reads
    # several categories together; written as the record's ``category``.
    category: Optional[str] = None

    def points(self, names: Sequence[str]) -> Dict[str, Point]:
        """The keypoints as a dict (``names``: the reader's ``DatasetMeta.keypoints``)."""
        if self.dense is None:
            return self.keypoints
        d = self.dense
        return dict(compress(zip(names, zip(d[0::3], d[1::3], d[2::3])), d[2::3]))


@dataclass
class DatasetMeta:
    keypoints: List[str]
    skeleton: List[Tuple[int, int]] = field(default_factory=list)    # 0-based
    flip_pairs: List[Tuple[int, int]] = field(default_factory=list)  # 0-based; empty: inferred from names
    flip_pairs_given: bool = False       # True when the source states flip pairs (YOLO flip_idx)


@dataclass
class ReadResult:
    meta: DatasetMeta
    instances: Iterable[RawInstance]     # may be a generator; consumed once
    source_files: List[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)   # format-specific description for the manifest header


@dataclass
class IngestOptions:
    category: Optional[str] = None          # COCO: which category (name or id) when several have keypoints
    keypoints: Optional[List[str]] = None   # fix keypoint names and order (CSV; a subset/reorder elsewhere)
    flip_pairs: Optional[List[Tuple[str, str]]] = None
    skeleton: Optional[List[Tuple[str, str]]] = None   # edges by name; replaces the source's skeleton
    allow_outside_root: bool = False
    tolerance_px: float = 1.0               # coordinates this far outside the image are clamped
    tolerance_frac: float = 0.01            # ... or this fraction of the image size, whichever is larger
    workers: int = 0                        # processes reading image headers; 0 or 1: none (serial)


@dataclass
class ReadContext:
    options: IngestOptions
    report: Report
    images_root: Path


class Reader:
    """Base class of the annotation readers. Subclasses register themselves with ``@register``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    expects: ClassVar[str] = ""     # what detect() looks for, for the message when no format matches
    # True: every RawInstance.dense list this reader yields holds exact int/float values only (not
    # bool), checked by the reader, so ingest need not check their types again
    dense_checked: ClassVar[bool] = False

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
