"""DeepLabCut labelled data: ``CollectedData_<scorer>.csv`` (single- or multi-animal header) or its ``.h5`` twin
(through pandas), a project folder or tables; layout and images root: docs/formats/dlc.md."""
from __future__ import annotations

import csv
import io
import math
from itertools import islice
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ...errors import AnnotationError, Location
from . import register
from ._yaml import load_yaml
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult, first_lines, is_hdf5, wanted_keypoints

_MISSING = {"", "nan", "NaN", "NAN"}
H5_HINT = "pip install 'kpconv[h5]' (pandas and PyTables), or read the CSV twin DeepLabCut writes beside it"


def _is_dlc_csv(path: Path) -> bool:
    """Cheap content check, whatever the extension: first cell 'scorer', second row starts with
    'bodyparts' or 'individuals'."""
    first, second = first_lines(path, 2) or ("", "")
    return (first.split(",", 1)[0].strip() == "scorer"
            and second.split(",", 1)[0].strip() in ("bodyparts", "individuals"))


def _is_dlc_h5(path: Path) -> bool:
    """An HDF5 file named like DeepLabCut's labels (``CollectedData_<scorer>.h5``)."""
    return path.name.startswith("CollectedData") and is_hdf5(path)


def _is_dlc_file(path: Path) -> bool:
    return path.is_file() and (_is_dlc_h5(path) or _is_dlc_csv(path))


def _project_tables(folder: Path) -> List[Path]:
    """CollectedData tables of a project folder (``labeled-data/*/`` or its top level), or of one
    video folder, sorted; a ``.h5`` only where its folder has no CSV."""
    for pattern in ("labeled-data/*/CollectedData*", "CollectedData*"):
        csvs = sorted(folder.glob(pattern + ".csv"))
        have = {p.parent for p in csvs}
        h5s = [p for p in sorted(folder.glob(pattern + ".h5")) if p.parent not in have]
        found = sorted(csvs + h5s)
        if found:
            return found
    return []


def _expand(sources: Sequence[Path]) -> List[Path]:
    files: List[Path] = []
    for s in sources:
        if s.is_dir():
            found = _project_tables(s)
            if not found:
                raise AnnotationError("no labeled-data/*/CollectedData*.csv (or .h5), nor a CollectedData*.csv "
                                      "at the top, found in this folder (expected a DeepLabCut project folder)",
                                      Location(str(s)))
            files.extend(found)
        else:
            files.append(s)
    files = list(dict.fromkeys(files))
    given = set(files)
    # CollectedData_x.h5 and its CSV twin both named (a shell glob): the CSV is read, once
    return [f for f in files if not (f.suffix.lower() == ".h5" and f.with_suffix(".csv") in given)]


def _candidate_roots(table: Path) -> List[Path]:
    """Where a table's image paths may be relative to: the project folder above
    ``labeled-data/<video>/``, the table's own folder, its grandparent."""
    folder = table.parent
    out = []
    if folder.parent.name == "labeled-data":
        out.append(folder.parent.parent)
    out += [folder, folder.parent]
    return list(dict.fromkeys(out))


def _project_dir(sources: Sequence[Path]) -> Path:
    """The images root: the first candidate folder where the first listed image exists."""
    first = sources[0]
    if first.is_dir():
        found = _project_tables(first)
        if not found:
            return first if (first / "labeled-data").is_dir() else first.parent.parent
        first = found[0]
    candidates = _candidate_roots(first)
    image = _first_image(first)
    if image is not None:
        for root in candidates:
            if (root / image).is_file():
                return root
    if first.parent.parent.name == "labeled-data":
        return first.parent.parent.parent
    return candidates[0]


def _first_image(path: Path) -> Optional[str]:
    """The first data row's image path (CSV only), or None."""
    if path.suffix.lower() == ".h5":
        return None
    try:
        table = _Table(path)
        with table.open() as f:
            for row in islice(csv.reader(f), table.header_rows, None):
                if any(c.strip() for c in row):
                    return _image_path(row, table.n_index)
    except (AnnotationError, OSError, csv.Error):
        return None
    return None


def _image_path(row: List[str], n_index: int) -> Optional[str]:
    """A data row's image path: its index cells joined with ``/`` (None when they are empty)."""
    return "/".join(c.strip().replace("\\", "/") for c in row[:n_index] if c.strip()) or None


PIXEL_ORIGIN = "center"  # (base.PIXEL_ORIGINS; the evidence: docs/formats/dlc.md)


@register
class DlcReader(Reader):
    name = "dlc"
    pixel_origin = PIXEL_ORIGIN
    expects = ("a DeepLabCut project folder (labeled-data/*/CollectedData*.csv, or a CollectedData*.csv at "
               "its top), or CollectedData tables: first cell 'scorer', second row 'bodyparts' or 'individuals'")

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        for s in sources:
            if s.is_dir():
                found = _project_tables(s)
                if not found or not _is_dlc_file(found[0]):
                    return False
            elif not _is_dlc_file(s):
                return False
        return bool(sources)

    @classmethod
    def default_images_root(cls, sources: Sequence[Path]) -> Path:
        return _project_dir(sources)

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        files = _expand(sources)
        tables = [_Table(f) for f in files]
        root = ctx.images_root
        first = tables[0]
        for t in tables[1:]:
            if t.columns != first.columns:
                raise AnnotationError(
                    f"header differs from {first.path.name} ({first.path}): expected the same individuals "
                    f"and bodyparts in the same order", Location(str(t.path), t.header_rows))
        bodyparts = list(dict.fromkeys(bp for _, bp in first.columns))
        skeleton, config = _skeleton(root if (root / "config.yaml").is_file() else _project_dir(sources), bodyparts)
        meta = DatasetMeta(keypoints=bodyparts, skeleton=skeleton)
        wanted = wanted_keypoints(ctx.options.keypoints, bodyparts, "bodyparts",
                                  Location(str(first.path), first.header_rows - 1))
        scorers = sorted({t.scorer for t in tables})
        extra = {"scorer": scorers[0] if len(scorers) == 1 else scorers,
                 "multi_animal": first.multi_animal}
        source_files = [str(f) for f in files] + ([str(config)] if config else [])
        return ReadResult(meta, _instances(tables, ctx, wanted), source_files, extra)


class _Table:
    """A parsed CollectedData header; rows are read lazily by :func:`_instances`."""

    def __init__(self, path: Path):
        self.path = path
        name = str(path)
        self.h5_text = _h5_as_csv(path) if path.suffix.lower() == ".h5" or _is_dlc_h5(path) else None
        rows = []
        try:
            with self.open() as f:
                reader = csv.reader(f)
                for row in reader:
                    rows.append(row)
                    if (row and row[0].strip() == "coords") or len(rows) >= 4:
                        break
        except UnicodeDecodeError as e:
            raise AnnotationError(f"not a UTF-8 text file ({e.reason})", Location(name)) from None
        except csv.Error as e:
            raise AnnotationError(f"malformed CSV: {e}", Location(name, len(rows) + 1)) from None
        labels = [r[0].strip() if r else "" for r in rows]
        if labels == ["scorer", "bodyparts", "coords"]:
            self.multi_animal = False
        elif labels == ["scorer", "individuals", "bodyparts", "coords"]:
            self.multi_animal = True
        else:
            raise AnnotationError(
                "expected DeepLabCut header rows 'scorer', 'bodyparts', 'coords' (or 'scorer', "
                f"'individuals', 'bodyparts', 'coords'), got {labels!r} in the first column",
                Location(name, 1))
        self.header_rows = len(rows)
        coords = rows[-1]
        # index columns: the label cell plus the empty cells after it
        n_index = 1
        while n_index < len(coords) and coords[n_index].strip() == "":
            n_index += 1
        self.n_index = n_index
        width = len(coords)
        for i, r in enumerate(rows):
            if len(r) != width:
                raise AnnotationError(f"header row {labels[i]!r} has {len(r)} cells, the 'coords' row {width}",
                                      Location(name, i + 1))
        scorer_cells = {c.strip() for c in rows[0][n_index:]}
        self.scorer = sorted(scorer_cells)[0] if scorer_cells else ""
        bp_row = rows[-2]
        ind_row = rows[1] if self.multi_animal else None
        # (individual or None, bodypart) -> {"x": col, "y": col}
        cols: Dict[Tuple[Optional[str], str], Dict[str, int]] = {}
        for c in range(n_index, width):
            coord = coords[c].strip()
            bp = bp_row[c].strip()
            ind = ind_row[c].strip() if ind_row is not None else None
            if not bp:
                raise AnnotationError("empty bodypart name", Location(name, self.header_rows - 1).with_field(f"column {c + 1}"))
            if coord == "likelihood":
                continue
            if coord not in ("x", "y"):
                raise AnnotationError(f"column {c + 1}: expected coords 'x', 'y' or 'likelihood', got {coord!r}",
                                      Location(name, self.header_rows))
            slot = cols.setdefault((ind, bp), {})
            if coord in slot:
                raise AnnotationError(f"column {c + 1}: second {coord!r} column for "
                                      f"{_label(ind, bp)}", Location(name, self.header_rows))
            slot[coord] = c
        for (ind, bp), slot in cols.items():
            if set(slot) != {"x", "y"}:
                raise AnnotationError(f"{_label(ind, bp)} has no {'y' if 'x' in slot else 'x'} column",
                                      Location(name, self.header_rows))
        if not cols:
            raise AnnotationError("no bodypart columns", Location(name, self.header_rows))
        self.columns = list(cols)
        self.cols = cols

    def open(self):
        """The table as CSV text (an ``.h5`` converted by pandas, as DeepLabCut writes its CSV twin)."""
        if self.h5_text is not None:
            return io.StringIO(self.h5_text, newline="")
        return open(self.path, "r", encoding="utf-8-sig", newline="")

    def location(self, line: int) -> Location:
        """CSV: the line; ``.h5``: the row (0-based, as pandas counts it)."""
        if self.h5_text is None:
            return Location(str(self.path), line)
        return Location(str(self.path), record=f"row {line - self.header_rows - 1}")


def _h5_as_csv(path: Path) -> str:
    """A DeepLabCut ``.h5`` (a pandas DataFrame) as the CSV text DeepLabCut writes beside it."""
    try:
        import pandas as pd
    except ImportError:
        raise AnnotationError(f"reading DeepLabCut .h5 files needs pandas and PyTables: {H5_HINT}",
                              Location(str(path))) from None
    try:
        try:
            df = pd.read_hdf(path)
        except ValueError as e:     # several datasets in the file: DeepLabCut's key
            if "key" not in str(e):
                raise
            df = pd.read_hdf(path, "df_with_missing")
    except ImportError as e:   # pandas without PyTables
        raise AnnotationError(f"reading DeepLabCut .h5 files needs PyTables ({e}): {H5_HINT}",
                              Location(str(path))) from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:   # RuntimeError: PyTables' HDF5ExtError
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        raise AnnotationError(f"cannot read as a pandas HDF5 table: {lines[-1] if lines else type(e).__name__}",
                              Location(str(path))) from None
    if not isinstance(df, pd.DataFrame):
        raise AnnotationError(f"expected a DataFrame, got {type(df).__name__}", Location(str(path)))
    # the index names, if any, would add a row below 'coords' that DeepLabCut's CSV does not have
    return df.rename_axis(index=[None] * df.index.nlevels).to_csv()


def _label(ind: Optional[str], bp: str) -> str:
    return f"{ind} {bp}" if ind is not None else bp


def _number(text: str) -> Optional[float]:
    """None for an empty / NaN cell; a float; raises ValueError otherwise."""
    t = text.strip()
    if t in _MISSING:
        return None
    v = float(t)
    return None if math.isnan(v) else v


def _instances(tables: List[_Table], ctx: ReadContext, wanted) -> Iterator[RawInstance]:
    report = ctx.report
    for t in tables:
        name = str(t.path)
        individuals = list(dict.fromkeys(ind for ind, _ in t.columns))
        with t.open() as f:
            reader = csv.reader(f)
            try:
                for _ in range(t.header_rows):
                    next(reader)
                for row in reader:
                    line = reader.line_num
                    if not row or all(not c.strip() for c in row):
                        continue
                    loc = t.location(line)
                    image = _image_path(row, t.n_index)
                    if image is None:
                        report.add("missing_field", "empty image path", loc.with_field("image"))
                        continue
                    folder = image.rsplit("/", 2)
                    group = folder[-2] if len(folder) >= 2 else t.path.parent.name
                    if group == "labeled-data":
                        group = None    # labeled-data/imgNN.png: no video folder, no group
                    values = {}
                    bad = None
                    for (ind, bp), slot in t.cols.items():
                        if wanted is not None and bp not in wanted:
                            continue
                        xy = []
                        for coord in ("x", "y"):
                            c = slot[coord]
                            cell = row[c] if c < len(row) else ""
                            try:
                                xy.append(_number(cell))
                            except ValueError:
                                bad = (f"column '{_label(ind, bp)} {coord}': expected a number, got {cell.strip()!r}",
                                       f"{_label(ind, bp)} {coord}")
                                break
                        if bad:
                            break
                        x, y = xy
                        if x is None and y is None:
                            continue
                        # one of x, y missing: a labelled point with a NaN coordinate (ingest reports it)
                        values.setdefault(ind, {})[bp] = (float("nan") if x is None else x,
                                                          float("nan") if y is None else y, 2)
                    if bad:
                        report.add("wrong_type", bad[0], loc)
                        continue
                    for ind in individuals:
                        # single-animal: one instance per frame, id "0", so a repeated frame row is
                        # caught as a duplicate by ingest
                        yield RawInstance(image=image, keypoints=values.get(ind, {}), location=loc,
                                          instance="0" if ind is None else ind, group=group)
            except csv.Error as e:
                raise AnnotationError(f"malformed CSV: {e}", Location(name, reader.line_num)) from None


def _skeleton(project: Path, bodyparts: List[str]) -> Tuple[List[Tuple[int, int]], Optional[Path]]:
    config = project / "config.yaml"
    if not config.is_file():
        return [], None
    data = load_yaml(config)
    if not isinstance(data, dict):
        return [], config
    pairs = data.get("skeleton") or []
    index = {n: i for i, n in enumerate(bodyparts)}
    out = []
    if not isinstance(pairs, list):
        raise AnnotationError("expected a list of [bodypart, bodypart] pairs", Location(str(config), field="skeleton"))
    for k, p in enumerate(pairs):
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(n, str) for n in p)):
            raise AnnotationError(f"skeleton[{k}]: expected a pair of bodypart names, got {p!r}",
                                  Location(str(config), field="skeleton"))
        a, b = index.get(p[0]), index.get(p[1])
        if a is not None and b is not None and a != b:
            out.append((a, b))
    return sorted(set(out)), config
