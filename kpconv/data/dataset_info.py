"""``dataset_info.json``, the file ``kpconv shard`` writes last (docs/shard.md, *Output*): :class:`DatasetInfo`
validates it against ``schemas/dataset-info.schema.json``, gives the fields its readers need and serializes it;
errors are :class:`kpconv.errors.DatasetInfoError` located at the file and field. No TensorFlow here."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Dict, List, Optional, Tuple, Union

from . import jsonparse
from ..errors import DatasetInfoError, Location, VerifyError
from .records import SPEC_VERSION

INFO_FILE = "dataset_info.json"
SCHEMA_FILE = "dataset-info.schema.json"
MAX_INFO_BYTES = 64 << 20     # (a dataset of a million shards writes less)


@dataclass
class SplitInfo:
    name: str
    files: List[str]        # shard file names, relative to the shard directory
    num_records: int


@dataclass
class DatasetInfo:
    """What ``dataset_info.json`` says. ``raw`` is the whole validated JSON object."""

    path: Path                                  # the dataset_info.json file
    raw: dict = field(repr=False)
    splits: Dict[str, SplitInfo] = field(init=False)

    def __post_init__(self):
        self.splits = {name: SplitInfo(name, [e["file"] for e in s["shards"]], s["records"])
                       for name, s in self.raw["splits"].items()}

    # ------------------------------------------------------------------------------ read / write
    @classmethod
    def read(cls, shard_dir: Union[str, Path]) -> "DatasetInfo":
        """``SHARD_DIR/dataset_info.json``, validated. Raises DatasetInfoError (missing, bad JSON, schema)."""
        path = Path(shard_dir) / INFO_FILE
        if not path.is_file():
            raise DatasetInfoError(f"not found (is {shard_dir} a folder written by a finished 'kpconv shard'?)",
                                   Location(str(path)))
        if path.stat().st_size > MAX_INFO_BYTES:
            raise DatasetInfoError(f"{path.stat().st_size} bytes: more than any dataset_info.json kpconv writes "
                                   f"({MAX_INFO_BYTES})", Location(str(path)))
        try:
            raw = jsonparse.loads(path.read_bytes())
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetInfoError(f"cannot read: {e}", Location(str(path))) from None
        except ValueError as e:
            raise DatasetInfoError(f"invalid JSON: {e}", Location(str(path))) from None
        return cls.from_json(raw, path)

    @classmethod
    def from_json(cls, raw, path: Union[str, Path] = INFO_FILE) -> "DatasetInfo":
        """Validate ``raw`` against the schema and the record spec version; raises DatasetInfoError."""
        errors = sorted(_validator().iter_errors(raw), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            where = ".".join(str(p) for p in e.absolute_path) or None
            raise DatasetInfoError(f"{e.message} (schemas/{SCHEMA_FILE})", Location(str(path), field=where))
        if raw["spec_version"] != SPEC_VERSION:
            raise DatasetInfoError(f"record spec version {raw['spec_version']}, this kpconv reads version "
                                   f"{SPEC_VERSION}: write the shards again from the manifest (kpconv shard "
                                   f"MANIFEST -o NEW_DIR, with the options of before)",
                                   Location(str(path), field="spec_version"))
        _check_consistent(raw, str(path))
        return cls(Path(path), raw)

    def to_bytes(self) -> bytes:
        """The file's bytes: one key per line, lists of numbers and strings on one line, ``checksum`` last."""
        raw = {k: v for k, v in self.raw.items() if k != "checksum"}
        raw["checksum"] = checksum(raw)
        return (dump_json(raw) + "\n").encode("utf-8")

    def check_checksum(self) -> None:
        """DatasetInfoError when ``checksum`` is absent or does not match the rest of the file (it was edited)."""
        given = self.raw.get("checksum")
        if given is None:
            raise DatasetInfoError("no 'checksum': cannot tell whether the file was edited (write it with "
                                   "'kpconv shard' again)", Location(str(self.path), field="checksum"))
        if given != checksum(self.raw):
            raise DatasetInfoError("the file was edited after 'kpconv shard' wrote it (its checksum differs)",
                                   Location(str(self.path), field="checksum"))

    # ------------------------------------------------------------------------------ fields
    @property
    def keypoint_names(self) -> List[str]:
        return list(self.raw["keypoints"])

    @property
    def num_keypoints(self) -> int:
        return len(self.raw["keypoints"])

    @property
    def skeleton(self) -> List[Tuple[int, int]]:
        return [tuple(p) for p in self.raw.get("skeleton", [])]

    @property
    def flip_pairs(self) -> List[Tuple[int, int]]:
        return [tuple(p) for p in self.raw.get("flip_pairs", [])]

    @property
    def image_size(self) -> Optional[Tuple[int, int]]:
        """(width, height) of every stored image, or None when the shards keep each image's size."""
        size = self.raw["image"].get("size")
        return (size[0], size[1]) if size else None

    @property
    def image_width(self) -> Optional[int]:
        return self.image_size[0] if self.image_size else None

    @property
    def image_height(self) -> Optional[int]:
        return self.image_size[1] if self.image_size else None

    @property
    def max_instances(self) -> int:
        """The most instances one image of the shards holds (1 for single-instance data)."""
        return int((self.raw.get("instances") or {}).get("max_per_image", 1))

    @property
    def compression(self) -> Optional[str]:
        """None or ``"GZIP"`` (the ``compression_type`` of ``tf.data.TFRecordDataset``)."""
        return "GZIP" if self.raw.get("compression") == "gzip" else None

    @property
    def compression_name(self) -> str:
        """``"none"`` or ``"gzip"`` as written (kpconv's own readers)."""
        return self.raw.get("compression", "none")

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise DatasetInfoError(f"no split '{name}' (splits: {', '.join(sorted(self.splits)) or 'none'})",
                                   Location(str(self.path)))
        return self.splits[name]

    def files(self, name: str) -> List[str]:
        """Paths of the shard files of split ``name``."""
        return [str(self.path.parent / f) for f in self.split(name).files]

    def shards(self):
        """(split, shard entry) of every shard, in the file's order."""
        for split, s in self.raw["splits"].items():
            for entry in s["shards"]:
                yield split, entry

    def flip_permutation(self) -> List[int]:
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def preprocessing(self) -> dict:
        """The options shard used to make the stored images (``predict`` reapplies them)."""
        image = self.raw["image"]
        return {"size": list(self.image_size) if self.image_size else None, "resize": image.get("resize") or "stretch",
                "crop": image.get("crop") or "none", "crop_pad": image.get("crop_pad"),
                "background": image.get("background")}


def checksum(raw: dict) -> str:
    """``sha256:<hex>`` of ``raw`` without its ``checksum`` (JSON, sorted keys, no spaces)."""
    body = {k: v for k, v in raw.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_consistent(raw: dict, path: str) -> None:
    """What the schema cannot say: pairs within the keypoints, flip pairs disjoint, counts that add up,
    one visibility row per keypoint."""
    def fail(field: str, message: str):
        raise DatasetInfoError(message, Location(path, field=field))

    k = len(raw["keypoints"])
    for key in ("skeleton", "flip_pairs"):
        for i, pair in enumerate(raw.get(key, [])):
            if max(pair) >= k:
                fail(key, f"pair {pair} refers to keypoint {max(pair)}; there are {k}")
            if pair[0] == pair[1]:
                fail(key, f"pair {pair} joins a keypoint with itself")
    seen: Dict[int, int] = {}
    for i, pair in enumerate(raw.get("flip_pairs", [])):
        for kp in pair:
            if kp in seen:
                fail("flip_pairs", f"keypoint {kp} is in two flip pairs ({raw['flip_pairs'][seen[kp]]} and {pair})")
            seen[kp] = i
    total = 0
    for name, s in raw["splits"].items():
        in_shards = sum(e["records"] for e in s["shards"])
        if in_shards != s["records"]:
            fail(f"splits.{name}.records", f"{s['records']} record(s), but its shards hold {in_shards}")
        if "visibility" in s and len(s["visibility"]) != k:
            fail(f"splits.{name}.visibility", f"{len(s['visibility'])} row(s), expected one per keypoint ({k})")
        total += s["records"]
    if "records" in raw and raw["records"] != total:
        fail("records", f"{raw['records']} record(s), but the splits hold {total}")


def read_dataset_info(shard_dir: Union[str, Path], verify: bool = True, any_size: bool = False) -> DatasetInfo:
    """The dataset info of a shard directory for training and evaluation (one image size required unless
    ``any_size``: the heatmap head's pipeline, training and evaluation take frames of their own size), with
    every shard verified (:func:`verify_shards`) unless ``verify`` is False."""
    info = DatasetInfo.read(shard_dir)
    if info.image_size is None and not any_size:
        raise DatasetInfoError("the shards keep each image's own size (field 'image.size' is null); training "
                               "needs one image size: shard again with one (kpconv shard --image-size WxH)",
                               Location(str(info.path), field="image.size"))
    if verify:
        verify_shards(info)
    return info


_VERIFIED: Dict[Tuple[str, int, int, str], bool] = {}     # (path, size, mtime_ns, sha256 expected): checked


def verify_shards(info: DatasetInfo) -> None:
    """Check every shard's size and sha256 (or, written without them, its TFRecord CRCs) before TensorFlow reads
    it, so that a damaged shard is named, not a ``DataLossError`` deep inside TensorFlow; DatasetInfoError
    located at the file. A file is hashed once per process (keyed by its size and modification time)."""
    for split, entry in info.shards():
        path = info.path.parent / entry["file"]
        loc = Location(str(path))
        try:
            st = os.stat(path)
        except OSError as e:
            raise DatasetInfoError(f"shard file listed in {INFO_FILE} cannot be read: {e.strerror}", loc) from None
        key = (str(path), st.st_size, st.st_mtime_ns, entry.get("sha256") or "")
        if key in _VERIFIED:
            continue
        if "bytes" in entry and st.st_size != entry["bytes"]:
            raise DatasetInfoError(f"shard is {st.st_size} bytes, {INFO_FILE} says {entry['bytes']} (truncated or "
                                   "changed since 'kpconv shard' wrote it; 'kpconv inspect --verify' tells more)", loc)
        try:
            if entry.get("sha256"):
                if sha256_file(path) != entry["sha256"]:
                    raise DatasetInfoError(f"shard's sha256 differs from {INFO_FILE} (damaged or changed since "
                                           "'kpconv shard' wrote it; 'kpconv inspect --verify' tells more)", loc)
            else:
                from .tfrecord import read_records

                try:
                    count = sum(1 for _ in read_records(str(path), info.compression_name))
                except VerifyError as e:
                    raise DatasetInfoError(f"shard is damaged: {e.message}", Location(str(path), record=e.location.record)
                                           ) from None
                if count != entry["records"]:
                    raise DatasetInfoError(f"shard holds {count} record(s), {INFO_FILE} says {entry['records']}", loc)
        except OSError as e:
            raise DatasetInfoError(f"cannot read shard: {e.strerror}", loc) from None
        _VERIFIED[key] = True


def sha256_stream(f: IO[bytes]) -> Tuple[str, int]:
    """(hex sha256, size in bytes) of what is left to read in a binary stream."""
    h = hashlib.sha256()
    size = 0
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: Union[str, Path]) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)[0]


def dataset_sha256(shard_dir: Union[str, Path], info: Optional[DatasetInfo] = None) -> Dict[str, str]:
    """sha256 of ``dataset_info.json`` and of every shard file (relative name -> hex digest)."""
    info = info or DatasetInfo.read(shard_dir)
    names = [INFO_FILE] + [f for s in sorted(info.splits) for f in info.splits[s].files]
    return {n: sha256_file(Path(shard_dir) / n) for n in names}


@lru_cache(maxsize=1)
def _validator():
    import jsonschema
    from importlib.resources import files

    schema = json.loads(files("kpconv").joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def dump_json(obj, indent: int = 0) -> str:
    pad = "  " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {dump_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(obj, list) and any(isinstance(v, dict) for v in obj):
        items = [pad + dump_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))

