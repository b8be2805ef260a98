"""CVAT XML, "CVAT for images 1.1" and "CVAT for video 1.1": skeletons, plain points grouped into instances
(group_id, else the smallest containing box, else one per image), or both; rules: docs/formats/cvat.md."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ...errors import AnnotationError, Location
from . import register
from ._xml import fromstring, number, parse, root_tag
from .base import DatasetMeta, Point, RawInstance, ReadContext, Reader, ReadResult, wanted_keypoints

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
        doc = fromstring(f"<svg>{svg}</svg>")
    except (ET.ParseError, ValueError):     # (ValueError: defusedxml refused it)
        return []
    nodes = {c.get("data-node-id"): c.get("data-label-name") for c in doc.iter("circle")}
    out = []
    for line in doc.iter("line"):
        a, b = nodes.get(line.get("data-node-from")), nodes.get(line.get("data-node-to"))
        if a and b:
            out.append((a, b))
    return out


PIXEL_ORIGIN = "corner"  # (base.PIXEL_ORIGINS; the evidence: docs/formats/cvat.md)


@register
class CvatReader(Reader):
    name = "cvat"
    pixel_origin = PIXEL_ORIGIN
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
        skel_labels, read_points, box_label = self._choose(docs, ctx)
        names: List[str] = []
        skeleton: List[Tuple[int, int]] = []
        multi: Dict[str, int] = {}
        if skel_labels:
            names = list(labels0.children.get(skel_labels[0]) or
                         dict.fromkeys(p.get("label") for _, r, _ in docs for sk in r.iter("skeleton")
                                       if sk.get("label") == skel_labels[0] for p in sk.iter("points")))
            index = {n: i for i, n in enumerate(names)}
            skeleton = sorted({(index[a], index[b]) for a, b in labels0.edges.get(skel_labels[0], [])
                               if a in index and b in index and a != b})
        if read_points:
            used = _points_labels(docs)
            plain = [n for n in labels0.order if n in set(used)] + [n for n in used if n not in labels0.order]
            multi = _multi(docs)
            plain = [m for n in plain for m in ([multi_name(n, i) for i in range(multi[n])] if n in multi else [n])]
            names += [n for n in plain if n not in set(names)]
        mode = "mixed" if skel_labels and read_points else "skeleton" if skel_labels else "points"
        if not names:
            raise AnnotationError("no keypoints: no <skeleton> and no <points> shape (expected CVAT skeletons or "
                                  "points)", Location(str(path0)))
        wanted = wanted_keypoints(ctx.options.keypoints, names, "CVAT keypoint labels",
                                  Location(str(path0), field="labels"))
        several = len(skel_labels) + bool(read_points) > 1
        if several:
            read = skel_labels + (["points"] if read_points else [])
            what = ("skeleton labels with the same keypoints" if not read_points else
                    "skeleton labels and plain <points> (category 'points', or the label of the <box> that "
                    "groups them)")
            ctx.report.add("several_categories", f"{len(read)} categories read together ({what}): "
                           f"{', '.join(read)}; each record keeps its 'category' (choose one with --category)",
                           Location(str(path0), field="labels"))
        extra = {"mode": mode}
        if skel_labels:
            extra["category"] = skel_labels if several else skel_labels[0]
        how = _How(set(skel_labels), read_points, box_label, several, wanted, multi)
        gen = _instances(docs, ctx, how)
        return ReadResult(DatasetMeta(keypoints=names, skeleton=skeleton), gen, [str(p) for p, _, _ in docs],
                          extra)

    @staticmethod
    def _choose(docs, ctx: ReadContext) -> Tuple[List[str], bool, Optional[str]]:
        """What to read: (skeleton labels, whether plain points are read, the box label that groups
        them or None for any). ``--category`` names a skeleton label, a label of plain points or of
        the boxes that group them, or ``points``; else every skeleton label (same sublabels) and the
        plain points, read together."""
        path0, root0, labels = docs[0]
        skels = labels.skeletons() or list(dict.fromkeys(
            sk.get("label") for _, r, _ in docs for sk in r.iter("skeleton") if sk.get("label")))
        points = _points_labels(docs)
        boxes = list(dict.fromkeys(b.get("label") for _, r, _ in docs for image in r.iter("image")
                                   for b in image.findall("box") if b.get("label")))
        wanted = ctx.options.category
        if wanted is not None:
            if wanted in skels:
                return [wanted], False, None
            if points and (wanted in points or wanted == "points"):
                return [], True, None
            if points and wanted in boxes:
                return [], True, wanted
            raise AnnotationError(f"--category {wanted!r}: no skeleton label, points label or box label of that "
                                  f"name; skeleton labels: {', '.join(skels) or 'none'}; points labels: "
                                  f"{', '.join(points) or 'none'}; box labels: {', '.join(boxes) or 'none'}",
                                  Location(str(path0), field="labels"))
        kinds = {tuple(labels.children.get(s, [])) for s in skels}
        if len(kinds) > 1:
            raise AnnotationError(f"several skeleton labels with different keypoints: {', '.join(skels)}; "
                                  "choose one with --category NAME", Location(str(path0), field="labels"))
        return skels, bool(points), None


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
            multi: Optional[Dict[str, int]] = None, ungrouped: bool = False) -> Optional[Dict[str, Point]]:
    """One instance's keypoints from its ``<points>``; None after reporting a problem (a label twice
    is ambiguous: reported, never a silent choice). ``ungrouped``: the points of an image that no
    group_id or <box> groups (the message says so)."""
    how = (" (points with no group_id and in no <box> are one instance per image; with several objects per "
           "image, group them by group_id or by a <box> around each)") if ungrouped else ""
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
                report.add("ambiguous_label", f"label {name!r} appears twice in one instance{how}: its points cannot "
                           f"be told apart; give them distinct labels in CVAT (e.g. '{name}_left', '{name}_right') "
                           f"and read them with --keypoints NAME,..., or leave {name!r} out with --keypoints",
                           loc.with_field(name))
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


def _points_labels(docs) -> List[str]:
    """The labels of plain ``<points>`` shapes (an image's, a track's), not skeleton sublabels."""
    out: Dict[str, None] = {}
    for _, root, _ in docs:
        for image in root.iter("image"):
            for p in image.findall("points"):
                if p.get("label"):
                    out[p.get("label")] = None
        for track in root.iter("track"):
            if track.get("label") and track.find("points") is not None:
                out[track.get("label")] = None
    return list(out)


@dataclass
class _How:
    """What to read: the skeleton labels, whether plain points are, the box label that groups them
    (None: any), whether records keep their category, the keypoints wanted, the multi-point labels."""
    skel_labels: set
    points: bool
    box_label: Optional[str]
    several: bool
    wanted: Optional[set]
    multi: Dict[str, int]


def _box(shape: ET.Element) -> Optional[Tuple[float, float, float, float]]:
    """A <box> as (x, y, w, h), or None when a corner is missing or not a number."""
    c = [number(shape, a) for a in ("xtl", "ytl", "xbr", "ybr")]
    return None if None in c else (c[0], c[1], c[2] - c[0], c[3] - c[1])


def _inside(xy: Tuple[float, float], box: Tuple[float, float, float, float]) -> bool:
    return box[0] <= xy[0] <= box[0] + box[2] and box[1] <= xy[1] <= box[1] + box[3]


def _image_points(image: ET.Element, how: _How, name: str, iname: str, report
                  ) -> Iterator[Tuple[Location, List[ET.Element], Optional[str], Optional[tuple], Optional[str],
                                      bool]]:
    """The plain-points instances of one image: (location, shapes, instance id, bbox, box label,
    ungrouped). Shapes with a ``group_id`` form one instance per group (a <box> of that group gives
    its bbox); the others go to the smallest <box> (without group_id, of the chosen box label) that
    contains them, which becomes the instance's bbox; the rest are one instance per image. A shape
    of several points (face landmarks as one shape) is an instance of its own."""
    groups: Dict[str, List[ET.Element]] = {}
    gboxes: Dict[str, Tuple[tuple, Optional[str]]] = {}
    free_boxes: List[Tuple[tuple, Optional[str]]] = []
    loose: List[ET.Element] = []
    alone: List[ET.Element] = []
    for shape in image:
        gid = shape.get("group_id")
        if shape.tag == "points" and gid is None and shape.get("label") in how.multi:
            alone.append(shape)
        elif shape.tag == "points":
            (groups.setdefault(gid, []) if gid is not None else loose).append(shape)
        elif shape.tag == "box" and (how.box_label is None or shape.get("label") == how.box_label):
            b = _box(shape)
            if b is None:
                continue
            if gid is not None:
                gboxes[gid] = (b, shape.get("label"))
            else:
                free_boxes.append((b, shape.get("label")))
    for gid, shapes in groups.items():
        b = gboxes.get(gid)
        yield (Location(name, record=f"image {iname} group_id {gid}"), shapes, gid, b[0] if b else None,
               b[1] if b else None, False)
    in_box: Dict[int, List[ET.Element]] = {}
    rest = []
    for shape in loose:
        pts = _xy(shape.get("points"))
        hits = [] if not pts or len(pts) != 1 else [
            (b[2] * b[3], k) for k, (b, _) in enumerate(free_boxes) if _inside(pts[0], b)]
        if hits:
            in_box.setdefault(min(hits)[1], []).append(shape)      # the smallest box (the first of equals)
        else:
            rest.append(shape)
    for k in sorted(in_box):
        b, label = free_boxes[k]
        yield (Location(name, record=f"image {iname} box {k}"), in_box[k], f"box{k}", b, label, False)
    if rest:    # (named when group_id or box instances share the image: a number could be taken)
        yield (Location(name, record=f"image {iname}"), rest, "ungrouped" if groups or in_box else None, None, None,
               True)
    for k, shape in enumerate(alone):
        yield Location(name, record=f"image {iname} points {k}"), [shape], None, None, None, False


def _instances(docs, ctx: ReadContext, how: _How) -> Iterator[RawInstance]:
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
            for k, sk in enumerate(image.findall("skeleton")):
                if sk.get("outside") == "1":
                    continue
                loc = Location(name, record=f"image {iname} skeleton {k}")
                if sk.get("label") not in how.skel_labels:      # (--category chose another)
                    report.add("other_category", f"skeleton {sk.get('label')!r} is not the chosen category", loc)
                    continue
                points = _gather(sk.findall("points"), loc, report, how.wanted)
                if points is None:
                    continue
                yield RawInstance(rel, points, loc, size=size, split=split,
                                  category=sk.get("label") if how.several else None)
            if not how.points:
                n = len(image.findall("points"))
                if n:       # (--category chose a skeleton)
                    report.add("other_category", f"{n} plain <points> shape(s) not read: the chosen category is a "
                               "skeleton (choose them with --category points)", iloc)
                continue
            for loc, shapes, iid, bbox, label, ungrouped in _image_points(image, how, name, iname, report):
                points = _gather(shapes, loc, report, how.wanted, how.multi, ungrouped)
                if points is None:
                    continue
                yield RawInstance(rel, points, loc, instance=None if how.skel_labels else iid, bbox=bbox,
                                  size=size, split=split, category=(label or "points") if how.several else None)
        yield from _tracks(path, root, ctx, how, images)


def _tracks(path: Path, root: ET.Element, ctx: ReadContext, how: _How, images: _Images) -> Iterator[RawInstance]:
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
            if shape.tag == "skeleton" and label in how.skel_labels:
                if shape.get("outside") == "1":
                    continue
                points = _gather(shape.findall("points"), loc, report, how.wanted)
                if points is None:
                    continue
                yield RawInstance(images.frame(n), points, loc, instance=tid, size=size, group=group, split=split,
                                  category=label if how.several else None)
            elif how.points and shape.tag == "points":
                if shape.get("outside") == "1":
                    continue
                el = ET.Element("points", {**shape.attrib, "label": label or ""})
                by_frame.setdefault((n, track.get("group_id")), []).append((el, tid))
            elif shape.tag in ("skeleton", "points") and shape.get("outside") != "1":     # (--category chose)
                report.add("other_category", f"{shape.tag} track {label!r} is not the chosen category", loc)
    for (n, gid), shapes in sorted(by_frame.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        loc = Location(name, record=f"frame {n}" + (f" group_id {gid}" if gid is not None else ""))
        points = _gather([el for el, _ in shapes], loc, report, how.wanted, how.multi, gid is None)
        if points is None:
            continue
        yield RawInstance(images.frame(n), points, loc, instance=None if how.skel_labels else gid, size=size,
                          group=group, split=split, category="points" if how.several else None)
