"""Label Studio exports, "JSON" (tasks with ``annotations[].result[]``) and "JSON-MIN"; instances, image
paths and the annotation read: docs/formats/label-studio.md."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlparse

from .. import jsonparse
from ...errors import AnnotationError, Location
from . import register
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult, head, load_json, opens_with

_UPLOAD = re.compile(r"^/?data/upload/\d+/(?P<file>.+)$")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(?P<rest>.+)$")
_IMAGE_EXT = re.compile(r"\.(?:jpe?g|png|bmp|gif|tiff?|webp)$", re.I)


def _kind(doc) -> Optional[str]:
    """'json' (tasks with annotations[].result[] holding keypointlabels), 'min' (JSON-MIN) or None."""
    if not isinstance(doc, list) or not doc or not all(isinstance(t, dict) for t in doc):
        return None
    for task in doc:
        anns = task.get("annotations")
        if isinstance(anns, list) and isinstance(task.get("data"), dict):
            for a in anns:
                for r in (a.get("result") or []) if isinstance(a, dict) else []:
                    if isinstance(r, dict) and r.get("type") == "keypointlabels":
                        return "json"
            continue
        if any(_min_items(v) for v in task.values()):
            return "min"
    return None


def _min_items(v) -> List[dict]:
    """The keypoints of one JSON-MIN field: a list of them, or one (JSON-MIN unwraps single results)."""
    items = v if isinstance(v, list) else [v]
    return [i for i in items if isinstance(i, dict) and "keypointlabels" in i]


_DETECT_PARSE_LIMIT = 64 << 20     # larger files: a JSON list that names keypointlabels early on


def _looks_like(path: Path) -> bool:
    if not path.is_file() or not opens_with(head(path, 4096), b"["):
        return False
    data = head(path, _DETECT_PARSE_LIMIT + 1)
    if b'"keypointlabels"' not in data:
        return False
    try:
        return len(data) > _DETECT_PARSE_LIMIT or _kind(jsonparse.loads(data)) is not None
    except ValueError:
        return False


def image_path(url: str, root: Path) -> str:
    """A Label Studio image reference as a path relative to the images root."""
    m = _UPLOAD.match(url)
    if m:
        rel = unquote(m.group("file"))
        if not (root / rel).exists():
            short = _UPLOAD_PREFIX.match(Path(rel).name)
            if short and (root / Path(rel).with_name(short.group("rest"))).exists():
                return Path(rel).with_name(short.group("rest")).as_posix()
        return rel
    parsed = urlparse(url)
    if "local-files" in parsed.path and parsed.query:
        d = parse_qs(parsed.query).get("d")
        if d:
            return d[0].lstrip("/")
    if parsed.scheme in ("http", "https", "s3", "gs", "azure-blob"):
        rel = unquote(parsed.path).lstrip("/")
        if not (root / rel).exists() and (root / Path(rel).name).exists():
            return Path(rel).name
        return rel
    return url


PIXEL_ORIGIN = "corner"  # (base.PIXEL_ORIGINS; the evidence: docs/formats/label-studio.md)


@register
class LabelStudioReader(Reader):
    name = "label-studio"
    pixel_origin = PIXEL_ORIGIN
    expects = ("a JSON list of Label Studio tasks with 'keypointlabels' results (JSON or JSON-MIN export)")

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        return bool(sources) and all(_looks_like(Path(s)) for s in sources)

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        docs = []
        for s in sources:
            path = Path(s)
            doc = load_json(path)
            kind = _kind(doc)
            if kind is None:
                raise AnnotationError("expected a Label Studio JSON export: a list of tasks with "
                                      "annotations[].result[] of type 'keypointlabels' (or a JSON-MIN export)",
                                      Location(str(path)))
            docs.append((path, doc, kind))
        names = list(ctx.options.keypoints or [])
        if not names:
            seen = {}
            for _, doc, kind in docs:
                for task in doc:
                    for value in _keypoint_values(task, kind):
                        label = _label(value)
                        if label is not None:
                            seen.setdefault(label, None)
            names = list(seen)
        if not names:
            raise AnnotationError("no keypointlabels result with a label", Location(str(docs[0][0])))
        wanted = set(ctx.options.keypoints) if ctx.options.keypoints else None
        kinds = sorted({k for _, _, k in docs})
        return ReadResult(DatasetMeta(keypoints=names), _instances(docs, ctx, wanted),
                          [str(p) for p, _, _ in docs], {"export": kinds[0] if len(kinds) == 1 else kinds})


def _label(value) -> Optional[str]:
    labels = value.get("keypointlabels") if isinstance(value, dict) else None
    if isinstance(labels, list) and labels and isinstance(labels[0], str) and labels[0]:
        return labels[0]
    return None


def _chosen(task: dict) -> Optional[dict]:
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    truth = [a for a in anns if a.get("ground_truth")]
    return (truth or anns or [None])[0]


def _keypoint_values(task: dict, kind: str) -> Iterator[dict]:
    if kind == "json":
        ann = _chosen(task)
        for r in (ann.get("result") or []) if ann else []:
            if isinstance(r, dict) and r.get("type") == "keypointlabels" and isinstance(r.get("value"), dict):
                yield r["value"]
    else:
        for v in task.values():
            yield from _min_items(v)


def _task_image(task: dict, kind: str) -> Optional[str]:
    data = task.get("data") if kind == "json" else task
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [v for k, v in data.items() if isinstance(v, str) and (v.startswith("/data/") or _IMAGE_EXT.search(v))
               and k not in ("annotator", "created_at", "updated_at")]
    return strings[0] if len(strings) == 1 else None


def _pixels(value: dict, sizes: Tuple[Optional[float], Optional[float]]):
    """(x, y) pixels and (width, height) of a percent value, or a message saying what is wrong."""
    w, h = value.get("original_width", sizes[0]), value.get("original_height", sizes[1])
    x, y = value.get("x"), value.get("y")
    if not all(type(c) in (int, float) for c in (x, y)):
        return f"expected numbers x and y (percent), got {x!r}, {y!r}"
    if not all(type(c) in (int, float) and c > 0 for c in (w, h)):
        return f"expected positive original_width and original_height, got {w!r}, {h!r}"
    return (x / 100.0 * w, y / 100.0 * h), (w, h)


def _instances(docs, ctx: ReadContext, wanted) -> Iterator[RawInstance]:
    report = ctx.report
    root = ctx.images_root
    for path, doc, kind in docs:
        name = str(path)
        for i, task in enumerate(doc):
            tid = task.get("id", i)
            tloc = Location(name, record=f"task {tid}")
            url = _task_image(task, kind)
            if url is None:
                report.add("missing_field", "task without an image path (expected data.image)", tloc.with_field("image"))
                continue
            image = image_path(url, root)
            if kind == "json":
                ann = _chosen(task)
                others = [a for a in task.get("annotations") or [] if isinstance(a, dict) and a is not ann
                          and not a.get("was_cancelled") and any(isinstance(r, dict) and r.get("type") ==
                                                                 "keypointlabels" for r in a.get("result") or [])]
                if others:
                    why = "the ground truth one" if ann.get("ground_truth") else "the first not cancelled"
                    report.add("other_annotation", f"{len(others)} other annotation(s) with keypoints not read (ids "
                               f"{', '.join(str(a.get('id')) for a in others)}): of several annotators' annotations "
                               f"of a task, one is read, {why} (annotation {ann.get('id')}); mark the one to read as "
                               "ground truth in Label Studio", tloc.with_field("annotations"))
                results = [r for r in (ann.get("result") or []) if isinstance(r, dict)] if ann else []
                boxes = {r.get("id"): r for r in results if r.get("type") == "rectanglelabels"
                         and isinstance(r.get("value"), dict)}
                items = [(r["value"], r.get("parentID") if r.get("parentID") in boxes else None, r)
                         for r in results if r.get("type") == "keypointlabels" and isinstance(r.get("value"), dict)]
                aid = ann.get("id") if ann else None
                loc_of = (lambda k, aid=aid, tid=tid: Location(name, record=f"task {tid} annotation {aid}"
                                                                + (f" box {k}" if k else "")))
            else:
                boxes = {}
                items = [(v, None, v) for v in _keypoint_values(task, kind)]
                loc_of = (lambda k, tid=tid: tloc)
            groups: Dict[Optional[str], Dict[str, tuple]] = {}
            size = None
            bad = set()
            for value, parent, res in items:
                if parent in bad:
                    continue        # one problem per instance: the first
                loc = loc_of(parent)
                label = _label(value)
                if label is None:
                    report.add("missing_field", "keypoint without a label", loc.with_field("keypointlabels"))
                    bad.add(parent)
                    continue
                if wanted is not None and label not in wanted:
                    continue
                got = _pixels({**value, **{k: res[k] for k in ("original_width", "original_height") if k in res}},
                              (None, None))
                if isinstance(got, str):
                    report.add("wrong_type", f"keypoint {label!r}: {got}", loc.with_field(label))
                    bad.add(parent)
                    continue
                (x, y), wh = got
                size = size or wh
                g = groups.setdefault(parent, {})
                if label in g:
                    why = ("this task; JSON-MIN has no parentID to tell instances apart (export as JSON)"
                           if kind == "min" else "one instance")
                    report.add("malformed_record", f"keypoint {label!r} appears twice in {why}", loc.with_field(label))
                    bad.add(parent)
                    continue
                g[label] = (x, y, 2)
            for parent, points in groups.items():
                if parent in bad or not points:
                    continue
                bbox = None
                if parent is not None:
                    b = boxes[parent]
                    v = b["value"]
                    bw, bh = b.get("original_width"), b.get("original_height")
                    if all(type(c) in (int, float) for c in (v.get("x"), v.get("y"), v.get("width"), v.get("height"),
                                                             bw, bh)):
                        bbox = (v["x"] / 100 * bw, v["y"] / 100 * bh, v["width"] / 100 * bw, v["height"] / 100 * bh)
                stated = (int(size[0]), int(size[1])) if size and all(float(c).is_integer() for c in size) else None
                yield RawInstance(image, points, loc_of(parent), bbox=bbox, size=stated)
