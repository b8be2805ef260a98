"""kpconv JSON / JSON Lines, kpconv's own annotation format (``schemas/kpconv-annotations.schema.json``): a
malformed header stops the ingest, an image entry off the schema is reported with its JSON path and skipped;
docs/formats/kpconv-json.md."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

from .. import jsonparse
from ...errors import AnnotationError, Location
from . import register
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult, head, opens_with, wanted_keypoints

VERSION = 1
SCHEMA = "kpconv-annotations.schema.json"
_MARK = b'"kpconv_annotations"'


@lru_cache(maxsize=None)
def schema() -> dict:
    """The annotation schema, loaded from the package data."""
    from importlib.resources import files

    return json.loads(files("kpconv").joinpath("schemas", SCHEMA).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def _validators():
    import jsonschema

    s = schema()
    header = dict(s)
    header["properties"] = {k: v for k, v in s["properties"].items() if k != "images"}
    image = dict(s["$defs"]["image"])
    image["$defs"] = s["$defs"]
    cls = jsonschema.Draft202012Validator
    return cls(header), cls(image)


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def schema_errors(validator, instance, prefix=()) -> List[Tuple[str, str, str]]:
    """(reason, JSON path, message) for each schema violation, in document order."""
    out = []
    for e in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        parts = list(prefix) + list(e.absolute_path)
        if e.validator == "required":
            missing = e.message.split("'")[1] if "'" in e.message else e.message
            parts.append(missing)
            out.append(("missing_field", _path(parts), "missing required field"))
            continue
        if e.validator == "additionalProperties":
            known = e.schema.get("properties", {})
            extras = ", ".join(repr(k) for k in e.instance if k not in known and not k.startswith("x-"))
            out.append(("wrong_type", _path(parts), f"unexpected field(s) {extras} "
                        "(extension fields must start with 'x-')"))
            continue
        expected = e.schema.get("x-expected") if isinstance(e.schema, dict) else None
        if expected is None and e.validator == "type":
            t = e.validator_value
            expected = " or ".join(t) if isinstance(t, list) else t
        if expected is not None:
            out.append(("wrong_type", _path(parts), f"expected {expected}, got {_short(e.instance)}"))
        else:
            out.append(("wrong_type", _path(parts), e.message))
    return out


_IMAGE_KEYS = {"file", "width", "height", "group", "split", "instances"}
_INSTANCE_KEYS = {"id", "bbox", "keypoints"}
_NUM = (int, float)


def _known(obj: dict, keys) -> bool:
    return all(k in keys or k.startswith("x-") for k in obj)


def _integral(v) -> bool:
    """A JSON Schema integer: an int, or a float without a fractional part (2.0)."""
    return type(v) is int or (type(v) is float and v.is_integer())


def quick_valid(img) -> bool:
    """True when ``img`` certainly follows ``$defs/image`` of the schema: a hand-written check about a
    hundred times faster than jsonschema. False sends the entry to jsonschema for the exact messages
    (a test keeps this function never more lenient than the schema)."""
    if type(img) is not dict or not _known(img, _IMAGE_KEYS):
        return False
    f = img.get("file")
    if type(f) is not str or not f:
        return False
    for k in ("width", "height"):
        if k in img and not (_integral(img[k]) and img[k] >= 1):
            return False
    for k in ("group", "split"):
        if k in img and img[k] is not None and type(img[k]) is not str:
            return False
    instances = img.get("instances")
    if type(instances) is not list:
        return False
    for inst in instances:
        if type(inst) is not dict or not _known(inst, _INSTANCE_KEYS):
            return False
        if "id" in inst and not (type(inst["id"]) is str or _integral(inst["id"])):
            return False
        if "bbox" in inst:
            b = inst["bbox"]
            if (type(b) is not list or len(b) != 4 or not all(type(c) in _NUM for c in b)
                    or not (b[2] > 0 and b[3] > 0)):
                return False
        kps = inst.get("keypoints")
        if type(kps) is not dict:
            return False
        for p in kps.values():
            if p is None:
                continue
            if (type(p) is not list or not 2 <= len(p) <= 3 or type(p[0]) not in _NUM
                    or type(p[1]) not in _NUM):
                return False
            if len(p) == 3 and (type(p[2]) not in _NUM or p[2] not in (0, 1, 2)):
                return False
    return True


def _is_kpconv(path: Path) -> bool:
    data = b"" if path.is_dir() else head(path, 4096)
    return opens_with(data, b"{") and _MARK in data


PIXEL_ORIGIN = "corner"  # kpconv's own: continuous, the top-left pixel's centre at (0.5, 0.5) (base.PIXEL_ORIGINS)


@register
class KpconvJsonReader(Reader):
    name = "kpconv-json"
    pixel_origin = PIXEL_ORIGIN
    expects = "a JSON (Lines) file whose first object has 'kpconv_annotations'"

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        return bool(sources) and all(_is_kpconv(s) for s in sources)

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        docs = [_open(s) for s in sources]
        first_header, first_name = docs[0][0], docs[0][2]
        for header, _, name in docs[1:]:
            for key in ("keypoints", "skeleton", "flip_pairs"):
                if header.get(key, []) != first_header.get(key, []):
                    raise AnnotationError(f"differs from {first_name}: every file must state the same keypoints, "
                                          "skeleton and flip_pairs", Location(name, field=key))
        names = list(first_header["keypoints"])
        index = {n: i for i, n in enumerate(names)}
        pairs = {}
        for key in ("skeleton", "flip_pairs"):
            out = []
            for i, (a, b) in enumerate(first_header.get(key, [])):
                missing = [n for n in (a, b) if n not in index]
                if missing:
                    raise AnnotationError(f"{key}[{i}]: {', '.join(repr(n) for n in missing)} not in 'keypoints'",
                                          Location(first_name, field=key))
                out.append((index[a], index[b]))
            pairs[key] = out
        meta = DatasetMeta(keypoints=names, skeleton=pairs["skeleton"], flip_pairs=pairs["flip_pairs"],
                           flip_pairs_given="flip_pairs" in first_header)
        keep = wanted_keypoints(ctx.options.keypoints, names, "keypoints", Location(first_name, field="keypoints"))
        dropped = set() if keep is None else set(names) - keep
        extra = {"version": first_header["kpconv_annotations"]}
        return ReadResult(meta, _instances(docs, ctx, dropped), [name for _, _, name in docs], extra)


def _open(path: Path):
    """(header dict, iterator of (image object, line or None, path prefix), file name)."""
    name = str(path)
    header_v, image_v = _validators()
    try:
        f = open(path, "r", encoding="utf-8-sig")
    except OSError as e:
        raise AnnotationError(f"cannot open: {e.strerror}", Location(name)) from None
    with f:
        try:
            first = f.readline()
            try:
                obj = jsonparse.loads(first)
                parsed = True
            except json.JSONDecodeError:
                obj, parsed = None, False
            lines_mode = parsed and isinstance(obj, dict) and "images" not in obj
            if lines_mode:
                header = obj
            elif parsed and not f.read(1 << 16).strip():  # a one-line document, already parsed
                header = obj
            else:
                f.seek(0)
                text = f.read()
                try:
                    header = jsonparse.loads(text)
                except json.JSONDecodeError as e:
                    raise AnnotationError(f"invalid JSON: {e.msg} (column {e.colno})",
                                          Location(name, e.lineno)) from None
        except UnicodeDecodeError as e:
            raise AnnotationError(f"not a UTF-8 text file ({e.reason})", Location(name)) from None
    if not isinstance(header, dict):
        raise AnnotationError("expected a JSON object with 'kpconv_annotations'", Location(name, 1))
    images = header.pop("images", None) if not lines_mode else None
    errors = schema_errors(header_v, header)
    if errors:
        _, where, msg = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise AnnotationError(f"{where}: {msg}{more}", Location(name, 1 if lines_mode else None))
    if lines_mode:
        return header, _lines(path, name), name
    if images is None:
        images = []
    if not isinstance(images, list):
        raise AnnotationError(f"images: expected a list of image objects, got {_short(images)}", Location(name))
    return header, ((img, None, ("images", i)) for i, img in enumerate(images)), name


class _BadLine:
    def __init__(self, message: str):
        self.message = message


def _lines(path: Path, name: str):
    with open(path, "r", encoding="utf-8-sig") as f:
        f.readline()
        for lineno, line in enumerate(f, start=2):
            if not line.strip():
                continue
            try:
                obj = jsonparse.loads(line)
            except json.JSONDecodeError as e:
                yield _BadLine(f"invalid JSON: {e.msg} (column {e.colno})"), lineno, ()
                continue
            yield obj, lineno, ()


def _instances(docs, ctx: ReadContext, dropped) -> Iterator[RawInstance]:
    report = ctx.report
    _, image_v = _validators()
    for _, entries, name in docs:
        for img, line, prefix in entries:
            if isinstance(img, _BadLine):  # a JSON Lines line that is not JSON
                report.add("malformed_record", img.message, Location(name, line))
                continue
            errors = [] if quick_valid(img) else schema_errors(image_v, img, prefix)
            if errors:
                for reason, where, msg in errors:
                    report.add(reason, msg, Location(name, line, record=where or None))
                continue
            size = (int(img["width"]), int(img["height"])) if "width" in img and "height" in img else None
            for j, inst in enumerate(img["instances"]):
                record = _path(list(prefix) + ["instances", j])
                loc = Location(name, line, record=record)
                kps = {}
                for kname, p in inst["keypoints"].items():
                    if p is None or kname in dropped:
                        continue
                    v = int(p[2]) if len(p) == 3 else 2
                    kps[kname] = (p[0], p[1], v)
                iid = inst.get("id")
                yield RawInstance(image=img["file"], keypoints=kps, location=loc,
                                  instance=None if iid is None else str(iid if type(iid) is str else int(iid)),
                                  bbox=tuple(inst["bbox"]) if "bbox" in inst else None, size=size,
                                  group=img.get("group"), split=img.get("split"))
