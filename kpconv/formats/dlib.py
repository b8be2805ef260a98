"""dlib imglab XML (``training_with_face_landmarks.xml``): the files ``imglab`` writes and dlib's
shape-predictor trainer reads.

::

    <dataset>
      <images>
        <image file='2008_002470.jpg'>
          <box top='181' left='274' width='52' height='53'>
            <part name='00' x='276' y='198'/>
            ...

- Each ``<box>`` with at least one ``<part>`` is one instance; its ``top``/``left``/``width``/``height``
  is the instance's bbox (pixels). A box with ``ignore='1'`` is skipped (a ``crowd`` note, as dlib
  ignores it in training); a box without parts is a detection box, not a keypoint instance (ignored,
  counted in the header's ``source.boxes_without_parts``).
- ``<part name x y>``: the keypoint ``name`` (``00``, ``01``, ... keep their names) at (x, y) pixels,
  visible (v = 2). A part dlib did not label is simply absent (not labelled).
- Keypoint names: ``--keypoints``, else the part names sorted (numerically when they are all numbers,
  as imglab numbers them), so ``00..67`` keep dlib's order.
- ``file`` is relative to the XML file's folder (the default images root) or ``--images``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Sequence

from ..errors import AnnotationError, Location
from . import register
from ._xml import number, parse, root_tag
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult


def _sorted_names(names) -> List[str]:
    names = list(names)
    if all(n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


# Pixel convention (base.PIXEL_ORIGINS, docs/formats.md):
# dlib's part locations are dlib::point (integer pixel indices, long x, y) in full_object_detection, and
# imglab writes integer part coordinates: pixel i's centre at i. Boxes are inclusive pixel rectangles
# (left .. left + width - 1), i.e. the continuous span left .. left + width: unchanged.
PIXEL_ORIGIN = "center"


@register
class DlibReader(Reader):
    name = "dlib"
    pixel_origin = PIXEL_ORIGIN
    description = "dlib imglab XML (<dataset><images><image file><box><part name x y>)"
    expects = "an XML file whose root is <dataset> with <images><image file=...> (dlib imglab)"

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        return bool(sources) and all(Path(s).is_file() and root_tag(Path(s)) == "dataset" for s in sources)

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        docs = []
        for s in sources:
            path = Path(s)
            if path.is_dir():
                raise AnnotationError("expected a dlib XML file, got a folder", Location(str(path)))
            root = parse(path)
            if root.tag != "dataset" or root.find("images") is None:
                raise AnnotationError(f"expected a dlib imglab file: root <dataset> with <images>, got <{root.tag}>",
                                      Location(str(path), field="images"))
            docs.append((path, root))
        found = {p.get("name") for _, root in docs for p in root.iter("part") if p.get("name")}
        names = list(ctx.options.keypoints) if ctx.options.keypoints else _sorted_names(found)
        if not names:
            raise AnnotationError("no <part name=...> in any <box>: no keypoints to read (a face detection "
                                  "dataset?)", Location(str(docs[0][0]), field="part"))
        wanted = set(names)
        counts: Dict[str, int] = {"boxes_without_parts": 0}
        extra = {}
        instances = list(_instances(docs, ctx, wanted, counts))
        if counts["boxes_without_parts"]:
            extra["boxes_without_parts"] = counts["boxes_without_parts"]
        return ReadResult(DatasetMeta(keypoints=names), instances, [str(p) for p, _ in docs], extra)


def _instances(docs, ctx: ReadContext, wanted, counts) -> Iterator[RawInstance]:
    report = ctx.report
    for path, root in docs:
        name = str(path)
        for i, image in enumerate(root.find("images").iter("image")):
            file = image.get("file")
            iloc = Location(name, record=f"image {file}" if file else f"images[{i}]")
            if not file:
                report.add("missing_field", "<image> without a file attribute", iloc.with_field("file"))
                continue
            for j, box in enumerate(image.findall("box")):
                loc = Location(name, record=f"image {file} box {j}")
                parts = box.findall("part")
                if not parts:
                    counts["boxes_without_parts"] += 1
                    continue
                if box.get("ignore") == "1":
                    report.add("crowd", "box with ignore='1' skipped", loc.with_field("ignore"))
                    continue
                bbox = [number(box, a) for a in ("left", "top", "width", "height")]
                if None in bbox:
                    if any(box.get(a) is not None for a in ("left", "top", "width", "height")):
                        report.add("bad_bbox", f"expected numbers top, left, width, height, got "
                                   f"{dict(box.attrib)!r}; deriving the box from the parts", loc.with_field("box"))
                    bbox = None
                points = {}
                bad = False
                for part in parts:
                    pname = part.get("name")
                    if not pname:
                        report.add("missing_field", "<part> without a name", loc.with_field("name"))
                        bad = True
                        break
                    if pname not in wanted:
                        continue
                    x, y = number(part, "x"), number(part, "y")
                    if x is None or y is None:
                        report.add("wrong_type", f"part {pname!r}: expected numbers x and y, got "
                                   f"{part.get('x')!r}, {part.get('y')!r}", loc.with_field(pname))
                        bad = True
                        break
                    if pname in points:
                        report.add("malformed_record", f"part {pname!r} appears twice in this box",
                                   loc.with_field(pname))
                        bad = True
                        break
                    points[pname] = (x, y, 2)
                if bad:
                    continue
                yield RawInstance(image=file, keypoints=points, location=loc, bbox=tuple(bbox) if bbox else None)
