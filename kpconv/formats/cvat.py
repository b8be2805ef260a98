"""CVAT XML: "CVAT for images 1.1" and "CVAT for video 1.1" (``annotations.xml``).

Keypoints are stored by CVAT in one of two ways, both read:

- **Skeletons** (CVAT 2.3+): a ``<skeleton label=...>`` element per instance with one
  ``<points label=KP points="x,y">`` child per keypoint; ``outside="1"`` means not labelled,
  ``occluded="1"`` means v = 1, else v = 2. Keypoint names are the skeleton's sublabels in the order
  of ``<meta>`` (``<label><parent>skeleton</parent>``), the skeleton edges come from the label's
  ``<svg>`` (``data-node-from``/``data-node-to``). Several skeleton labels with the same sublabels
  are read together (each record keeps its ``category``); with different ones, ``--category``.
- **Plain points**: ``<points label=KP points="x,y">`` shapes; one instance per ``group_id`` in an
  image, or one per image when ungrouped; a ``<box>`` with the same ``group_id`` gives the bbox.
  Keypoint names: the labels used by points, in ``<meta>`` order (then order of appearance). A label
  whose shapes hold several points (``points="x1,y1;x2,y2"``, face landmarks as one shape) gives
  ``label_0``, ``label_1``, ...; each such ungrouped shape is one instance.

"CVAT for images": ``<image id name width height [subset]>``, ``name`` relative to the XML's folder
(or ``--images``), also found under ``images/`` as CVAT's dataset export lays it out; the stated
width/height are checked against the file; ``subset`` (``Train``, ``Validation``, ...) becomes the
split. "CVAT for video": ``<track id label>`` elements with one shape per frame (``frame``; a frame
where the track is ``outside`` has no instance); frame N is the image ``frame_NNNNNN.*`` in the images
root or its ``images/`` folder; instance id = the track id; group = the task (its ``<source>``), so
the frames of one video stay in one split.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import AnnotationError, Location
from . import register
from ._xml import number, parse, root_tag
from .base import DatasetMeta, Point, RawInstance, ReadContext, Reader, ReadResult

_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
           "test": "test", "testing": "test", "default": None, "": None}


def _split(subset: Optional[str]) -> Optional[str]:
    if subset is None:
        return None
    s = subset.strip()
    return _SPLITS.get(s.lower(), s)


def _xy(text: Optional[str]) -> Optional[List[Tuple[float, float]]]:
    """``"x,y"`` or ``"x1,y1;x2,y2"`` -> points, or None when malformed."""
    if not text:
        return None
    out = []
    for pair in text.split(";"):
        parts = pair.split(",")
        if len(parts) != 2:
            return None
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            return None
        out.append((x, y))
    return out


class _Labels:
    """What ``<meta>`` says about labels: order, type, skeleton sublabels and edges."""

    def __init__(self, root: ET.Element):
        self.order: List[str] = []
        self.types: Dict[str, str] = {}
        self.children: Dict[str, List[str]] = {}
        self.edges: Dict[str, List[Tuple[str, str]]] = {}
        meta = root.find("meta")
        if meta is None:
            return
        for label in meta.iter("label"):
            name = (label.findtext("name") or "").strip()
            if not name:
                continue
            parent = (label.findtext("parent") or "").strip()
            if parent:
                self.children.setdefault(parent, []).append(name)
                continue
            self.order.append(name)
            self.types[name] = (label.findtext("type") or "").strip()
            svg = label.findtext("svg")
            if svg:
                self.edges[name] = _svg_edges(svg)

    def skeletons(self) -> List[str]:
        return [n for n in self.order if self.types.get(n) == "skeleton"]


def _svg_edges(svg: str) -> List[Tuple[str, str]]:
    """Skeleton edges, as pairs of sublabel names, from the label's SVG (``<line data-type="edge"
    data-node-from data-node-to>`` between ``<circle data-node-id data-label-name>``)."""
    try:
        doc = ET.fromstring(f"<svg>{svg}</svg>")
    except ET.ParseError:
        return []
    nodes = {c.get("data-node-id"): c.get("data-label-name") for c in doc.iter("circle")}
    out = []
    for line in doc.iter("line"):
        a, b = nodes.get(line.get("data-node-from")), nodes.get(line.get("data-node-to"))
        if a and b:
            out.append((a, b))
    return out


# Pixel convention (base.PIXEL_ORIGINS, docs/formats.md):
# CVAT's canvas (cvat-canvas, SVG) draws the frame at (0, 0) with its natural size and maps clicks through
# the SVG's screen matrix (translateFromSVG): continuous coordinates, the left edge at 0, stored as floats.
PIXEL_ORIGIN = "corner"


@register
class CvatReader(Reader):
    name = "cvat"
    pixel_origin = PIXEL_ORIGIN
    description = "CVAT for images / CVAT for video 1.1 XML (skeletons or points)"
    expects = "an XML file whose root is <annotations> (CVAT for images or video 1.1)"

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        files = [Path(s) / "annotations.xml" if Path(s).is_dir() else Path(s) for s in sources]
        return bool(files) and all(f.is_file() and root_tag(f) == "annotations" for f in files)

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        docs = []
        for s in sources:
            path = Path(s)
            if path.is_dir():
                xml = path / "annotations.xml"
                if not xml.is_file():
                    raise AnnotationError("expected a CVAT XML file or a folder with annotations.xml",
                                          Location(str(path)))
                path = xml
            root = parse(path)
            if root.tag != "annotations":
                raise AnnotationError(f"expected a CVAT XML file with root <annotations>, got <{root.tag}>",
                                      Location(str(path)))
            docs.append((path, root, _Labels(root)))
        path0, root0, labels0 = docs[0]
        skel_labels = self._skeleton_labels(docs, ctx)
        multi: Dict[str, int] = {}
        if skel_labels:
            names = list(labels0.children.get(skel_labels[0]) or
                         dict.fromkeys(p.get("label") for _, r, _ in docs for sk in r.iter("skeleton")
                                       if sk.get("label") == skel_labels[0] for p in sk.iter("points")))
            index = {n: i for i, n in enumerate(names)}
            skeleton = sorted({(index[a], index[b]) for a, b in labels0.edges.get(skel_labels[0], [])
                               if a in index and b in index and a != b})
            mode = "skeleton"
        else:
            used = list(dict.fromkeys(p.get("label") for _, r, _ in docs for p in r.iter("points")
                                      if p.get("label")))
            names = [n for n in labels0.order if n in set(used)] + [n for n in used if n not in labels0.order]
            multi = _multi(docs)
            names = [m for n in names for m in ([multi_name(n, i) for i in range(multi[n])] if n in multi else [n])]
            skeleton = []
            mode = "points"
        if not names:
            raise AnnotationError("no keypoints: no <skeleton> and no <points> shape (expected CVAT skeletons or "
                                  "points)", Location(str(path0)))
        wanted = set(ctx.options.keypoints) if ctx.options.keypoints else None
        missing = [n for n in ctx.options.keypoints or [] if n not in names]
        if missing:
            raise AnnotationError(f"--keypoints: {', '.join(map(repr, missing))} not among the CVAT keypoint "
                                  f"labels ({', '.join(names)})", Location(str(path0), field="labels"))
        several = len(skel_labels) > 1
        if several:
            ctx.report.add("several_categories", f"{len(skel_labels)} skeleton labels with the same keypoints read "
                           f"together: {', '.join(skel_labels)}; each record keeps its 'category' (choose one "
                           "with --category)", Location(str(path0), field="labels"))
        extra = {"mode": mode}
        if skel_labels:
            extra["category"] = skel_labels if several else skel_labels[0]
        gen = _instances(docs, ctx, mode, set(skel_labels), several, wanted, multi)
        return ReadResult(DatasetMeta(keypoints=names, skeleton=skeleton), gen, [str(p) for p, _, _ in docs],
                          extra)

    @staticmethod
    def _skeleton_labels(docs, ctx: ReadContext) -> List[str]:
        """The skeleton labels to read: ``--category``, else all (same sublabels), else ask."""
        path0, root0, labels = docs[0]
        skels = labels.skeletons() or list(dict.fromkeys(
            sk.get("label") for _, r, _ in docs for sk in r.iter("skeleton") if sk.get("label")))
        wanted = ctx.options.category
        if wanted is not None:
            if wanted not in skels:
                raise AnnotationError(f"--category {wanted!r}: no skeleton label of that name; skeleton labels: "
                                      f"{', '.join(skels) or 'none'}", Location(str(path0), field="labels"))
            return [wanted]
        kinds = {tuple(labels.children.get(s, [])) for s in skels}
        if len(kinds) > 1:
            raise AnnotationError(f"several skeleton labels with different keypoints: {', '.join(skels)}; "
                                  "choose one with --category NAME", Location(str(path0), field="labels"))
        return skels


def multi_name(label: str, i: int) -> str:
    """The name of point ``i`` of a ``<points>`` shape that holds several (face landmarks as one shape)."""
    return f"{label}_{i}"


def _points(p: ET.Element, loc: Location, report, multi: Dict[str, int]) -> Optional[List[Tuple[str, Point]]]:
    """The keypoints of a ``<points>`` element, (name, point): one named by its label, or, for a label
    whose shapes hold several points (``multi``), ``label_0``, ``label_1``, ...; none when outside;
    None after reporting a problem."""
    label = p.get("label")
    if p.get("outside") == "1":
        return []
    pts = _xy(p.get("points"))
    n = multi.get(label, 1)
    if pts is None or (n == 1 and len(pts) != 1):
        got = p.get("points")
        report.add("wrong_type", f"point {label!r}: expected points=\"x,y\" (one point), got {got!r}",
                   loc.with_field(label or "points"))
        return None
    v = 1 if p.get("occluded") == "1" else 2
    if n == 1:
        return [(label, (pts[0][0], pts[0][1], v))]
    return [(multi_name(label, i), (x, y, v)) for i, (x, y) in enumerate(pts)]


def _gather(points: Sequence[ET.Element], loc: Location, report, wanted,
            multi: Optional[Dict[str, int]] = None) -> Optional[Dict[str, Point]]:
    out: Dict[str, Point] = {}
    for p in points:
        label = p.get("label")
        if not label:
            report.add("missing_field", "<points> without a label (the keypoint name)", loc.with_field("label"))
            return None
        got = _points(p, loc, report, multi or {})
        if got is None:
            return None
        for name, pt in got:
            if wanted is not None and name not in wanted:
                continue
            if name in out:
                report.add("malformed_record", f"label {name!r} appears twice in one instance", loc.with_field(name))
                return None
            out[name] = pt
    return out


class _Images:
    """Image paths as CVAT lays them out: ``name`` in the images root or in its ``images/`` folder;
    video frames ``frame_NNNNNN.<ext>``."""

    def __init__(self, root: Path):
        self.root = root
        self._frames: Optional[Dict[str, str]] = None

    def path(self, name: str) -> str:
        if not (self.root / name).exists() and (self.root / "images" / name).exists():
            return f"images/{name}"
        return name

    def frame(self, n: int) -> str:
        if self._frames is None:
            self._frames = {}
            for sub in ("images", ""):
                folder = self.root / sub if sub else self.root
                if folder.is_dir():
                    for f in sorted(os.listdir(folder)):
                        stem = os.path.splitext(f)[0]
                        if stem.startswith("frame_"):
                            self._frames.setdefault(stem, f"{sub}/{f}" if sub else f)
        stem = f"frame_{n:06d}"
        return self._frames.get(stem, f"images/{stem}.png")


def _multi(docs) -> Dict[str, int]:
    """Labels whose <points> shapes hold several points -> the most points one holds."""
    most: Dict[str, int] = {}
    for _, root, _ in docs:
        for p in root.iter("points"):
            pts = _xy(p.get("points"))
            if pts and p.get("label"):
                most[p.get("label")] = max(most.get(p.get("label"), 1), len(pts))
    return {k: n for k, n in most.items() if n > 1}


def _instances(docs, ctx: ReadContext, mode: str, skel_labels: set, several: bool, wanted,
               multi: Dict[str, int]) -> Iterator[RawInstance]:
    report = ctx.report
    images = _Images(ctx.images_root)
    for path, root, _labels in docs:
        name = str(path)
        meta_subset = _split(root.findtext("meta/task/subset") or root.findtext("meta/job/subset"))
        for image in root.iter("image"):
            iname = image.get("name")
            iloc = Location(name, record=f"image {image.get('id')}")
            if not iname:
                report.add("missing_field", "<image> without a name", iloc.with_field("name"))
                continue
            size = None
            w, h = image.get("width"), image.get("height")
            if w is not None and h is not None:
                try:
                    size = (int(w), int(h))
                except ValueError:
                    report.add("wrong_type", f"expected integer width and height, got {w!r} x {h!r}",
                               iloc.with_field("width"))
                    continue
            split = _split(image.get("subset")) if image.get("subset") is not None else meta_subset
            rel = images.path(iname)
            if mode == "skeleton":
                for k, sk in enumerate(image.findall("skeleton")):
                    if sk.get("label") not in skel_labels or sk.get("outside") == "1":
                        continue
                    loc = Location(name, record=f"image {iname} skeleton {k}")
                    points = _gather(sk.findall("points"), loc, report, wanted)
                    if points is None:
                        continue
                    yield RawInstance(rel, points, loc, size=size, split=split,
                                      category=sk.get("label") if several else None)
                continue
            groups: Dict[Optional[str], List[ET.Element]] = {}
            boxes: Dict[str, Tuple[float, float, float, float]] = {}
            alone = []      # ungrouped shapes of several points: an instance each
            for shape in image:
                gid = shape.get("group_id")
                if shape.tag == "points" and gid is None and shape.get("label") in multi:
                    alone.append(shape)
                elif shape.tag == "points":
                    groups.setdefault(gid, []).append(shape)
                elif shape.tag == "box" and gid is not None:
                    c = [number(shape, a) for a in ("xtl", "ytl", "xbr", "ybr")]
                    if None not in c:
                        boxes[gid] = (c[0], c[1], c[2] - c[0], c[3] - c[1])
            for gid, shapes in groups.items():
                loc = Location(name, record=f"image {iname}" + (f" group_id {gid}" if gid is not None else ""))
                points = _gather(shapes, loc, report, wanted, multi)
                if points is None:
                    continue
                yield RawInstance(rel, points, loc, instance=gid, bbox=boxes.get(gid) if gid else None, size=size,
                                  split=split)
            for k, shape in enumerate(alone):
                loc = Location(name, record=f"image {iname} points {k}")
                points = _gather([shape], loc, report, wanted, multi)
                if points is not None:
                    yield RawInstance(rel, points, loc, size=size, split=split)
        yield from _tracks(path, root, ctx, mode, skel_labels, several, wanted, images, multi)


def _tracks(path: Path, root: ET.Element, ctx: ReadContext, mode: str, skel_labels: set, several: bool,
            wanted, images: _Images, multi: Dict[str, int]) -> Iterator[RawInstance]:
    """CVAT for video: one instance per track per frame where the track is not outside."""
    report = ctx.report
    name = str(path)
    tracks = root.findall("track")
    if not tracks:
        return
    size = None
    w = root.findtext("meta/task/original_size/width") or root.findtext("meta/job/original_size/width")
    h = root.findtext("meta/task/original_size/height") or root.findtext("meta/job/original_size/height")
    if w and h and w.strip().isdigit() and h.strip().isdigit():
        size = (int(w), int(h))
    group = (root.findtext("meta/task/source") or "").strip() or path.stem
    split = _split(root.findtext("meta/task/subset"))
    # points tracks: one keypoint each; grouped by the track's group_id (else one instance per frame)
    by_frame: Dict[Tuple[int, Optional[str]], List[Tuple[ET.Element, str]]] = {}
    for track in tracks:
        tid, label = track.get("id"), track.get("label")
        for shape in track:
            frame = shape.get("frame")
            try:
                n = int(frame)
            except (TypeError, ValueError):
                report.add("wrong_type", f"expected an integer frame, got {frame!r}",
                           Location(name, record=f"track {tid}", field="frame"))
                continue
            loc = Location(name, record=f"track {tid} frame {n}")
            if mode == "skeleton" and shape.tag == "skeleton" and label in skel_labels:
                if shape.get("outside") == "1":
                    continue
                points = _gather(shape.findall("points"), loc, report, wanted)
                if points is None:
                    continue
                yield RawInstance(images.frame(n), points, loc, instance=tid, size=size, group=group, split=split,
                                  category=label if several else None)
            elif mode == "points" and shape.tag == "points":
                if shape.get("outside") == "1":
                    continue
                el = ET.Element("points", {**shape.attrib, "label": label or ""})
                by_frame.setdefault((n, track.get("group_id")), []).append((el, tid))
    for (n, gid), shapes in sorted(by_frame.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        loc = Location(name, record=f"frame {n}" + (f" group_id {gid}" if gid is not None else ""))
        points = _gather([el for el, _ in shapes], loc, report, wanted, multi)
        if points is None:
            continue
        yield RawInstance(images.frame(n), points, loc, instance=gid, size=size, group=group, split=split)
