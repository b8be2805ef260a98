"""COCO keypoints JSON (``person_keypoints_*.json``), one file or several (train + val); each file parsed once.
What is read and how real datasets bend COCO: docs/formats/coco.md."""
from __future__ import annotations

import re
from collections import Counter
from itertools import compress
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .. import jsonparse
from ...errors import AnnotationError, Location
from . import register
from .base import DatasetMeta, DenseRows, RawInstance, ReadContext, ReadResult, Reader, head, load_json, opens_with, \
    wanted_keypoints

# Files up to this size are parsed completely by detect(); larger ones are scanned for the keys.
_DETECT_PARSE_LIMIT = 4 << 20
_SPLIT_TOKENS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "minival": "val",
                 "test": "test"}


def split_from_name(path: Path) -> Optional[str]:
    """``person_keypoints_train2017.json`` -> ``train``; ``val.json`` -> ``val``; no token -> None."""
    for token in re.split(r"[^a-z]+", path.stem.lower()):
        if token in _SPLIT_TOKENS:
            return _SPLIT_TOKENS[token]
    return None


def _is_coco_doc(doc) -> bool:
    """A COCO object with keypoints: named by a category, or only in the annotations (face sets)."""
    return (isinstance(doc, dict) and isinstance(doc.get("annotations"), list)
            and isinstance(doc.get("categories"), list)
            and (any(isinstance(c, dict) and isinstance(c.get("keypoints"), list) for c in doc["categories"])
                 or any(isinstance(a, dict) and isinstance(a.get("keypoints"), list) and a["keypoints"]
                        for a in doc["annotations"])))


def _scan_for_keys(path: Path) -> bool:
    """Cheap check of a big file: a JSON object whose text holds the three COCO keys."""
    wanted = {b'"annotations"', b'"categories"', b'"keypoints"'}
    tail = b""
    with open(path, "rb") as f:
        chunk = f.read(1 << 22)
        while chunk and wanted:
            buf = tail + chunk
            wanted = {k for k in wanted if k not in buf}
            tail = buf[-32:]
            chunk = f.read(1 << 22)
    return not wanted


def _looks_like_coco(path: Path) -> bool:
    """By content, whatever the extension (a COCO file named ``.txt`` is one too)."""
    if not path.is_file() or not opens_with(head(path, 4096), b"{"):
        return False
    try:
        if path.stat().st_size > _DETECT_PARSE_LIMIT:
            return _scan_for_keys(path)
        return _is_coco_doc(jsonparse.loads(path.read_bytes()))
    except (OSError, ValueError):  # unreadable or not JSON (ValueError covers JSONDecodeError/Unicode)
        return False


def _load(path: Path) -> dict:
    """The file's object, checked to have COCO's three lists."""
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise AnnotationError(f"expected a JSON object with 'images', 'annotations' and 'categories', "
                              f"got {type(doc).__name__}", Location(str(path)))
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise AnnotationError("missing top-level field of a COCO file", Location(str(path), field=key))
        if not isinstance(doc[key], list):
            raise AnnotationError(f"expected a list, got {type(doc[key]).__name__}",
                                  Location(str(path), field=key))
    return doc


def _describe(cat: dict) -> str:
    return f"{cat.get('id')!r} ({cat.get('name')!r})"


def _named(c) -> bool:
    return isinstance(c, dict) and isinstance(c.get("keypoints"), list) and bool(c["keypoints"]) \
        and all(isinstance(n, str) for n in c["keypoints"])     # (names: anything else is not a name list)


def _choose_categories(path: Path, doc: dict, wanted: Optional[str]) -> List[dict]:
    """The categories to read: the one ``--category`` names, else every category with keypoint
    names when they all have the same names, else (no names anywhere) every category that
    annotations with keypoints refer to."""
    cats = [c for c in doc["categories"] if _named(c)]
    if wanted is not None:
        hits = [c for c in doc["categories"] if isinstance(c, dict)
                and (str(c.get("name")) == wanted or str(c.get("id")) == wanted)]
        if not hits:
            raise AnnotationError(f"--category {wanted!r}: no category with that name or id; categories with "
                                  f"keypoints: {', '.join(map(_describe, cats)) or 'none'}",
                                  Location(str(path), field="categories"))
        cat = hits[0]
        if not _named(cat) and cats:
            raise AnnotationError(f"--category {wanted!r}: category {_describe(cat)} has no keypoints",
                                  Location(str(path), field="categories"))
        return [cat]
    if not cats:
        used = {a.get("category_id") for a in doc["annotations"]
                if isinstance(a, dict) and isinstance(a.get("keypoints"), list) and a["keypoints"]}
        cats = [c for c in doc["categories"] if isinstance(c, dict) and _hashable(c.get("id")) in used]
        if not cats:
            raise AnnotationError("no category has keypoints (expected categories[].keypoints, a list of names, "
                                  "or annotations with keypoints)", Location(str(path), field="categories"))
        return cats
    kinds = list(dict.fromkeys(tuple(c["keypoints"]) for c in cats))
    if len(kinds) > 1:
        loc = Location(str(path), field="categories")
        if len(kinds) == len(cats):
            raise AnnotationError(f"several categories have keypoints: {', '.join(map(_describe, cats))}; "
                                  "choose one with --category NAME|ID", loc)
        groups = "; ".join(", ".join(_describe(c) for c in cats if tuple(c["keypoints"]) == kind)
                           + f" ({len(kind)} keypoints)" for kind in kinds)
        raise AnnotationError(f"categories have different keypoint lists: {groups}; choose one with "
                              "--category NAME|ID", loc)
    return cats


def _hashable(v):
    try:
        hash(v)
        return v
    except TypeError:
        return None


def _generated_names(path: Path, doc: dict, ids: set) -> List[str]:
    """``kp0..kp{K-1}``, K the most common keypoint count of the chosen categories' annotations."""
    counts: Counter = Counter()
    for a in doc["annotations"]:
        if isinstance(a, dict) and _hashable(a.get("category_id")) in ids:
            kp = a.get("keypoints")
            if isinstance(kp, list) and kp:
                counts[len(kp) if isinstance(kp[0], list) else len(kp) // 3] += 1
    if not counts or counts.most_common(1)[0][0] == 0:
        raise AnnotationError("no keypoint names and no annotation with keypoints to count them from; "
                              "give the names with --keypoints", Location(str(path), field="categories"))
    return [f"kp{i}" for i in range(counts.most_common(1)[0][0])]


def _category_meta(path: Path, cat: dict, k: int, report) -> Tuple[Optional[List[str]], List[Tuple[int, int]]]:
    """The category's keypoint names (None when it has none) and its skeleton, 0-based. A skeleton
    is drawing metadata: 0-based is recognised (a note), bad edges are dropped (a warning)."""
    loc = Location(str(path), record=f"category {cat.get('id')}")
    names = cat.get("keypoints") if _named(cat) else None
    if names is not None:
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise AnnotationError(f"expected a list of unique keypoint names, got {names!r}",
                                  loc.with_field("keypoints"))
        k = len(names)
    skeleton = cat.get("skeleton") or []
    if not isinstance(skeleton, list):
        report.add("bad_skeleton", f"expected a list of [i, j] pairs, got {skeleton!r}; skeleton ignored",
                   loc.with_field("skeleton"))
        return names, []
    edges = [p for p in skeleton if isinstance(p, list) and len(p) == 2
             and all(isinstance(i, int) and not isinstance(i, bool) for i in p)]
    flat = [i for p in edges for i in p]
    base = 1
    if 0 in flat and k not in flat:
        base = 0
        report.add("skeleton_0_based", f"skeleton {skeleton!r} is 0-based (has 0, no {k}); read as such",
                   loc.with_field("skeleton"))
    pairs, bad = [], []
    for p in skeleton:
        if p in edges and all(base <= i < k + base for i in p):
            pairs.append((p[0] - base, p[1] - base))
        else:
            bad.append(p)
    if bad:
        report.add("bad_skeleton", f"dropped skeleton edge(s) {', '.join(map(repr, bad))}: expected "
                   f"[i, j] with {base} <= i, j <= {k - 1 + base}", loc.with_field("skeleton"))
    return (list(names) if names is not None else None), pairs


def _flatten(kp: list, k: int):
    """Nested ``[[x, y, v], ...]`` or ``[[x, y], ...]`` (x = y = 0: not labelled) -> the flat list,
    or a string saying what is wrong."""
    if len(kp) != k:
        return f"a nested list of {len(kp)} points"
    out = []
    for p in kp:
        if type(p) is not list or len(p) not in (2, 3):
            return f"a point {p!r}"
        if len(p) == 2:
            out += [p[0], p[1], 0 if p[0] == 0 and p[1] == 0 else 2]
        else:
            out += p
    return out


_NUMBER_TYPES = frozenset((int, float))  # exact types: bool is not a number here
_ROWS = 4096      # annotations per DenseRows block at most


PIXEL_ORIGIN = "center"  # (base.PIXEL_ORIGINS; the evidence: docs/formats/coco.md)


@register
class CocoReader(Reader):
    name = "coco"
    pixel_origin = PIXEL_ORIGIN
    expects = ("a JSON object with 'annotations' and 'categories' lists, and keypoints (categories[].keypoints "
               "or annotations[].keypoints)")

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        return bool(sources) and all(_looks_like_coco(Path(s)) for s in sources)

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        files = []
        for s in sources:
            s = Path(s)
            if s.is_dir():
                found = sorted(p for p in s.glob("*.json") if _looks_like_coco(p))
                if not found:
                    raise AnnotationError("no COCO keypoints JSON file in this folder", Location(str(s)))
                files.extend(found)
            else:
                files.append(s)
        loaded = []
        names: Optional[List[str]] = None
        skeleton: List[Tuple[int, int]] = []
        first_file = None
        generated = False
        wanted = ctx.options.keypoints
        for path in files:
            doc = _load(path)
            cats = _choose_categories(path, doc, ctx.options.category)
            ids = {_hashable(c.get("id")) for c in cats}
            cat_names = cats[0]["keypoints"] if _named(cats[0]) else None
            if cat_names is None:
                cat_names = _generated_names(path, doc, ids)
                if wanted and len(wanted) == len(cat_names) and not set(wanted) <= set(cat_names):
                    cat_names = list(wanted)     # --keypoints names every point
                elif names is None:
                    generated = True
                    ctx.report.add("generated_names", f"no keypoint names in the categories; named "
                                   f"{cat_names[0]}..{cat_names[-1]} from the annotations' {len(cat_names)} "
                                   "points (name them with --keypoints)", Location(str(path), field="categories"))
            if names is None:
                _, skeleton = _category_meta(path, cats[0], len(cat_names), ctx.report)
                names, first_file = list(cat_names), path
            elif list(cat_names) != names:
                raise AnnotationError(f"keypoint names differ between {first_file} ({', '.join(names)}) and "
                                      f"{path} ({', '.join(cat_names)}); files read together must share them",
                                      Location(str(path), field="categories"))
            by_id = {_hashable(c.get("id")): str(c.get("name", c.get("id"))) for c in cats} if len(cats) > 1 else None
            if by_id:
                ctx.report.add("several_categories", f"{len(cats)} categories with the same keypoints read "
                               f"together: {', '.join(map(_describe, cats))}; each record keeps its 'category' "
                               "(choose one with --category)", Location(str(path), field="categories"))
            loaded.append((path, doc, ids, by_id))
        assert names is not None
        keep = wanted_keypoints(wanted, names, "COCO keypoint names", Location(str(files[0]), field="keypoints"))
        slots = [n if keep is None or n in keep else None for n in names]  # None: not read
        meta = DatasetMeta(keypoints=names, skeleton=skeleton)
        extra = {"category": _category_name(loaded)}
        if generated:
            extra["generated_names"] = True
        return ReadResult(meta, self._instances(loaded, len(names), slots, ctx, not wanted or names == list(wanted)),
                          source_files=[str(p) for p in files], extra=extra)

    def _instances(self, loaded, k: int, slots, ctx: ReadContext, dense: bool
                   ) -> Iterator[Union[RawInstance, DenseRows]]:
        """``dense``: names and order are the file's (no --keypoints subset or order): blocks of
        :class:`DenseRows` (at most ``_ROWS`` each), else a RawInstance per annotation."""
        report = ctx.report
        n3 = 3 * k
        every = None not in slots  # all keypoints read (no --keypoints subset)
        in_split: Dict[str, Tuple[Optional[str], str]] = {}    # file_name -> (split, file) first annotated in
        seen_content = set()    # (file_name, category, keypoints): an annotation given twice
        for path, doc, cat_ids, by_id in loaded:
            shown_ids = ", ".join(map(repr, sorted(cat_ids, key=str)))
            one, only = len(cat_ids) == 1, next(iter(cat_ids))     # one category: a plain comparison (hot)
            file = str(path)
            split = split_from_name(path)
            images = self._images(file, doc["images"], report)
            seen_ids = set()
            rows = []       # a block's rows: (record, image, size, keypoints, bbox, category)
            anns = doc["annotations"]
            for i, ann in enumerate(anns):
                if not isinstance(ann, dict):
                    report.add("malformed_record", f"expected an annotation object, got {type(ann).__name__}",
                               Location(file, record=f"annotations[{i}]"))
                    continue
                aid = ann.get("id")
                rec = str(aid) if aid is not None else f"annotations[{i}]"
                if aid is not None and _hashable(aid) is not None:
                    if aid in seen_ids:
                        report.add("duplicate_annotation", f"annotation id {aid!r} is given twice; keeping the "
                                   "first", Location(file, None, f"annotations[{i}]", "id"))
                        continue
                    seen_ids.add(aid)
                if "category_id" not in ann:
                    report.add("missing_field", "annotation has no category_id", Location(file, None, rec, "category_id"))
                    continue
                cid = ann["category_id"]
                if (cid != only) if one else (_hashable(cid) not in cat_ids):
                    report.add("other_category", f"category_id {ann.get('category_id')!r} is not the chosen "
                               f"category {shown_ids}", Location(file, None, rec, "category_id"))
                    continue
                if ann.get("iscrowd"):
                    report.add("crowd", "iscrowd=1 annotation skipped", Location(file, None, rec, "iscrowd"))
                    continue
                if "image_id" not in ann:
                    report.add("missing_field", "annotation has no image_id", Location(file, None, rec, "image_id"))
                    continue
                image_id = ann["image_id"]
                try:
                    image = images.get(image_id, False)
                except TypeError:  # unhashable (a list, an object)
                    image = False
                if not image:
                    why = "is not in images[]" if image is False else "refers to an invalid images[] entry"
                    report.add("malformed_record", f"image_id {image_id!r} {why}", Location(file, None, rec, "image_id"))
                    continue
                kp = ann.get("keypoints")
                if kp is None:
                    report.add("missing_field", "annotation has no keypoints", Location(file, None, rec, "keypoints"))
                    continue
                if type(kp) is list and kp and type(kp[0]) is list:     # nested [[x, y, v], ...]
                    flat = _flatten(kp, k)
                    if flat.__class__ is str:
                        report.add("wrong_type", f"expected {k} points [[x, y, v], ...] or [[x, y], ...], got "
                                   f"{flat}", Location(file, None, rec, "keypoints"))
                        continue
                    kp = flat
                if (type(kp) is not list or len(kp) != n3
                        or not set(map(type, kp)) <= _NUMBER_TYPES):
                    got = f"a list of {len(kp)}" if isinstance(kp, list) else type(kp).__name__
                    if isinstance(kp, list) and len(kp) == n3:
                        bad = next(x for x in kp if type(x) not in _NUMBER_TYPES)
                        got = f"a non-number {bad!r}"
                    report.add("wrong_type", f"expected a flat list of {n3} numbers [x, y, v] * {k}, got {got}",
                               Location(file, None, rec, "keypoints"))
                    continue
                first_split, first_file = in_split.setdefault(image[0], (split, file))
                if first_split != split:
                    report.add("image_in_two_splits", f"image {image[0]} is in split {first_split!r} ({first_file}) "
                               f"and again in {split!r}; keeping it in {first_split!r}: this annotation is skipped",
                               Location(file, None, rec, "image_id"))
                    continue
                key = (image[0], _hashable(cid), tuple(kp))
                if key in seen_content and any(kp[2::3]):   # (no keypoint labelled: not a duplicate)
                    report.add("duplicate_annotation", f"the same keypoints on image {image[0]} as an earlier "
                               "annotation; keeping the first", Location(file, None, rec, "keypoints"))
                    continue
                seen_content.add(key)
                # v = 0: not labelled; any other v (also a bad one) goes on to ingest, which checks it.
                category = by_id[cid] if by_id else None
                if dense:   # all keypoints in the reader's order: the flat list as it is
                    rows.append((rec, image[0], image[1], kp, ann.get("bbox"), category))
                    if len(rows) == _ROWS:
                        yield DenseRows(file, *map(list, zip(*rows)), split)
                        rows = []
                    continue
                # (dict/compress/zip run in C: this is the per-annotation hot spot)
                vs = kp[2::3]
                points = dict(compress(zip(slots, zip(kp[0::3], kp[1::3], vs)),
                                       vs if every else [v and n is not None for n, v in zip(slots, vs)]))
                yield RawInstance(image[0], points, Location(file, record=rec), bbox=ann.get("bbox"),
                                  size=image[1], split=split, category=category)
            if rows:
                yield DenseRows(file, *map(list, zip(*rows)), split)

    @staticmethod
    def _images(file: str, entries: list, report) -> Dict[object, Optional[Tuple[str, Optional[Tuple[int, int]]]]]:
        """image id -> (file_name, stated (width, height) or None), or None for an entry that is
        reported as bad (its annotations are then skipped too)."""
        images = {}
        for i, im in enumerate(entries):
            def at(field=None):     # (made only for a problem)
                rec = f"image {im.get('id')}" if isinstance(im, dict) and "id" in im else f"images[{i}]"
                return Location(file, record=rec, field=field)
            if not isinstance(im, dict):
                report.add("malformed_record", f"expected an image object, got {type(im).__name__}", at())
                continue
            for key in ("id", "file_name"):
                if key not in im:
                    report.add("missing_field", "image entry lacks a required field", at(key))
                    break
            else:
                name = im["file_name"]
                if not isinstance(name, str) or not name:
                    report.add("wrong_type", f"expected a file name, got {name!r}", at("file_name"))
                    _mark_bad(images, im["id"])
                    continue
                w, h = im.get("width"), im.get("height")
                size = None
                if w is not None or h is not None:
                    if not (w.__class__ is int and h.__class__ is int and w > 0 and h > 0):   # (bool: no)
                        report.add("wrong_type", f"expected positive integer width and height, got {w!r} x {h!r}",
                                   at("width"))
                        _mark_bad(images, im["id"])
                        continue
                    size = (w, h)
                try:
                    before = images.get(im["id"], False)
                    if before is False or before == (name, size):   # (the same entry twice: no choice to make)
                        images[im["id"]] = (name, size)
                    else:
                        shown = before[0] if before else "an entry reported above"
                        report.add("duplicate_image_id", f"image id {im['id']!r} is given twice in images[] "
                                   f"({shown!r} and {name!r}); its annotations are skipped: they could belong to "
                                   "either", at("id"))
                        images[im["id"]] = None
                except TypeError:
                    report.add("wrong_type", f"expected a number or string id, got {im['id']!r}", at("id"))
        return images


def _mark_bad(images: dict, image_id) -> None:
    try:
        images[image_id] = None
    except TypeError:  # an unhashable id cannot be referred to anyway
        pass


def _category_name(loaded):
    """The name of the category read, or the list of names when several were read together."""
    path, doc, cat_ids, by_id = loaded[0]
    if by_id:
        return list(by_id.values())
    for c in doc["categories"]:
        if isinstance(c, dict) and _hashable(c.get("id")) in cat_ids:
            return c.get("name")
    return None
