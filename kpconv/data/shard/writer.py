"""One shard task -> one shard file under a temporary name; :mod:`kpconv.data.shard.outdir` commits its state.
Test hook: ``KPCONV_TEST_KILL_AFTER_RECORDS=N`` makes the writing process SIGKILL itself after N records."""
from __future__ import annotations

import functools
import hashlib
import os
import signal
import uuid
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from ...errors import Location, ShardError
from ..imageinfo import real_root
from ..images import BadImage, ImageOptions, SourceImage, Stored, layout, map_bbox, map_keypoints, passthrough_size, \
    read_image_bytes, render
from ..manifest import Record, parse_record
from ..records import to_example
from .files import LOCAL, LocalFiles
from .options import ShardOptions
from .plan import ShardTask, fingerprint, line_digest, record_digests


@dataclass(frozen=True)
class ShardJob:
    """What every shard task of one run shares (picklable: it travels to worker processes)."""

    manifest: str               # the path the writers read
    images_root: str
    num_keypoints: int
    out_dir: str
    options: ShardOptions
    files: LocalFiles = LOCAL


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


def write_shard(task: ShardTask, job: ShardJob) -> dict:
    """Write one shard under a temporary name (synced). Returns its state; ``state["tmp"]`` names the
    temporary file (:func:`kpconv.data.shard.outdir.commit_shard` renames it into place)."""
    from ..tfrecord import TFRecordWriter

    files, options = job.files, job.options
    tmp_name = f".{task.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp = files.join(job.out_dir, tmp_name)
    kill_after = int(os.environ.get("KPCONV_TEST_KILL_AFTER_RECORDS", "0") or 0)
    skipped, changed, vis, digests = [], [], [[0, 0, 0] for _ in range(job.num_keypoints)], []
    max_instances = 0
    confine = None if options.allow_outside_root else \
        job.images_root if files.is_remote(job.images_root) else real_root(job.images_root)
    try:
        with files.open_read(job.manifest) as mf, files.create(tmp) as raw:
            hf = _HashingFile(raw)
            writer = TFRecordWriter(hf, options.compression)
            def read_line(offset):
                mf.seek(offset)
                return mf.readline()

            siblings = task.siblings or [[offset] for offset in task.offsets]
            for offset, sib_offsets in zip(task.offsets, siblings):
                line = read_line(offset)
                rec = parse_record(line, job.num_keypoints, Location(job.manifest, record=str(offset)))
                sibs, sib_digests = [], []
                for o in sib_offsets:
                    sib_line = line if o == offset else read_line(o)
                    sib_digests.append(line_digest(sib_line))
                    sibs.append(rec if o == offset else
                                parse_record(sib_line, job.num_keypoints, Location(job.manifest, record=str(o))))
                digests.extend(record_digests(line_digest(line), sib_digests))
                if offset not in sib_offsets:
                    raise ShardError(f"{job.manifest}: record at byte {offset} is not among its image's records "
                                     "in the shard plan")
                try:
                    data, kps = convert(rec, job.images_root, options.image, files, confine, sibs,
                                        sib_offsets.index(offset))
                except BadImage as e:
                    skipped.append({"image": rec.image, "instance": rec.instance, "split": task.split,
                                    "shard": task.name, "reason": e.reason, "message": e.message})
                    continue
                writer.write(data)
                max_instances = max(max_instances, len(sibs))
                for i, (_, _, v) in enumerate(kps):
                    vis[i][v] += 1
                lost = [i for i, (p, q) in enumerate(zip(rec.keypoints, kps)) if p[2] and not q[2]]
                if lost:        # labelled in the manifest, outside what the stored image shows
                    changed.append({"image": rec.image, "instance": rec.instance, "split": task.split,
                                    "shard": task.name, "reason": "outside_crop" if options.image.crop == "bbox"
                                    else "outside_content", "keypoints": lost})
                if kill_after:
                    _killed_after[0] += 1
                    if _killed_after[0] >= kill_after:
                        raw.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
            writer.close()
            files.sync(raw)
        if fingerprint(options, digests) != task.fingerprint:
            raise ShardError(f"{job.manifest}: the manifest changed while {task.name} was being written")
    except BaseException:
        files.delete(tmp)
        raise
    return {"file": task.name, "split": task.split, "fingerprint": task.fingerprint, "records": writer.count,
            "bytes": hf.bytes, "sha256": hf.sha.hexdigest(), "visibility": vis, "skipped": skipped, "changed": changed,
            "tmp": tmp_name, "max_instances": max_instances}


def instance_center(rec: Record) -> Tuple[float, float]:
    """An instance's centre, normalized to its original image: the middle of the box of its labelled
    keypoints, or of its box when none is labelled (what ``image/instances/center`` stores)."""
    pts = [(x, y) for x, y, v in rec.keypoints if v > 0]
    if not pts:
        bx, by, bw, bh = rec.bbox
        return bx + bw / 2.0, by + bh / 2.0
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return (min(xs) + max(xs)) / 2.0, (min(ys) + max(ys)) / 2.0


def _to_stored(x: float, y: float, rec: Record, lay) -> Tuple[float, float]:
    """A point normalized to the original image -> normalized to the stored image (not clipped)."""
    a, _, c, _, e, f = lay.transform
    return (x * rec.width - c) / a / lay.out[0], (y * rec.height - f) / e / lay.out[1]


def convert(rec: Record, root: str, opts: ImageOptions, files: LocalFiles = LOCAL, confine: Optional[str] = None,
            siblings: Optional[Sequence[Record]] = None, index: int = 0):
    """One manifest record -> (serialized record, keypoints in the stored image). ``siblings``: every record
    of its image (default: itself alone), ``index`` its position among them. Raises BadImage, also
    (``path_outside_root``) for an image that resolves outside ``confine`` (the images root, resolved
    once with :func:`kpconv.data.imageinfo.real_root`; None: anywhere)."""
    path = files.join(root, rec.image)
    opener = functools.partial(files.open_image, root=confine)
    data = stored = None
    if opts.size is None and opts.crop == "none":
        # passthrough candidate: a plain, complete JPEG of the manifest's size is stored as is, known from
        # its header alone (no Pillow); anything else goes through SourceImage/render, which decide
        data = read_image_bytes(path, opener)
        if passthrough_size(data, opts.max_pixels) == (rec.width, rec.height):
            stored = Stored(data, "jpeg", layout(rec.width, rec.height, (0, 0, rec.width, rec.height), opts))
    if opts.crop == "bbox" and (rec.bbox[2] * rec.width < 1 or rec.bbox[3] * rec.height < 1):
        bw, bh = rec.bbox[2] * rec.width, rec.bbox[3] * rec.height
        raise BadImage("degenerate_crop", f"--crop bbox: the instance's box is {bw:.3g}x{bh:.3g} px (a box derived "
                                          "from one keypoint, or from points on one line): a crop around it would "
                                          "be a pixel wide; give the instance a box, or shard without --crop bbox",
                       Location(path))
    if stored is None:
        src = SourceImage(path, opts.max_pixels, opener=opener, data=data)
        if src.size != (rec.width, rec.height):
            raise BadImage("size_mismatch", f"image is {src.size[0]}x{src.size[1]}, the manifest says "
                                            f"{rec.width}x{rec.height}", Location(path))
        stored = render(src, rec.bbox, opts)
    lay = stored.layout
    kps = map_keypoints(rec.keypoints, rec.width, rec.height, lay)
    centers, boxes, sib_kps = [], [], []
    for sib in siblings or [rec]:
        centers.append(_to_stored(*instance_center(sib), rec, lay))
        sib_kps.append(kps if sib is rec else map_keypoints(sib.keypoints, rec.width, rec.height, lay))
        bx, by, bw, bh = sib.bbox
        x0, y0 = _to_stored(bx, by, rec, lay)
        x1, y1 = _to_stored(bx + bw, by + bh, rec, lay)
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    return to_example(image=stored.data, image_format=stored.format, height=lay.out[1], width=lay.out[0],
                      source_path=rec.image, original_height=rec.height, original_width=rec.width,
                      instance_id=rec.instance, bbox=map_bbox(rec.bbox, rec.width, rec.height, lay), keypoints=kps,
                      transform=lay.transform, instance_index=index, centers=centers, boxes=boxes,
                      instance_keypoints=sib_kps), kps
