"""dlib imglab XML (``training_with_face_landmarks.xml``): a ``<box>`` with ``<part>`` s per instance;
docs/formats/dlib.md."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Sequence

from ...errors import AnnotationError, Location
from . import register
from ._xml import number, parse, root_tag
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult


def _sorted_names(names) -> List[str]:
    names = list(names)
    if all(n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


PIXEL_ORIGIN = "center"  # (base.PIXEL_ORIGINS; the evidence: docs/formats/dlib.md)


@register
class DlibReader(Reader):
    name = "dlib"
    pixel_origin = PIXEL_ORIGIN
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
