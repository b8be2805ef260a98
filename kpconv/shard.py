"""``kpconv shard``: manifest -> deterministic TFRecord shards, planned first, then written in parallel.

1. **Scan** the manifest once (a file, or stdin spooled to ``OUT_DIR/.kpconv-shard/``): for each record
   keep only its byte offset, a digest of its line, its split and its order key, never its image.
2. **Plan** (frozen before any shard is touched): the split of a record is the source's split, or,
   with ``--split`` (or when the source gives none), decided by a salted hash of its group (the
   manifest's ``group``, else its image) so that all instances of an image / frames of a video share
   one split. Within a split, records are ordered by a salted hash of their key (``image#instance``);
   the split is cut into ``S`` shards of ``round(i * n / S)`` boundaries.
3. **Write**: each shard is one task, written whole by one worker process (``fork`` while TensorFlow
   is not loaded in the parent, which the CLI never does; ``forkserver`` otherwise, as TF is not
   fork-safe) under a hidden temporary name, fsynced
   and renamed; just before the rename, a small state file ``.kpconv-shard/<shard>.json`` records its
   fingerprint (options + the manifest lines of its records), sha256, counts and skipped records.
4. **Finish**: ``skipped.jsonl`` then ``dataset_info.json`` (last, atomically).

The bytes of every shard depend only on the manifest and the options (not on ``--workers``, timing or
the run), so ``--resume`` keeps a shard whose state file matches its fingerprint and sha256 and
rewrites the others.

Runners: the plan, the record conversion (:func:`write_shard`), the resume check and :func:`_finish` are
shared; only the execution of the shard tasks differs: in this process or a process pool (``shard()``),
or an Apache Beam pipeline (:mod:`kpconv.beam_runner`, which passes its own ``execute`` and a
:class:`LocalFiles` subclass that reads and writes ``gs://``, ``s3://``... through Beam's FileSystems).
All file access goes through a ``files`` object (:class:`LocalFiles` here) for that reason.

Test hook: ``KPCONV_TEST_KILL_AFTER_RECORDS=N`` makes the writing process kill itself (SIGKILL) after
writing N records, to test interrupted runs.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__, jsonparse
from .dataset_info import INFO_FILE, DatasetInfo, sha256_stream
from .errors import Location, ManifestError, NothingToWrite, ShardError
from .images import (BadImage, ImageOptions, SourceImage, layout, map_bbox, map_keypoints, passthrough_size,
                     read_image_bytes, render)
from .manifest import Header, Record, atomic_output
from .progress import progress
from .records import SPEC_VERSION, to_example

DEFAULT_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
DEFAULT_SHARD_SIZE = 64_000_000  # "64MB"
STATE_DIR = ".kpconv-shard"
SKIPPED_FILE = "skipped.jsonl"
SPLIT_ORDER = ("train", "val", "test")
JPEG_BYTES_PER_PIXEL = 0.5  # shard-size estimate for re-encoded images (JPEG ~4 bits per pixel)
# Without --shard-size/--num-shards, a split of n records gets at least min(MIN_SHARDS, n // MIN_RECORDS_PER_SHARD)
# shards, so that writers work in parallel and readers can interleave files even when the split is
# smaller than one 64 MB shard. (Never a function of --workers: the output must not depend on it.)
MIN_SHARDS = 8
MIN_RECORDS_PER_SHARD = 100


@dataclass(frozen=True)
class ShardOptions:
    image: ImageOptions = field(default_factory=ImageOptions)
    split: Optional[Dict[str, float]] = None   # None: the source's split, else DEFAULT_SPLIT
    shard_size: Optional[int] = None           # bytes aimed at per shard; None: DEFAULT_SHARD_SIZE and
                                               # at least MIN_SHARDS shards for big splits (see plan)
    num_shards: Optional[int] = None           # shards per split
    workers: int = 0                           # 0: number of CPUs
    seed: int = 0
    compression: str = "none"                  # "none" or "gzip"
    overwrite: bool = False
    resume: bool = False


@dataclass
class ShardResult:
    out_dir: Path
    info: dict
    written: int = 0            # records in the dataset
    skipped: int = 0
    kept_shards: int = 0        # shards kept by --resume
    written_shards: int = 0


def split_of(group: str, fractions: Dict[str, float], seed: int) -> str:
    """The split of a group: a salted hash mapped onto the cumulative fractions (in the given order)."""
    u = int.from_bytes(hashlib.sha256(f"kpconv-split\0{seed}\0{group}".encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    total = sum(fractions.values())
    acc = 0.0
    last = None
    for name, frac in fractions.items():
        if frac <= 0:
            continue
        acc += frac / total
        last = name
        if u < acc:
            return name
    return last


def order_key(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"kpconv-order\0{seed}\0{key}".encode("utf-8")).digest()[:8]


def shard_name(split: str, index: int, count: int, compression: str) -> str:
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}" + (".gz" if compression == "gzip" else "")


# ---------------------------------------------------------------------------------- option parsing
def parse_image_size(text: str) -> Optional[Tuple[int, int]]:
    """``224`` -> (224, 224), ``320x240`` -> (320, 240) (width x height), ``none`` -> None."""
    t = text.strip().lower()
    if t == "none":
        return None
    parts = t.split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v <= 65535 for v in values):
        raise ValueError(f"expected a size like 224 or 320x240 (width x height) or 'none', got {text!r}")
    return (values[0], values[-1])


def parse_split(text: str) -> Dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` -> {"train": 0.8, ...} (fractions >= 0 that sum to 1)."""
    out: Dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not _safe_name(name) or not 0 <= frac <= 1 or name in out:
            raise ValueError(f"expected name=fraction pairs like 'train=0.8,val=0.1,test=0.1' "
                             f"(names of letters, digits, '_' or '-', each once), got {item!r}")
        out[name] = frac
    total = sum(out.values())
    if abs(total - 1) > 1e-6:
        raise ValueError(f"the split fractions must sum to 1, got {total:g}")
    return out


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def parse_bytes(text: str) -> int:
    """``64MB`` -> 64000000, ``1GiB`` -> 1073741824, ``500000`` -> 500000."""
    t = text.strip().lower()
    i = len(t)
    while i and t[i - 1].isalpha():
        i -= 1
    try:
        value = float(t[:i]) * _UNITS[t[i:]]
    except (ValueError, KeyError):
        value = 0
    if not value >= 1:
        raise ValueError(f"expected a size like 64MB, 500KB or 1GiB, got {text!r}")
    return int(value)


# ------------------------------------------------------------------------------------------ files
_URL = re.compile(r"^[A-Za-z][-A-Za-z0-9+.]*://")


def _plain(path: str) -> bool:
    """A POSIX path that pathlib keeps as it is: no empty or '.' component, no trailing '/'."""
    return (os.sep == "/" and bool(path) and not path.endswith(("/", "/.")) and "//" not in path[1:]
            and "/./" not in path and not path.startswith(("./", "//")) and path != ".")


def is_url(path) -> bool:
    """``gs://b/x``, ``s3://b/x``, ``hdfs://x``...: a path for a filesystem other than the local one."""
    return bool(_URL.match(str(path)))


class LocalFiles:
    """Every file operation of ``kpconv shard``, on the local filesystem (fsync, atomic renames).

    :class:`kpconv.beam_runner.BeamFiles` overrides these for paths with a scheme (``gs://``...)."""

    def join(self, base: str, *parts: str) -> str:
        if is_url(base):
            return "/".join([base.rstrip("/"), *parts])
        if len(parts) == 1 and _plain(base) and _plain(parts[0]) and not parts[0].startswith("/"):
            return base + "/" + parts[0] if base != "/" else "/" + parts[0]   # what Path gives, cheaper
        return str(Path(base, *parts))

    def dirname(self, path: str) -> str:
        """The absolute directory of a file."""
        if is_url(path):
            return path.rsplit("/", 1)[0]
        return str(Path(path).resolve().parent)

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def open_read(self, path: str) -> IO[bytes]:
        return open(path, "rb")

    def open_image(self, path: str) -> IO[bytes]:
        """SourceImage's opener (FileNotFoundError / IsADirectoryError / OSError); unbuffered, as an image
        is read whole (one read of its size instead of chunks through a buffer)."""
        return open(path, "rb", buffering=0)

    def create(self, path: str) -> IO[bytes]:
        return open(path, "wb")

    def sync(self, f) -> None:
        f.flush()
        os.fsync(f.fileno())

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def delete_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def size(self, path: str) -> int:
        """Raises OSError."""
        return os.stat(path).st_size

    def list_dir(self, path: str) -> List[str]:
        """Names of the entries of a directory ([] when it does not exist); ShardError when it is a file."""
        if os.path.exists(path) and not os.path.isdir(path):
            raise ShardError(f"{path}: exists and is not a directory")
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def write_atomic(self, path: str, data: bytes) -> None:
        """The whole file under its name, or nothing (temporary file + rename), with the usual permissions."""
        with atomic_output(path, "wb") as f:
            f.write(data)
        _readable(Path(path))

    def read_text(self, path: str) -> str:
        """Raises OSError, UnicodeDecodeError."""
        with self.open_read(path) as f:
            return f.read().decode("utf-8")

    def sync_dir(self, path: str) -> None:
        _fsync_dir(Path(path))


LOCAL = LocalFiles()


# ------------------------------------------------------------------------------------------- plan
@dataclass
class ShardTask:
    split: str
    name: str
    offsets: List[int]
    fingerprint: str


@dataclass
class Plan:
    header: Header
    manifest: str                  # path the workers read (the spooled copy for stdin)
    images_root: str
    tasks: List[ShardTask]
    split_source: str              # "source", "hash" or "source+hash"
    records: int


def _spool_stdin(state: str, files: LocalFiles) -> str:
    path = files.join(state, "manifest.jsonl")
    tmp = files.join(state, f".manifest.jsonl.tmp-{uuid.uuid4().hex}")
    try:
        with files.create(tmp) as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
            files.sync(f)
        files.rename(tmp, path)
    except BaseException:
        files.delete(tmp)
        raise
    return path


def _options_digest(options: ShardOptions) -> str:
    d = {"spec": SPEC_VERSION, "kpconv": __version__, "image": asdict(options.image), "seed": options.seed,
         "compression": options.compression}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def make_plan(manifest: str, display_name: str, options: ShardOptions, files: LocalFiles = LOCAL) -> Plan:
    """Scan the manifest and freeze the shard plan. Raises ManifestError on a malformed line."""
    with files.open_read(manifest) as f:
        first = f.readline()
        if not first.strip():
            raise ManifestError("empty manifest: expected a header line", Location(display_name, 1))
        try:
            head = _loads(first, Location(display_name, 1))
        except ManifestError as e:
            raise ManifestError(f"{e.message}; expected the manifest's header line (a manifest is what "
                                "'kpconv ingest' writes: run it on annotation files first)", e.location) from None
        header = Header.from_json(head, Location(display_name, 1))
        k = len(header.keypoints)
        root = header.images_root
        if is_url(root):
            if not isinstance(files, _remote_capable()):
                raise ManifestError(f"images_root {root!r} is not a local path: use --runner beam, which reads "
                                    "gs://, s3://, hdfs://... through Apache Beam", Location(display_name, 1, field="images_root"))
        elif not os.path.isabs(root):
            root = files.join(os.getcwd() if display_name == "<stdin>" else files.dirname(manifest), root)
        else:
            root = str(Path(root))
        fractions = options.split or DEFAULT_SPLIT
        per_split: Dict[str, list] = {}
        est: Dict[str, float] = Counter()
        sizes: Dict[str, int] = {}
        used_source = used_hash = False
        offset = len(first)
        lineno = 1
        for line in f:
            lineno += 1
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            loc = Location(display_name, lineno)
            rec = Record.from_json(_loads(line, loc), k, loc)
            if options.split is None and rec.split is not None:
                split = rec.split
                used_source = True
                if not _safe_name(split):
                    raise ManifestError(f"split name {split!r} cannot be used in a file name "
                                        "(letters, digits, '_', '-'); override it with --split", loc.with_field("split"))
            else:
                split = split_of(rec.group if rec.group is not None else rec.image, fractions, options.seed)
                used_hash = True
            digest = hashlib.blake2b(line.rstrip(b"\r\n"), digest_size=16).digest()
            # one int per record (order key | offset | line digest): sorts by order key then offset,
            # and takes ~70 bytes instead of ~180 for a tuple, so the plan of 20,000 records stays small
            packed = (int.from_bytes(order_key(rec.key, options.seed), "big") << 192 | start << 128
                      | int.from_bytes(digest, "big"))
            per_split.setdefault(split, []).append(packed)
            if not options.num_shards:  # (sizes only matter for the shard count)
                est[split] += _estimate(rec, options, root, sizes, files)
    tasks = []
    opt_digest = _options_digest(options).encode()
    for split in sorted(per_split, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s)):
        entries = sorted(per_split[split])
        n = len(entries)
        count = shard_count(n, est[split], options)
        bounds = [round(i * n / count) for i in range(count + 1)]
        mask64, mask128 = (1 << 64) - 1, (1 << 128) - 1
        for i in range(count):
            chunk = entries[bounds[i]:bounds[i + 1]]
            h = hashlib.sha256(opt_digest)
            for packed in chunk:
                h.update((packed & mask128).to_bytes(16, "big"))
            name = shard_name(split, i, count, options.compression)
            tasks.append(ShardTask(split, name, [(packed >> 128) & mask64 for packed in chunk], h.hexdigest()))
        per_split[split] = entries = None  # free as we go
    source = "source+hash" if used_source and used_hash else "source" if used_source else "hash"
    return Plan(header, manifest, root, tasks, source, sum(len(t.offsets) for t in tasks))


def shard_count(n: int, estimated_bytes: float, options: ShardOptions) -> int:
    """Shards for a split of ``n`` records (at most one per record)."""
    if options.num_shards:
        return min(options.num_shards, n)
    if options.shard_size:
        return min(n, max(1, math.ceil(estimated_bytes / options.shard_size)))
    by_size = math.ceil(estimated_bytes / DEFAULT_SHARD_SIZE)
    return min(n, max(1, by_size, min(MIN_SHARDS, n // MIN_RECORDS_PER_SHARD)))


def _safe_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "_-" for c in name) and name.isascii()


def _loads(line: bytes, loc: Location):
    """One manifest line parsed (kpconv.jsonparse: orjson where it equals json); ManifestError if bad."""
    try:
        return jsonparse.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"invalid JSON: {e}", loc) from None


def _estimate(rec: Record, options: ShardOptions, root: str, sizes: Dict[str, int], files: LocalFiles) -> float:
    img = options.image
    if img.size is not None:
        return img.size[0] * img.size[1] * JPEG_BYTES_PER_PIXEL
    if img.crop == "bbox":
        f = (1 + img.crop_pad) ** 2
        return rec.bbox[2] * rec.width * rec.bbox[3] * rec.height * f * JPEG_BYTES_PER_PIXEL
    if rec.image not in sizes:
        try:
            sizes[rec.image] = files.size(files.join(root, rec.image))
        except OSError:
            sizes[rec.image] = 0
    return sizes[rec.image]


# ------------------------------------------------------------------------------------------ write
class _HashingFile:
    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        self.f.flush()


_killed_after = [0]
_NOWHERE = Location()


def write_shard(task: ShardTask, manifest: str, images_root: str, num_keypoints: int, out_dir: str,
                options: ShardOptions, files: LocalFiles = LOCAL, commit: bool = True) -> dict:
    """Write one shard under a temporary name (synced); with ``commit``, then its state file and the rename
    (:func:`commit_shard`). Returns the state; without ``commit`` its ``"tmp"`` names the temporary file."""
    from .tfrecord import TFRecordWriter

    tmp_name = f".{task.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp = files.join(out_dir, tmp_name)
    kill_after = int(os.environ.get("KPCONV_TEST_KILL_AFTER_RECORDS", "0") or 0)
    skipped, vis = [], [[0, 0, 0] for _ in range(num_keypoints)]
    try:
        with files.open_read(manifest) as mf, files.create(tmp) as raw:
            hf = _HashingFile(raw)
            writer = TFRecordWriter(hf, options.compression)
            check = hashlib.sha256(_options_digest(options).encode())
            try:
                fd = mf.fileno()
            except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
                fd = None
            for offset in task.offsets:
                # one pread of the line instead of a seek and an 8 KB buffered read
                chunk = os.pread(fd, 4096, offset) if fd is not None else b""
                end = chunk.find(b"\n") + 1
                if end:
                    line = chunk[:end]
                else:
                    mf.seek(offset)
                    line = mf.readline()
                check.update(hashlib.blake2b(line.rstrip(b"\r\n"), digest_size=16).digest())
                try:
                    d = _loads(line, _NOWHERE)
                except ManifestError as e:
                    raise ManifestError(e.message, Location(manifest, record=str(offset))) from None
                rec = _record(d)
                try:
                    data, kps = _convert(rec, images_root, options.image, files)
                except BadImage as e:
                    skipped.append({"image": rec.image, "instance": rec.instance, "split": task.split,
                                    "shard": task.name, "reason": e.reason, "message": e.message})
                    continue
                writer.write(data)
                for i, (_, _, v) in enumerate(kps):
                    vis[i][v] += 1
                if kill_after:
                    _killed_after[0] += 1
                    if _killed_after[0] >= kill_after:
                        raw.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
            writer.close()
            files.sync(raw)
        if check.hexdigest() != task.fingerprint:
            raise ShardError(f"{manifest}: the manifest changed while {task.name} was being written")
        state = {"file": task.name, "split": task.split, "fingerprint": task.fingerprint, "records": writer.count,
                 "bytes": hf.bytes, "sha256": hf.sha.hexdigest(), "visibility": vis, "skipped": skipped,
                 "tmp": tmp_name}
        if commit:
            commit_shard(out_dir, state, files)
    except BaseException:
        files.delete(tmp)
        raise
    return state


def commit_shard(out_dir: str, state: dict, files: LocalFiles = LOCAL) -> None:
    """Write the state file of a shard written under ``state["tmp"]``, then rename the shard into place:
    a shard under its final name always has its state. Removes ``"tmp"`` from ``state``."""
    tmp = files.join(out_dir, state.pop("tmp"))
    files.write_atomic(files.join(out_dir, STATE_DIR, f"{state['file']}.json"),
                       json.dumps(state, sort_keys=True).encode())
    files.rename(tmp, files.join(out_dir, state["file"]))
    files.sync_dir(out_dir)


def _record(d: dict) -> Record:
    """A manifest line already validated by make_plan (its digest is checked against the plan)."""
    return Record(d["image"], d["width"], d["height"], d["keypoints"], d["bbox"], d["instance"], d.get("group"),
                  d.get("split"), d.get("source") or {})


def _convert(rec: Record, root: str, opts: ImageOptions, files: LocalFiles = LOCAL):
    path = files.join(root, rec.image)
    data = None
    if opts.size is None and opts.crop == "none":
        # passthrough candidate: a plain, complete JPEG of the manifest's size is stored as is, known from
        # its header alone (no Pillow); anything else goes through SourceImage/render, which decide
        data = read_image_bytes(path, files.open_image)
        size = passthrough_size(data, opts.max_pixels)
        if size is not None and size == (rec.width, rec.height):
            lay = layout(size[0], size[1], (0, 0, size[0], size[1]), opts)
            kps = map_keypoints(rec.keypoints, rec.width, rec.height, lay)
            return _example(rec, data, "jpeg", lay, kps), kps
    src = SourceImage(path, opts.max_pixels, opener=files.open_image, data=data)
    if src.size != (rec.width, rec.height):
        raise BadImage("size_mismatch", f"image is {src.size[0]}x{src.size[1]}, the manifest says "
                                        f"{rec.width}x{rec.height}", Location(path))
    stored = render(src, rec.bbox, opts)
    lay = stored.layout
    kps = map_keypoints(rec.keypoints, rec.width, rec.height, lay)
    return _example(rec, stored.data, stored.format, lay, kps), kps


# The features of kpconv.records.record_features, in this order, for one ExampleEncoder per process (the
# same bytes as to_example without building a dict per record); to_example whenever the spec differs.
_RECORD_NAMES = ("image/encoded", "image/format", "image/height", "image/width", "image/source_path",
                 "image/original_height", "image/original_width", "instance/id", "instance/bbox",
                 "keypoints/x", "keypoints/y", "keypoints/visibility", "transform/stored_to_original")
_encoder: list = []


def _record_encoder():
    if not _encoder:
        from .records import FEATURES
        from .tfrecord import ExampleEncoder

        same = tuple(FEATURES) == _RECORD_NAMES
        _encoder.append(ExampleEncoder({n: FEATURES[n][0] for n in _RECORD_NAMES}) if same else None)
    return _encoder[0]


def _example(rec: Record, image: bytes, image_format: str, lay, kps) -> bytes:
    bbox = map_bbox(rec.bbox, rec.width, rec.height, lay)
    transform = lay.transform
    enc = _record_encoder()
    if enc is None:
        return to_example(image=image, image_format=image_format, height=lay.out[1], width=lay.out[0],
                          source_path=rec.image, original_height=rec.height, original_width=rec.width,
                          instance_id=rec.instance, bbox=bbox, keypoints=kps, transform=transform)
    return enc.encode([[image], [image_format], [lay.out[1]], [lay.out[0]], [rec.image], [rec.height],
                       [rec.width], [rec.instance], list(bbox), [p[0] for p in kps], [p[1] for p in kps],
                       [int(p[2]) for p in kps], list(transform)])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ driver
def _prepare_out_dir(out: str, options: ShardOptions, files: LocalFiles) -> None:
    names = files.list_dir(out)
    if names and not (options.overwrite or options.resume):
        raise ShardError(f"{out}: output directory exists and is not empty "
                         "(use --overwrite to replace it, or --resume to finish an interrupted run)")
    files.makedirs(out)
    files.delete(files.join(out, INFO_FILE))  # from now on nothing looks finished
    if options.overwrite:
        for name in names:
            if ".tfrecord-" in name or name == SKIPPED_FILE:
                files.delete(files.join(out, name))
        files.delete_tree(files.join(out, STATE_DIR))
    for name in names:  # temporary files of an interrupted run
        if name.startswith(".") and ".tmp" in name and name != STATE_DIR:
            files.delete(files.join(out, name))
    files.makedirs(files.join(out, STATE_DIR))


def _kept_state(out: str, task: ShardTask, files: LocalFiles) -> Optional[dict]:
    """The state of a complete, correct shard from an earlier run, else None."""
    try:
        state = json.loads(files.read_text(files.join(out, STATE_DIR, f"{task.name}.json")))
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != task.fingerprint:
        return None
    try:
        with files.open_read(files.join(out, task.name)) as f:
            digest, _ = sha256_stream(f)
    except OSError:  # missing, or a directory
        return None
    return state if digest == state.get("sha256") else None


# execute(todo, args, files) -> {shard name: state}; args = (manifest, images_root, k, out_dir, options)
Execute = Callable[[Sequence[ShardTask], tuple, LocalFiles], Dict[str, dict]]


def shard(manifest: str, out_dir, options: ShardOptions = ShardOptions(), *, files: Optional[LocalFiles] = None,
          execute: Optional[Execute] = None) -> ShardResult:
    """Convert the manifest at ``manifest`` (a path, or ``-`` for stdin) into shards under ``out_dir``.

    ``files`` and ``execute`` are the runner's (default: local files, shards written in this process or a
    process pool of ``options.workers``); :func:`kpconv.beam_runner.shard_beam` passes Beam's.

    Raises ShardError (existing output, failed worker), ManifestError (malformed manifest) or
    NothingToWrite (every record skipped); in each case ``dataset_info.json`` is not written.
    """
    files = files or LOCAL
    out = str(out_dir)
    if not isinstance(files, _remote_capable()):
        for p in (manifest, out):
            if is_url(p):
                raise ShardError(f"{p}: not a local path: use --runner beam, which reads and writes gs://, "
                                 "s3://, hdfs://... through Apache Beam")
    if manifest != "-" and not files.is_file(manifest):
        raise ManifestError("manifest file does not exist", Location(str(manifest)))
    _prepare_out_dir(out, options, files)
    state_dir = files.join(out, STATE_DIR)
    if manifest == "-":
        path, display = _spool_stdin(state_dir, files), "<stdin>"
    else:
        path, display = str(manifest), str(manifest)
    plan = make_plan(path, display, options, files)
    if not plan.tasks:
        raise NothingToWrite(f"{display}: the manifest holds no record")
    wanted = {t.name for t in plan.tasks}
    for name in files.list_dir(out):  # shards of another plan (other options or manifest)
        if ".tfrecord-" in name and name not in wanted:
            files.delete(files.join(out, name))
    for name in files.list_dir(state_dir):
        if name.endswith(".json") and name[:-5] not in wanted:
            files.delete(files.join(state_dir, name))

    states: Dict[str, dict] = {}
    todo = []
    for task in plan.tasks:
        kept = _kept_state(out, task, files) if options.resume else None
        if kept is not None:
            states[task.name] = kept
        else:
            todo.append(task)
    kept_count = len(states)
    args = (plan.manifest, plan.images_root, len(plan.header.keypoints), out, options)
    if todo:
        states.update((execute or _execute_local)(todo, args, files))

    result = _finish(out, plan, states, options, files)
    result.kept_shards = kept_count
    result.written_shards = len(todo)
    if manifest == "-":
        files.delete(path)
    return result


def _remote_capable():
    """The files classes that read and write URLs (Beam's, when kpconv.beam_runner is loaded)."""
    mod = sys.modules.get("kpconv.beam_runner")
    return getattr(mod, "BeamFiles", ()) if mod is not None else ()


def _execute_local(todo: Sequence[ShardTask], args: tuple, files: LocalFiles) -> Dict[str, dict]:
    """The local runner: one shard after another in this process, or a process pool of ``--workers``."""
    workers = min(args[4].workers or os.cpu_count() or 1, len(todo))
    args = (*args, files)
    if workers <= 1:
        return {task.name: write_shard(task, *args) for task in progress(todo, desc="shards", unit="shard")}
    return _write_parallel(todo, args, workers)


def _start_method() -> str:
    """``fork`` (cheap) while TensorFlow is not loaded in this process (the CLI never loads it);
    ``forkserver`` otherwise (e.g. inside a program that uses TensorFlow), as TF is not fork-safe."""
    import multiprocessing

    if "tensorflow" in sys.modules or "fork" not in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "fork"


def _write_parallel(todo: Sequence[ShardTask], args, workers: int) -> Dict[str, dict]:
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context(_start_method())
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["kpconv.shard"])
    states = {}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    bar = None
    try:
        futures = {pool.submit(write_shard, task, *args): task for task in todo}
        bar = progress(total=len(futures), desc="shards", unit="shard")
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                task = futures[fut]
                try:
                    states[task.name] = fut.result()
                except BrokenProcessPool:
                    raise ShardError(f"a worker process died while writing {task.name} (killed, or out of "
                                     "memory?); complete shards are kept: rerun with --resume") from None
                except ShardError:
                    raise
                except (ManifestError, OSError) as e:
                    raise ShardError(f"writing {task.name} failed: {e}") from None
                if bar is not None:
                    bar.update(1)
        return states
    finally:
        if bar is not None:
            bar.close()
        pool.shutdown(wait=True, cancel_futures=True)


def _finish(out: str, plan: Plan, states: Dict[str, dict], options: ShardOptions,
            files: LocalFiles = LOCAL) -> ShardResult:
    header = plan.header
    k = len(header.keypoints)
    splits: Dict[str, dict] = {}
    skipped: List[dict] = []
    reasons: Counter = Counter()
    for task in plan.tasks:
        st = states[task.name]
        s = splits.setdefault(task.split, {"records": 0, "bytes": 0, "shards": [],
                                           "visibility": [[0, 0, 0] for _ in range(k)]})
        s["records"] += st["records"]
        s["bytes"] += st["bytes"]
        s["shards"].append({"file": st["file"], "records": st["records"], "bytes": st["bytes"],
                            "sha256": st["sha256"]})
        for i in range(k):
            for v in range(3):
                s["visibility"][i][v] += st["visibility"][i][v]
        for item in st["skipped"]:
            skipped.append(item)
            reasons[item["reason"]] += 1
    written = sum(s["records"] for s in splits.values())
    if written == 0:
        first = skipped[0] if skipped else None
        raise NothingToWrite(f"no record could be written: all {len(skipped)} record(s) were skipped"
                             + (f"; first: {first['image']}: {first['message']}" if first else ""))
    img = options.image
    info = {
        "kpconv_version": __version__,
        "spec_version": SPEC_VERSION,
        "keypoints": list(header.keypoints),
        "skeleton": [list(p) for p in header.skeleton],
        "flip_pairs": [list(p) for p in header.flip_pairs],
        "image": {"size": list(img.size) if img.size else None, "resize": img.resize if img.size else None,
                  "crop": img.crop, "crop_pad": img.crop_pad if img.crop == "bbox" else None,
                  "encoding": "jpeg (re-encoded) or the original bytes (passthrough)", "quality": img.quality,
                  "background": [128, 128, 128]},
        "compression": options.compression,
        "splits": splits,
        "records": written,
        "skipped": {"records": len(skipped), "reasons": dict(sorted(reasons.items())), "file": SKIPPED_FILE},
        "options": {"image_size": list(img.size) if img.size else None, "resize": img.resize, "crop": img.crop,
                    "crop_pad": img.crop_pad, "split": options.split, "split_from": plan.split_source,
                    "shard_size": None if options.num_shards else options.shard_size or DEFAULT_SHARD_SIZE,
                    "num_shards": options.num_shards, "seed": options.seed, "quality": img.quality,
                    "compression": options.compression},
        "source": header.source,
    }
    files.write_atomic(files.join(out, SKIPPED_FILE),
                       "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in skipped).encode())
    files.write_atomic(files.join(out, INFO_FILE), DatasetInfo.from_json(info, files.join(out, INFO_FILE)).to_bytes())
    files.sync_dir(out)
    return ShardResult(out if is_url(out) else Path(out), info, written=written, skipped=len(skipped))


def _readable(path: Path) -> None:
    """atomic_output creates files 0600 (mkstemp); give them the usual permissions (umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
