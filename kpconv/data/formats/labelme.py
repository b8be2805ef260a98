"""Labelme JSON: one ``<image>.json`` per image, keypoints as ``point`` shapes, ``group_id`` separating
instances; docs/formats/labelme.md."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ...errors import AnnotationError, Location
from . import register
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult, head, load_json, opens_with

def _looks_like_labelme(path: Path) -> bool:
    data = head(path, 16384)
    return opens_with(data, b"{") and b'"shapes"' in data and b'"kpconv_annotations"' not in data


def _json_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file())


PIXEL_ORIGIN = "corner"  # (base.PIXEL_ORIGINS; the evidence: docs/formats/labelme.md)


@register
class LabelmeReader(Reader):
    name = "labelme"
    pixel_origin = PIXEL_ORIGIN
    expects = "Labelme JSON files (objects with a 'shapes' list), or a folder of them"

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        if not sources:
            return False
        for s in sources:
            if s.is_dir():
                files = _json_files(s)
                if not files or not any(_looks_like_labelme(p) for p in files[:5]):
                    return False
            elif not (s.is_file() and _looks_like_labelme(s)):     # by content, whatever the extension
                return False
        return True

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        report = ctx.report
        files: List[Tuple[Path, bool]] = []  # (path, given by name)
        for s in sources:
            if s.is_dir():
                found = _json_files(s)
                if not found:
                    raise AnnotationError("no *.json file in this folder", Location(str(s)))
                files.extend((p, False) for p in found)
            else:
                files.append((s, True))
        files = sorted(dict(files).items(), key=lambda kv: str(kv[0]))
        docs = []
        for path, named in files:
            data = load_json(path)
            if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
                msg = "not a Labelme file: expected a JSON object with a 'shapes' list"
                if named:
                    raise AnnotationError(msg, Location(str(path), field="shapes"))
                report.add("malformed_record", msg + " (file skipped)", Location(str(path), field="shapes"))
                continue
            data.pop("imageData", None)  # the embedded image can be large; it is never used
            docs.append((path, data))
        names: List[str] = []
        seen = set()
        for _, data in docs:
            for shape in data["shapes"]:
                if isinstance(shape, dict) and shape.get("shape_type", "polygon") == "point":
                    label = shape.get("label")
                    if isinstance(label, str) and label and label not in seen:
                        seen.add(label)
                        names.append(label)
        if ctx.options.keypoints:
            wanted = set(ctx.options.keypoints)
            names = [n for n in names if n in wanted] + [n for n in ctx.options.keypoints if n not in seen]
        else:
            wanted = None
        ignored: Counter = Counter()
        instances = list(_instances(docs, ctx, wanted, ignored))
        extra = {"ignored_shapes": dict(sorted(ignored.items()))} if ignored else {}
        return ReadResult(DatasetMeta(keypoints=names), instances, [str(p) for p, _ in docs], extra)


def _instances(docs, ctx: ReadContext, wanted, ignored: Counter) -> Iterator[RawInstance]:
    report = ctx.report
    for path, data in docs:
        name = str(path)
        floc = Location(name)
        image = data.get("imagePath")
        if not isinstance(image, str) or not image.strip():
            report.add("missing_field", "expected 'imagePath', the image file relative to this JSON file",
                       floc.with_field("imagePath"))
            continue
        size = None
        w, h = data.get("imageWidth"), data.get("imageHeight")
        if w is not None or h is not None:
            if (isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool)
                    and not isinstance(h, bool) and w > 0 and h > 0):
                size = (w, h)
            else:
                report.add("wrong_type", f"expected positive integers imageWidth and imageHeight, got {w!r} and {h!r}",
                           floc.with_field("imageWidth"))
                continue
        # group key -> {"points": {label: point}, "bbox": ..., "bad": bool}
        groups: Dict[Optional[str], dict] = {}
        file_bad = False
        for i, shape in enumerate(data["shapes"]):
            sloc = Location(name, record=f"shapes[{i}]")
            if not isinstance(shape, dict):
                report.add("malformed_record", f"expected a shape object, got {shape!r}", sloc)
                file_bad = True
                break
            kind = shape.get("shape_type", "polygon")
            gid = shape.get("group_id")
            if gid is not None and (isinstance(gid, bool) or not isinstance(gid, (int, str))):
                report.add("wrong_type", f"expected an integer or null group_id, got {gid!r}", sloc.with_field("group_id"))
                file_bad = True
                break
            key = None if gid is None else str(gid)
            if kind == "point":
                label = shape.get("label")
                if not isinstance(label, str) or not label:
                    report.add("missing_field", "point shape without a label (the keypoint name)", sloc.with_field("label"))
                    groups.setdefault(key, {"points": {}, "bbox": None, "bad": False})["bad"] = True
                    continue
                if wanted is not None and label not in wanted:
                    continue
                g = groups.setdefault(key, {"points": {}, "bbox": None, "bad": False})
                pts = shape.get("points")
                xy = _xy(pts[0]) if isinstance(pts, list) and len(pts) == 1 else None
                if xy is None:
                    report.add("wrong_type", f"point {label!r}: expected points [[x, y]], got {pts!r}",
                               sloc.with_field(label))
                    g["bad"] = True
                    continue
                if label in g["points"]:
                    report.add("malformed_record", f"label {label!r} appears twice in instance "
                               f"{'group_id ' + key if key is not None else 'with null group_id'}",
                               sloc.with_field(label))
                    g["bad"] = True
                    continue
                flags = shape.get("flags")
                v = 1 if isinstance(flags, dict) and flags.get("occluded") is True else 2
                g["points"][label] = (xy[0], xy[1], v)
            elif kind == "rectangle":
                g = groups.setdefault(key, {"points": {}, "bbox": None, "bad": False})
                pts = shape.get("points")
                corners = [_xy(p) for p in pts] if isinstance(pts, list) and len(pts) == 2 else None
                if not corners or None in corners:
                    report.add("wrong_type", f"rectangle: expected points [[x1, y1], [x2, y2]], got {pts!r}",
                               sloc.with_field("points"))
                    g["bad"] = True
                    continue
                (x1, y1), (x2, y2) = corners
                g["boxes"] = g.get("boxes", 0) + 1
                if g["boxes"] == 1:
                    g["bbox"] = (min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1))
                else:       # (which one is the instance's? neither: the box around its keypoints)
                    g["bbox"] = None
                    g["second_box"] = sloc
            else:
                ignored[str(kind)] += 1
        if file_bad:
            continue
        base = str(path.parent)
        for key, g in groups.items():
            if g["bad"] or not g["points"]:
                continue  # reported above, or a box without keypoints (not a keypoint instance)
            loc = Location(name, record=None if key is None else f"group_id {key}")
            if g.get("second_box"):
                report.add("duplicate_box", f"{g['boxes']} rectangles in instance "
                           f"{'group_id ' + key if key is not None else 'with null group_id'}: none is used, the box "
                           "is derived from the keypoints (give each instance its own group_id)",
                           g["second_box"].with_field("points"))
            yield RawInstance(image=image, keypoints=g["points"], location=loc, instance=key,
                              bbox=g["bbox"], size=size, image_base=base)


def _xy(p) -> Optional[Tuple[float, float]]:
    if (isinstance(p, list) and len(p) == 2
            and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p)):
        return float(p[0]), float(p[1])
    return None
