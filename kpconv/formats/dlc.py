"""DeepLabCut labelled data: ``labeled-data/<video>/CollectedData_<scorer>.csv``.

The CSV has three header rows (``scorer``, ``bodyparts``, ``coords``) or, in multi-animal projects,
four (``scorer``, ``individuals``, ``bodyparts``, ``coords``). The image path is one index column
(``labeled-data/video1/img001.png``) or several (``labeled-data,video1,img001.png``, joined with
``/``). Each bodypart has an ``x`` and a ``y`` column (a ``likelihood`` column, as in machine-labelled
files, is ignored). Empty cells and ``NaN`` are points that are not labelled; every labelled point is
visible (v = 2). Image paths are relative to the project folder, the default images root.

SOURCE is one or several CSV files or the project folder (``labeled-data/*/CollectedData_*.csv``).
The project's ``config.yaml``, when present, gives the skeleton (pairs of bodypart names).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from ..errors import AnnotationError, Location
from . import register
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult

_MISSING = {"", "nan", "NaN", "NAN"}


def _is_dlc_csv(path: Path) -> bool:
    """Cheap content check: first cell 'scorer', second row starts with 'bodyparts' or 'individuals'."""
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            first = f.readline()
            second = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return (first.split(",", 1)[0].strip() == "scorer"
            and second.split(",", 1)[0].strip() in ("bodyparts", "individuals"))


def _project_csvs(folder: Path) -> List[Path]:
    """CollectedData CSVs of a project folder, or of one video folder, sorted."""
    found = sorted(folder.glob("labeled-data/*/CollectedData_*.csv"))
    if not found:
        found = sorted(folder.glob("CollectedData_*.csv"))
    return found


def _expand(sources: Sequence[Path]) -> List[Path]:
    files: List[Path] = []
    for s in sources:
        if s.is_dir():
            found = _project_csvs(s)
            if not found:
                h5 = any(s.glob("labeled-data/*/CollectedData_*.h5")) or any(s.glob("CollectedData_*.h5"))
                hint = ("; only .h5 files are there: kpconv reads the CSV twin DeepLabCut writes beside each "
                        "one (pandas.read_hdf(f).to_csv(...) makes it)") if h5 else \
                    " (expected a DeepLabCut project folder)"
                raise AnnotationError(f"no labeled-data/*/CollectedData_*.csv found in this folder{hint}",
                                      Location(str(s)))
            files.extend(found)
        else:
            files.append(s)
    return list(dict.fromkeys(files))


def _project_dir(sources: Sequence[Path]) -> Path:
    first = sources[0]
    if first.is_dir():
        if (first / "labeled-data").is_dir():
            return first
        # a video folder given directly: project/labeled-data/<video>
        return first.parent.parent
    # project/labeled-data/<video>/CollectedData_x.csv -> project
    return first.parent.parent.parent


@register
class DlcReader(Reader):
    name = "dlc"
    description = "DeepLabCut CollectedData_<scorer>.csv (single- or multi-animal)"

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        for s in sources:
            if s.is_dir():
                found = _project_csvs(s)
                if not found or not _is_dlc_csv(found[0]):
                    return False
            elif not (s.suffix.lower() == ".csv" and _is_dlc_csv(s)):
                return False
        return bool(sources)

    @classmethod
    def default_images_root(cls, sources: Sequence[Path]) -> Path:
        return _project_dir(sources)

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        files = _expand(sources)
        tables = [_Table(f) for f in files]
        first = tables[0]
        for t in tables[1:]:
            if t.columns != first.columns:
                raise AnnotationError(
                    f"header differs from {first.path.name} ({first.path}): expected the same individuals "
                    f"and bodyparts in the same order", Location(str(t.path), t.header_rows))
        bodyparts = list(dict.fromkeys(bp for _, bp in first.columns))
        skeleton, config = _skeleton(_project_dir(sources), bodyparts)
        meta = DatasetMeta(keypoints=bodyparts, skeleton=skeleton)
        wanted = set(ctx.options.keypoints) if ctx.options.keypoints else None
        missing = [n for n in ctx.options.keypoints or [] if n not in bodyparts]
        if missing:
            raise AnnotationError(f"--keypoints: {', '.join(map(repr, missing))} not among the bodyparts "
                                  f"({', '.join(bodyparts)})", Location(str(first.path), first.header_rows - 1))
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
        try:
            with open(path, "r", encoding="utf-8-sig", newline="") as f:
                rows = []
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
        with open(t.path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            try:
                for _ in range(t.header_rows):
                    next(reader)
                for row in reader:
                    line = reader.line_num
                    if not row or all(not c.strip() for c in row):
                        continue
                    loc = Location(name, line)
                    parts = [c.strip() for c in row[:t.n_index] if c.strip()]
                    if not parts:
                        report.add("missing_field", "empty image path", loc.with_field("image"))
                        continue
                    image = "/".join(p.replace("\\", "/") for p in parts)
                    folder = image.rsplit("/", 2)
                    group = folder[-2] if len(folder) >= 2 else t.path.parent.name
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
    import yaml

    try:
        with open(config, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise AnnotationError(f"invalid YAML: {getattr(e, 'problem', None) or e}",
                              Location(str(config), mark.line + 1 if mark else None)) from None
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
