"""YOLO pose (Ultralytics): a ``data.yaml`` (``kpt_shape``, splits) plus one ``.txt`` label file per image,
found by the Ultralytics rule; docs/formats/yolo.md."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from ...errors import AnnotationError, Location
from . import register
from ._yaml import load_yaml
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult, head, wanted_keypoints

IMAGE_EXTENSIONS = {".bmp", ".dng", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp", ".pfm",
                    ".heic"}
SPLITS = ("train", "val", "test")


def _yaml_of(sources: Sequence[Path]) -> Optional[Path]:
    if len(sources) != 1:
        return None
    s = sources[0]
    if s.is_dir():
        for name in ("data.yaml", "data.yml", "dataset.yaml"):
            if (s / name).is_file():
                return s / name
        candidates = sorted(list(s.glob("*.yaml")) + list(s.glob("*.yml")))
        hits = [c for c in candidates if _has_kpt_shape(c)]
        return hits[0] if len(hits) == 1 else None
    if s.suffix.lower() in (".yaml", ".yml"):
        return s
    return None


def _has_kpt_shape(path: Path) -> bool:
    return b"kpt_shape" in head(path, 65536)


def _load_yaml(path: Path) -> dict:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise AnnotationError("expected a YAML mapping with 'kpt_shape' and 'train'/'val'/'test'", Location(str(path)))
    return data


def _root(yaml_path: Path, data: dict) -> Path:
    base = yaml_path.parent
    p = data.get("path")
    if p is None or p == "":
        return base
    if not isinstance(p, str):
        raise AnnotationError(f"expected a folder path, got {p!r}", Location(str(yaml_path), field="path"))
    stated = (base / p) if not os.path.isabs(p) else Path(p)
    # A downloaded dataset keeps the path of the machine it was made on (or Ultralytics' datasets
    # folder): when the stated folder does not exist here, the YAML's own folder is the root.
    return stated if stated.is_dir() else base


PIXEL_ORIGIN = "corner"  # (base.PIXEL_ORIGINS; the evidence: docs/formats/yolo.md)


@register
class YoloReader(Reader):
    name = "yolo"
    pixel_origin = PIXEL_ORIGIN
    expects = "a YOLO dataset folder or its data.yaml, with 'kpt_shape'"

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        y = _yaml_of(sources)
        return y is not None and _has_kpt_shape(y)

    @classmethod
    def default_images_root(cls, sources: Sequence[Path]) -> Path:
        y = _yaml_of(sources)
        if y is None:
            return super().default_images_root(sources)
        return _root(y, _load_yaml(y))

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        y = _yaml_of(sources)
        if y is None:
            shown = ", ".join(str(s) for s in sources)
            raise AnnotationError("expected one YOLO dataset folder (with data.yaml) or its data.yaml",
                                  Location(shown))
        data = _load_yaml(y)
        name = str(y)
        root = _root(y, data)
        k, ndim = _kpt_shape(data, name)
        names = _kpt_names(data, k, name, ctx.options.keypoints)
        flips = _flip_pairs(data, k, name)
        classes = _classes(data, name)
        keep_class = _category(ctx.options.category, classes, name)
        splits = []
        for split in SPLITS:
            entry = data.get(split)
            if entry is None or entry == "":
                continue
            entries = entry if isinstance(entry, list) else [entry]
            for e in entries:
                if not isinstance(e, str):
                    raise AnnotationError(f"expected a folder or .txt list path, got {e!r}", Location(name, field=split))
                p = Path(e) if os.path.isabs(e) else root / e
                if not p.exists():
                    raise AnnotationError(f"{p} does not exist", Location(name, field=split))
                splits.append((split, p))
        if not splits:
            raise AnnotationError("no 'train', 'val' or 'test' entry", Location(name))
        meta = DatasetMeta(keypoints=names, flip_pairs=flips, flip_pairs_given="flip_idx" in data)
        wanted = wanted_keypoints(ctx.options.keypoints, names, "keypoint names", Location(name, field="kpt_names"))
        extra = {"kpt_shape": [k, ndim], "splits": list(dict.fromkeys(s for s, _ in splits))}
        if data.get("path") and root == y.parent and not (y.parent / str(data["path"])).is_dir():
            extra["path_not_found"] = str(data["path"])  # stated root missing here: the YAML's folder was used
        if classes:
            extra["classes"] = classes
        several = keep_class is None and len(classes) > 1
        if several:
            ctx.report.add("several_categories", f"{len(classes)} classes read together: {', '.join(classes)}; "
                           "each record keeps its class in 'category' (choose one with --category)",
                           Location(name, field="names"))
        gen = _instances(splits, root, k, ndim, names, wanted, keep_class, ctx, classes if several else None)
        return ReadResult(meta, gen, [name], extra)


def _kpt_shape(data: dict, name: str) -> Tuple[int, int]:
    ks = data.get("kpt_shape")
    if (not isinstance(ks, list) or len(ks) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ks)
            or ks[0] < 1 or ks[1] not in (2, 3)):
        raise AnnotationError(f"expected [K, 2] or [K, 3] with K >= 1, got {ks!r}", Location(name, field="kpt_shape"))
    return ks[0], ks[1]


def _kpt_names(data: dict, k: int, name: str, given: Optional[List[str]]) -> List[str]:
    raw = data.get("kpt_names")
    if raw is None:
        if given is not None:
            if len(given) != k:
                raise AnnotationError(f"--keypoints names {len(given)} keypoint(s) but kpt_shape has {k} "
                                      "and there is no kpt_names to choose from", Location(name, field="kpt_shape"))
            return list(given)
        return [f"kp{i}" for i in range(k)]
    if isinstance(raw, dict):
        if not raw:
            raise AnnotationError("expected {class: [names]} or a list of names", Location(name, field="kpt_names"))
        raw = raw[sorted(raw, key=str)[0]]
    if (not isinstance(raw, list) or len(raw) != k or not all(isinstance(n, str) and n for n in raw)
            or len(set(raw)) != k):
        raise AnnotationError(f"expected {k} unique keypoint names (kpt_shape), got {raw!r}",
                              Location(name, field="kpt_names"))
    return list(raw)


def _flip_pairs(data: dict, k: int, name: str) -> List[Tuple[int, int]]:
    fi = data.get("flip_idx")
    if fi is None:
        return []
    if (not isinstance(fi, list) or sorted(fi) != list(range(k))
            or any(isinstance(j, bool) for j in fi) or any(fi[fi[i]] != i for i in range(k))):
        raise AnnotationError(f"expected a permutation of 0..{k - 1} that is its own inverse "
                              f"(keypoint i swaps with flip_idx[i]), got {fi!r}", Location(name, field="flip_idx"))
    return [(i, j) for i, j in enumerate(fi) if i < j]


def _classes(data: dict, name: str) -> List[str]:
    raw = data.get("names")
    if raw is None:
        return []
    if isinstance(raw, dict):
        try:
            return [str(raw[i]) for i in sorted(raw)]
        except TypeError:
            raise AnnotationError("expected class ids 0, 1, ... as keys", Location(name, field="names")) from None
    if isinstance(raw, list):
        return [str(n) for n in raw]
    raise AnnotationError(f"expected a list or mapping of class names, got {raw!r}", Location(name, field="names"))


def _category(category: Optional[str], classes: List[str], name: str) -> Optional[int]:
    if category is None:
        return None
    if category in classes:
        return classes.index(category)
    if category.isdigit():
        return int(category)
    raise AnnotationError(f"--category {category!r} is not a class name or id; classes: {', '.join(classes)}",
                          Location(name, field="names"))


def _list_images(split_path: Path, root: Path) -> Iterator[Tuple[Path, Optional[int]]]:
    """(image path, line of the .txt list or None for a folder's images)."""
    if split_path.is_dir():
        found = []
        for dirpath, dirnames, filenames in os.walk(split_path):
            dirnames.sort()
            for f in filenames:
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(Path(dirpath) / f)
        for p in sorted(found):
            yield p, None
        return
    with open(split_path, "r", encoding="utf-8-sig", errors="replace") as f:   # (bad bytes: a missing image)
        for lineno, line in enumerate(f, start=1):
            t = line.strip()
            if not t:
                continue
            if t.startswith("./"):
                yield split_path.parent / t[2:], lineno
            elif os.path.isabs(t):
                yield Path(t), lineno
            else:
                yield root / t, lineno


def label_path(image: Path) -> Path:
    """The Ultralytics rule: last ``/images/`` -> ``/labels/``, extension -> ``.txt``."""
    s = os.path.abspath(str(image))
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        head, tail = s.rsplit(sa, 1)
        s = head + sb + tail
    return Path(os.path.splitext(s)[0] + ".txt")


def _instances(splits, root: Path, k: int, ndim: int, names: List[str], wanted, keep_class,
               ctx: ReadContext, classes: Optional[List[str]] = None) -> Iterator[RawInstance]:
    """``classes``: set when several classes are read together (each record keeps its class)."""
    report = ctx.report
    base = os.path.abspath(str(root))
    seen = {}
    n_values = 5 + k * ndim
    for split, sp in splits:
        for img, listed in _list_images(sp, root):
            full = os.path.abspath(str(img))
            rel = os.path.relpath(full, base)
            if full in seen:
                if seen[full] != split:
                    where = Location(_shown(sp, base, root), listed) if listed else \
                        Location(_shown(img, base, root), field=split)
                    report.add("image_in_two_splits", f"image {rel} is listed in split {seen[full]!r} and "
                               f"again in {split!r}; keeping it in {seen[full]!r}", where)
                continue
            seen[full] = split
            lp = label_path(img)
            lname = _shown(lp, base, root)
            try:   # (bytes that are not UTF-8 become U+FFFD: a located "expected numbers" problem)
                f = open(lp, "r", encoding="utf-8-sig", errors="replace")
            except FileNotFoundError:     # (Ultralytics: a background image) counted, located
                report.add("no_label_file", f"image {rel} has no label file {os.path.relpath(str(lp), base)}: no "
                           "instance read from it (a background image to YOLO; kpconv's records are instances, so it "
                           "adds nothing)",
                           Location(_shown(img, base, root)))
                continue
            except OSError as e:
                raise AnnotationError(f"cannot read label file: {e.strerror}", Location(lname)) from None
            with f:
                for lineno, line in enumerate(f, start=1):
                    cells = line.split()
                    if not cells:
                        continue
                    loc = Location(lname, lineno)
                    if len(cells) != n_values:
                        report.add("malformed_record", f"expected {n_values} values (class, cx, cy, w, h and "
                                   f"{k} x {ndim} keypoint values), got {len(cells)}", loc)
                        continue
                    try:
                        vals = [float(c) for c in cells]
                    except ValueError:
                        bad = next(c for c in cells if not _is_float(c))
                        report.add("wrong_type", f"expected numbers, got {bad!r}", loc)
                        continue
                    cls = vals[0]
                    if not math.isfinite(cls) or cls != int(cls) or cls < 0:
                        report.add("wrong_type", f"expected a class id (integer >= 0), got {cells[0]!r}",
                                   loc.with_field("class"))
                        continue
                    if keep_class is not None and int(cls) != keep_class:
                        report.add("other_category", f"class {int(cls)} is not the chosen --category", loc)
                        continue
                    cx, cy, w, h = vals[1:5]
                    kps = {}
                    for i in range(k):
                        x, y = vals[5 + i * ndim], vals[6 + i * ndim]
                        v = vals[7 + i * ndim] if ndim == 3 else (0 if x == 0 and y == 0 else 2)
                        if math.isfinite(v) and v == int(v):
                            v = int(v)  # 2.0 -> 2; anything else is reported by ingest (bad_visibility)
                        if v == 0:
                            continue
                        if wanted is not None and names[i] not in wanted:
                            continue
                        kps[names[i]] = (x, y, v)
                    category = None
                    if classes is not None:
                        c = int(cls)
                        category = classes[c] if c < len(classes) else str(c)
                    yield RawInstance(image=rel, keypoints=kps, location=loc, bbox=(cx - w / 2, cy - h / 2, w, h),
                                      split=split, normalized=True, image_base=base, category=category)


def _shown(path: Path, base: str, root: Path) -> str:
    """``path`` as the user gave the dataset folder: relative stays relative (for messages)."""
    rel = os.path.relpath(str(path), base)
    if rel.startswith(".."):
        return str(path)
    return os.path.normpath(os.path.join(str(root), rel))


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
