"""The shard plan, frozen before OUT_DIR is touched (docs/shard.md, *Splits and determinism*): the manifest is
scanned once, keeping per record a :class:`RecordRef` (order key, line offset, line digest), never its image;
records keep the source's split or get one from a salted hash (:func:`split_of`) of their group or image; within
a split they are ordered by a salted hash of their key and cut into shards at ``round(i * n / S)``. Each shard's
:func:`fingerprint` is checked again by the writer and by ``--resume``."""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional

from ... import __version__
from ...errors import Location, ManifestError
from ..manifest import Header, Record, scan
from ..records import SPEC_VERSION
from .files import LOCAL, LocalFiles, is_url
from .options import DEFAULT_SHARD_SIZE, DEFAULT_SPLIT, ShardOptions, safe_name

SPLIT_ORDER = ("train", "val", "test")
JPEG_BYTES_PER_PIXEL = 0.5  # shard-size estimate for re-encoded images (JPEG ~4 bits per pixel)
# Without --shard-size/--num-shards, a split of n records gets at least min(MIN_SHARDS, n // MIN_RECORDS_PER_SHARD)
# shards, so that writers work in parallel and readers can interleave files even when the split is
# smaller than one 64 MB shard. (Never a function of --workers: the output must not depend on it.)
MIN_SHARDS = 8
MIN_RECORDS_PER_SHARD = 100
# A requested split is "far from its fraction" when its share of the records differs from the fraction
# by more than FAR_ABS and by more than FAR_REL of the fraction.
FAR_ABS, FAR_REL = 0.05, 0.25


class RecordRef(NamedTuple):
    """One record of the manifest, as the plan keeps it. Sorting refs gives the order within a split."""

    order: bytes        # salted hash of the record's key (image#instance)
    offset: int         # byte offset of its line in the manifest
    digest: bytes       # line_digest() of the line


@dataclass
class ShardTask:
    split: str
    name: str
    offsets: List[int]          # the lines of its records, in order
    fingerprint: str
    # per record, the lines of every record of its source image (itself included), in manifest order: the
    # writer stores their centres and boxes in each record (image/instances/*, record spec 2)
    siblings: List[List[int]] = field(default_factory=list)


@dataclass
class Plan:
    header: Header
    manifest: str                  # the path the writers read
    images_root: str
    tasks: List[ShardTask]
    split_source: str              # "source", "hash" or "source+hash"
    split_by: Optional[str]        # what the hash kept together: "group" or "image" (None: no hash)
    notes: List[str] = field(default_factory=list)      # decisions worth saying (stderr)
    warnings: List[str] = field(default_factory=list)   # split problems (stderr and dataset_info.json)


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


def line_digest(line: bytes) -> bytes:
    return hashlib.blake2b(line.rstrip(b"\r\n"), digest_size=16).digest()


def fingerprint(options: ShardOptions, digests: Iterable[bytes]) -> str:
    """What a shard's bytes depend on: the options that change records and the lines of its records (for
    each record, its own line's digest and then those of its image's records, :func:`record_digests`)."""
    d = {"spec": SPEC_VERSION, "kpconv": __version__, "image": asdict(options.image), "seed": options.seed,
         "compression": options.compression}
    if options.allow_outside_root:      # (changes which records are skipped; absent: the fingerprints of before)
        d["allow_outside_root"] = True
    h = hashlib.sha256(hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest().encode())
    for digest in digests:
        h.update(digest)
    return h.hexdigest()


def record_digests(own: bytes, siblings: Iterable[bytes]) -> Iterable[bytes]:
    """The digests one record adds to its shard's :func:`fingerprint`: its line's, then its image's lines'."""
    yield own
    yield from siblings


def shard_name(split: str, index: int, count: int, compression: str) -> str:
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}" + (".gz" if compression == "gzip" else "")


def shard_count(n: int, estimated_bytes: float, options: ShardOptions) -> int:
    """Shards for a split of ``n`` records (at most one per record)."""
    if options.num_shards:
        return min(options.num_shards, n)
    if options.shard_size:
        return min(n, max(1, math.ceil(estimated_bytes / options.shard_size)))
    by_size = math.ceil(estimated_bytes / DEFAULT_SHARD_SIZE)
    return min(n, max(1, by_size, min(MIN_SHARDS, n // MIN_RECORDS_PER_SHARD)))


class _Entry(NamedTuple):
    split: Optional[str]        # the source's split, kept; None: decided by the hash
    group: Optional[str]
    image: str
    ref: RecordRef
    size: float                 # estimated bytes in the shard


def make_plan(manifest: str, display_name: str, options: ShardOptions, files: LocalFiles = LOCAL) -> Plan:
    """Scan the manifest and freeze the shard plan. Raises ManifestError on a malformed line."""
    entries: List[_Entry] = []
    sizes: Dict[str, int] = {}
    by_image: Dict[tuple, List[RecordRef]] = {}     # (image, category) -> its records, in manifest order
    image_of: Dict[int, tuple] = {}
    with files.open_read(manifest) as f:
        header, lines = scan(f, display_name)
        root = _images_root(header, manifest, display_name, files)
        for offset, lineno, line, rec in lines:
            split = None
            if options.split is None and rec.split is not None:
                split = rec.split
                if not safe_name(split):
                    raise ManifestError(f"split name {split!r} cannot be used in a file name (letters, digits, "
                                        "'_', '-'); override it with --split", Location(display_name, lineno, field="split"))
            ref = RecordRef(order_key(rec.key, options.seed), offset, line_digest(line))
            image_key = (rec.image, rec.category)
            by_image.setdefault(image_key, []).append(ref)
            image_of[offset] = image_key
            size = 0.0 if options.num_shards else _estimate(rec, options, root, sizes, files)
            entries.append(_Entry(split, rec.group, rec.image, ref, size))
    plan = Plan(header, manifest, root, [], "hash", None)
    splits = _assign_splits(entries, options, plan)
    for split in sorted(splits, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s)):
        members = splits[split]
        refs = sorted(e.ref for e in members)
        n = len(refs)
        count = shard_count(n, sum(e.size for e in members), options)
        bounds = [round(i * n / count) for i in range(count + 1)]
        for i in range(count):
            chunk = refs[bounds[i]:bounds[i + 1]]
            sibs = [by_image[image_of[r.offset]] for r in chunk]
            digests = (d for r, sib in zip(chunk, sibs) for d in record_digests(r.digest, (s.digest for s in sib)))
            plan.tasks.append(ShardTask(split, shard_name(split, i, count, options.compression),
                                        [r.offset for r in chunk], fingerprint(options, digests),
                                        [[s.offset for s in sib] for sib in sibs]))
    return plan


def _images_root(header: Header, manifest: str, display_name: str, files: LocalFiles) -> str:
    root = header.images_root
    if is_url(root):
        if not files.handles_urls:
            raise ManifestError(f"images_root {root!r} is not a local path: use --runner beam, which reads "
                                "gs://, s3://, hdfs://... through Apache Beam", Location(display_name, 1, field="images_root"))
        return root
    if not os.path.isabs(root):
        return files.join(os.getcwd() if display_name == "<stdin>" else files.dirname(manifest), root)
    return str(Path(root))


def _assign_splits(entries: List[_Entry], options: ShardOptions, plan: Plan) -> Dict[str, List[_Entry]]:
    fractions = options.split or DEFAULT_SPLIT
    out: Dict[str, List[_Entry]] = {}
    hashed = []
    for e in entries:
        if e.split is not None:
            out.setdefault(e.split, []).append(e)
        else:
            hashed.append(e)
    if not hashed:
        plan.split_source = "source"
        return out
    plan.split_source = "source+hash" if out else "hash"
    by = _split_by(hashed, fractions, options, plan)
    plan.split_by = by
    counts: Counter = Counter()
    for e in hashed:
        split = split_of(e.image if by == "image" else (e.group if e.group is not None else e.image),
                         fractions, options.seed)
        out.setdefault(split, []).append(e)
        counts[split] += 1
    n = len(hashed)
    for name, frac in fractions.items():
        share = counts[name] / n
        if frac > 0 and (counts[name] == 0 or abs(share - frac) > max(FAR_ABS, FAR_REL * frac)):
            what = "is empty" if counts[name] == 0 else "is far from its fraction"
            hint = " (few groups: try --split-by image)" if by == "group" else ""
            plan.warnings.append(f"split '{name}' {what}: {counts[name]} of {n} record(s) ({share:.1%}, split by "
                                 f"{by}), asked for {frac:.1%}{hint}")
    return out


def _split_by(hashed: List[_Entry], fractions: Dict[str, float], options: ShardOptions, plan: Plan) -> str:
    if options.split_by == "image" or all(e.group is None for e in hashed):
        return "image"      # (without groups, a record's group is its image)
    if options.split_by == "group":
        return "group"
    groups = {e.group if e.group is not None else e.image for e in hashed}
    wanted = {name for name, frac in fractions.items() if frac > 0}
    if {split_of(g, fractions, options.seed) for g in groups} >= wanted:
        return "group"
    plan.notes.append(f"{len(groups)} group(s) cannot fill every split ({', '.join(sorted(wanted))}): "
                      "splitting by image instead (--split-by group keeps each group in one split)")
    return "image"


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
