"""CSV/TSV tables of keypoints (format ``csv``): wide (a row per instance, ``<name>_x``/``_y``/``_v`` columns) or
long (a row per keypoint), told apart by the header; columns: docs/formats/csv.md."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ...errors import AnnotationError, Location
from . import register
from .base import DatasetMeta, RawInstance, ReadContext, ReadResult, Reader, first_lines

_BBOX = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
_LONG_VISIBLE = ("visible", "visibility", "v")
_OPTIONAL = ("instance", "group", "split", "width", "height")


def _delimiter(path: Path) -> str:
    """Tab for ``.tsv``, or a first line with tabs and no comma (whatever the extension); else comma."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    first = (first_lines(path, 1) or [""])[0]
    return "\t" if "\t" in first and "," not in first else ","


def _header_of(path: Path) -> Optional[List[str]]:
    """The first row, lower-cased and stripped, or None when the file is not readable text."""
    first = first_lines(path, 1)
    if first is None:
        return None
    rows = list(csv.reader(first, delimiter=_delimiter(path)))
    return [c.strip().lower() for c in rows[0]] if rows else None


def _layout(cols: Sequence[str]) -> Optional[str]:
    """'wide', 'long' or None for a header that is neither (e.g. a DeepLabCut 'scorer' header)."""
    if not cols or cols[0] == "scorer" or "image" not in cols:
        return None
    if "keypoint" in cols and "x" in cols and "y" in cols:
        return "long"
    names = {c[:-2] for c in cols if c.endswith("_x")}
    if any(f"{n}_y" in cols for n in names if n):
        return "wide"
    return None


class _Cells:
    """Typed access to the cells of one row, reporting located problems."""

    def __init__(self, row: List[str], line: int, file: str, report):
        self.row, self.line, self.file, self.report = row, line, file, report
        self.ok = True

    def fail(self, reason: str, col: str, message: str) -> None:
        """Report ``labels.csv:7: column 'elbow_x': expected a number, got 'abc'`` (the column is
        named in the message, as a spreadsheet user reads it, not as a JSON field)."""
        if self.ok:  # one problem per record: the first one found
            self.report.add(reason, f"column '{col}': {message}", Location(self.file, self.line))
        self.ok = False

    def text(self, i: Optional[int]) -> Optional[str]:
        return (self.row[i].strip() or None) if i is not None else None

    def _value(self, i: Optional[int]) -> Optional[str]:
        """The cell's text, None for no column or an empty / NaN cell (not labelled)."""
        s = self.text(i)
        return None if s is None or s.lower() == "nan" else s

    def number(self, i: int, col: str) -> Optional[float]:
        """A finite float, or None for an empty / NaN cell (not labelled)."""
        s = self._value(i)
        if s is None:
            return None
        try:
            x = float(s)
        except ValueError:
            self.fail("wrong_type", col, f"expected a number, got {s!r}")
            return None
        if not math.isfinite(x):
            self.fail("bad_coordinate", col, f"expected a finite number, got {s!r}")
            return None
        return x

    def visibility(self, i: Optional[int], col: str) -> Optional[int]:
        s = self._value(i)
        if s is None:
            return None
        try:
            v = float(s)
        except ValueError:
            v = None
        if v not in (0, 1, 2):
            self.fail("bad_visibility", col, f"expected visibility 0, 1 or 2, got {s!r}")
            return None
        return int(v)

    def point(self, ix: int, iy: int, iv: Optional[int], name: str, cx: str, cy: str, cv: str):
        """(x, y, v) of a labelled point, or None (not labelled or a problem, see ``ok``)."""
        x, y = self.number(ix, cx), self.number(iy, cy)
        v = self.visibility(iv, cv)
        if not self.ok:
            return None
        if v == 0:
            return None
        if x is None and y is None:
            if v is not None:
                self.fail("missing_field", cx, f"keypoint {name!r} has visibility {v} but no coordinates")
            return None
        if x is None or y is None:
            missing = cx if x is None else cy
            self.fail("missing_field", missing, f"keypoint {name!r} has only one coordinate; expected both "
                      f"{cx} and {cy}, or neither (not labelled)")
            return None
        return (x, y, 2 if v is None else v)

    def size(self, iw: Optional[int], ih: Optional[int]) -> Optional[Tuple[int, int]]:
        if iw is None or ih is None:
            return None
        w, h = self.text(iw), self.text(ih)
        if w is None and h is None:
            return None
        try:
            size = (int(w), int(h))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            size = None
        if size is None or min(size) <= 0:
            self.fail("wrong_type", "width", f"expected positive integer width and height, got {w!r} x {h!r}")
            return None
        return size


def _complete_rows(rows, ncols: int, file: str, report):
    """(line, row) of the non-blank rows with as many cells as the header; others are reported."""
    for line, row in rows:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != ncols:
            report.add("malformed_record", f"expected {ncols} cells (as in the header), got {len(row)}",
                       Location(file, line))
            continue
        yield line, row


def _find(cols: List[str], name: str) -> Optional[int]:
    return cols.index(name) if name in cols else None


PIXEL_ORIGIN = "corner"  # (base.PIXEL_ORIGINS; the evidence: docs/formats/csv.md)


@register
class CsvReader(Reader):
    name = "csv"
    pixel_origin = PIXEL_ORIGIN
    expects = ("a CSV/TSV table whose header has 'image' and '<name>_x', '<name>_y' columns (wide) or 'keypoint', "
               "'x', 'y' (long)")

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        if not sources:
            return False
        for s in sources:
            s = Path(s)
            if not s.is_file():   # any extension: the header row decides (a CSV named .dat is one)
                return False
            if _layout(_header_of(s) or []) is None:
                return False
        return True

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        tables = []
        layouts = set()
        for s in sources:
            path = Path(s)
            if path.is_dir():
                raise AnnotationError("expected a CSV file, got a folder", Location(str(path)))
            rows = _read_rows(path)
            if not rows:
                raise AnnotationError("empty file: expected a header row", Location(str(path), 1))
            raw = [c.strip() for c in rows[0][1]]
            cols = [c.lower() for c in raw]
            layout = _layout(cols)
            if layout is None:
                raise AnnotationError("header is neither a wide table (image,<name>_x,<name>_y,...) nor a long "
                                      f"one (image,instance,keypoint,x,y[,visible]); got {','.join(cols)}",
                                      Location(str(path), rows[0][0]))
            dup = sorted({c for c in cols if c and cols.count(c) > 1})
            if dup:
                raise AnnotationError(f"column(s) {', '.join(dup)} appear more than once in the header",
                                      Location(str(path), rows[0][0]))
            layouts.add(layout)
            tables.append((path, cols, raw, rows[1:]))
        if len(layouts) > 1:
            raise AnnotationError("files mix the wide and the long layout; convert them to one layout",
                                  Location(str(tables[0][0])))
        if layouts == {"wide"}:
            names, plans = self._wide_plans(tables, ctx)
            instances = self._wide(plans, ctx)
        else:
            names, instances = self._long(tables, ctx)
        return ReadResult(DatasetMeta(keypoints=names), instances, source_files=[str(t[0]) for t in tables],
                          extra={"layout": layouts.pop()})

    # ---------------------------------------------------------------------------------------- wide
    def _wide_plans(self, tables, ctx):
        wanted = ctx.options.keypoints
        names: Optional[List[str]] = None
        plans = []
        for path, cols, raw, rows in tables:
            loc = Location(str(path), 1)
            has_box = [c in cols for c in _BBOX]
            if any(has_box) and not all(has_box):
                missing = [c for c, h in zip(_BBOX, has_box) if not h]
                raise AnnotationError(f"a bbox needs the four columns {', '.join(_BBOX)}; missing {', '.join(missing)}",
                                      loc)
            file_names = []
            for c in cols:
                if c.endswith("_x") and len(c) > 2 and not (all(has_box) and c == "bbox_x"):
                    n = c[:-2]
                    if f"{n}_y" not in cols:
                        raise AnnotationError(f"column '{c}' has no matching '{n}_y'", loc.with_field(c))
                    file_names.append(n)
            for c in cols:
                if c.endswith("_y") and len(c) > 2 and c[:-2] not in file_names and c != "bbox_y":
                    raise AnnotationError(f"column '{c}' has no matching '{c[:-2]}_x'", loc.with_field(c))
            header_names = [raw[cols.index(f"{n}_x")][:-2] for n in file_names]
            if wanted:
                lower = {n.lower(): n for n in header_names}
                missing = [n for n in wanted if n.lower() not in lower]
                if missing:
                    raise AnnotationError(f"--keypoints: {', '.join(map(repr, missing))} not in the header "
                                          f"(keypoints: {', '.join(header_names)})", loc)
                use = list(wanted)
            else:
                use = header_names
            if names is None:
                names = use
            elif [n.lower() for n in use] != [n.lower() for n in names]:
                raise AnnotationError(f"keypoints of {path} ({', '.join(use)}) differ from those of "
                                      f"{tables[0][0]} ({', '.join(names)})", loc)
            kp_cols = []
            for n in names:
                key = n.lower()
                kp_cols.append((n, cols.index(f"{key}_x"), cols.index(f"{key}_y"), _find(cols, f"{key}_v"),
                                f"{key}_x", f"{key}_y", f"{key}_v"))
            box = [cols.index(c) for c in _BBOX] if all(has_box) else None
            opt = {c: _find(cols, c) for c in _OPTIONAL}
            plans.append((path, len(cols), cols.index("image"), opt, kp_cols, box, rows))
        assert names is not None
        return names, plans

    def _wide(self, plans, ctx) -> Iterator[RawInstance]:
        report = ctx.report
        for path, ncols, i_image, opt, kp_cols, box, rows in plans:
            file = str(path)
            for line, row in _complete_rows(rows, ncols, file, report):
                c = _Cells(row, line, file, report)
                image = c.text(i_image)
                if image is None:
                    c.fail("missing_field", "image", "empty image path")
                    continue
                points = {}
                for name, ix, iy, iv, cx, cy, cv in kp_cols:
                    p = c.point(ix, iy, iv, name, cx, cy, cv)
                    if p is not None:
                        points[name] = p
                bbox = None
                if box is not None:
                    vals = [c.number(i, col) for i, col in zip(box, _BBOX)]
                    if c.ok and any(v is not None for v in vals):
                        if any(v is None for v in vals):
                            c.fail("missing_field", _BBOX[vals.index(None)], "bbox needs all four values or none")
                        else:
                            bbox = tuple(vals)
                size = c.size(opt["width"], opt["height"])
                if not c.ok:
                    continue
                yield RawInstance(image, points, Location(file, line), instance=c.text(opt["instance"]),
                                  bbox=bbox, size=size, group=c.text(opt["group"]), split=c.text(opt["split"]))

    # ---------------------------------------------------------------------------------------- long
    def _long(self, tables, ctx) -> Tuple[List[str], Iterator[RawInstance]]:
        """Rows are grouped by (image, instance) in order of first appearance; one bad row skips its
        instance. Read completely before the first instance is produced (names come from all rows)."""
        wanted = ctx.options.keypoints
        report = ctx.report
        names: List[str] = list(wanted) if wanted else []
        known = set(names)
        groups: Dict[Tuple[str, Optional[str]], dict] = {}
        for path, cols, _raw, rows in tables:
            file = str(path)
            ncols = len(cols)
            i_image, i_kp, i_x, i_y = (cols.index(c) for c in ("image", "keypoint", "x", "y"))
            i_v = next((cols.index(c) for c in _LONG_VISIBLE if c in cols), None)
            c_v = cols[i_v] if i_v is not None else "visible"
            opt = {c: _find(cols, c) for c in _OPTIONAL}
            for line, row in _complete_rows(rows, ncols, file, report):
                c = _Cells(row, line, file, report)
                image = c.text(i_image)
                instance = c.text(opt["instance"])
                if image is None:
                    c.fail("missing_field", "image", "empty image path")
                    continue
                g = groups.get((image, instance))
                if g is None:
                    g = groups[(image, instance)] = {"image": image, "instance": instance, "points": {},
                                                     "loc": Location(file, line), "ok": True,
                                                     "lines": {}, "size": None,
                                                     "group": c.text(opt["group"]), "split": c.text(opt["split"])}
                name = c.text(i_kp)
                if name is None:
                    c.fail("missing_field", "keypoint", "empty keypoint name")
                elif name not in known:
                    if wanted:
                        c.fail("unknown_keypoint", "keypoint", f"keypoint {name!r} is not one of --keypoints "
                               f"({', '.join(names)})")
                    else:
                        names.append(name)
                        known.add(name)
                if c.ok and name in g["lines"]:
                    c.fail("malformed_record", "keypoint", f"keypoint {name!r} of image {image!r} instance "
                           f"{instance!r} given twice (first at line {g['lines'][name]})")
                p = c.point(i_x, i_y, i_v, name, "x", "y", c_v) if c.ok else None
                size = c.size(opt["width"], opt["height"])
                if not c.ok:
                    g["ok"] = False
                    continue
                g["lines"][name] = line
                if size is not None:
                    g["size"] = size
                if p is not None:
                    g["points"][name] = p
        if not names:
            raise AnnotationError("no keypoint rows found; give the names with --keypoints",
                                  Location(str(tables[0][0])))

        def instances() -> Iterator[RawInstance]:
            for g in groups.values():
                if g["ok"]:
                    yield RawInstance(g["image"], g["points"], g["loc"], instance=g["instance"],
                                      size=g["size"], group=g["group"], split=g["split"])

        return names, instances()


def _read_rows(path: Path) -> List[Tuple[int, List[str]]]:
    """All rows of a CSV file, each with the line number it starts on."""
    rows = []
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=_delimiter(path), strict=True)
            prev = 0
            try:
                for row in reader:
                    rows.append((prev + 1, row))
                    prev = reader.line_num
            except csv.Error as e:
                raise AnnotationError(f"malformed CSV: {e}", Location(str(path), reader.line_num)) from None
    except OSError as e:
        raise AnnotationError(f"cannot read file: {e.strerror}", Location(str(path))) from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"not UTF-8 text: {e.reason}", Location(str(path))) from None
    return rows
