"""``kpconv inspect``: what a ``kpconv shard`` directory holds, a full verification, a contact sheet; no
TensorFlow (:mod:`kpconv.data.tfrecord`, :func:`kpconv.data.records.decode_record`)."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional

from .data.dataset_info import INFO_FILE, DatasetInfo, sha256_stream
from .drawing import draw_keypoints, side_colours
from .errors import DatasetInfoError, Location, VerifyError
from .data.manifest import atomic_output
from .data.records import decode_record
from .data.tfrecord import read_records


@dataclass
class InspectResult:
    info: DatasetInfo
    lines: List[str] = field(default_factory=list)   # the printable summary
    verified: int = 0                                # records verified (--verify)
    grid: Optional[str] = None                       # contact sheet written


def summary(out_dir, dataset: DatasetInfo) -> List[str]:
    info = dataset.raw
    img = info["image"]
    size = "x".join(str(v) for v in img["size"]) + f" ({img.get('resize')})" if img.get("size") else "original size"
    crop = img.get("crop", "none") + (f" (pad {img.get('crop_pad')})" if img.get("crop") == "bbox" else "")
    lines = [f"{out_dir}: kpconv {info.get('kpconv_version')}, record spec {info.get('spec_version')}, "
             f"{info.get('records')} record(s), image {size}, crop {crop}, compression {info.get('compression')}"]
    rows = [("split", "records", "shards", "bytes")]
    for split, s in info.get("splits", {}).items():
        rows.append((split, str(s["records"]), str(len(s["shards"])), f"{s['bytes']:,}" if "bytes" in s else "?"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
    sk = info.get("skipped", {})
    reasons = ", ".join(f"{k} {v}" for k, v in sk.get("reasons", {}).items())
    lines.append(f"skipped: {sk.get('records', 0)}" + (f" ({reasons}; see {sk.get('file')})" if reasons else ""))
    names = info.get("keypoints", [])
    flips = {}
    for a, b in info.get("flip_pairs", []):
        flips[a], flips[b] = names[b], names[a]
    totals = [[0, 0, 0] for _ in names]
    for s in info.get("splits", {}).values():
        for i, counts in enumerate(s.get("visibility", [])):
            for v in range(3):
                totals[i][v] += counts[v]
    w = max((len(n) for n in names), default=4)
    lines.append(f"keypoints ({len(names)}): share of records with v=2 visible / v=1 occluded / v=0 not labelled or outside")
    for i, name in enumerate(names):
        n = sum(totals[i]) or 1
        pair = f"  flip <-> {flips[i]}" if i in flips else ""
        lines.append(f"  {name:<{w}}  {totals[i][2] / n:6.1%}  {totals[i][1] / n:6.1%}  {totals[i][0] / n:6.1%}{pair}")
    return lines


def verify(out_dir, dataset: DatasetInfo) -> int:
    """Read every record of every shard: CRCs, spec, image decoding, counts, sha256, visibility counts.

    Raises VerifyError naming the first bad shard (and record); returns the number of records."""
    from .data.images import BadImage, decode

    out = Path(out_dir)
    info = dataset.raw
    try:
        dataset.check_checksum()
    except DatasetInfoError as e:
        raise VerifyError(e.message, e.location) from None
    size = dataset.image_size
    k = dataset.num_keypoints
    compression = dataset.compression_name
    total = 0
    for split, s in info["splits"].items():
        vis = [[0, 0, 0] for _ in range(k)]
        for entry in s["shards"]:
            name = entry["file"]
            path = out / name
            if not path.is_file():
                raise VerifyError("shard file is missing", Location(name))
            count = 0
            for index, data in enumerate(_records(path, name, compression)):
                loc = Location(name, record=str(index))
                try:
                    rec = decode_record(data, k)
                except ValueError as e:
                    raise VerifyError(f"record does not follow the spec: {e}", loc) from None
                try:
                    im = decode(rec["image/encoded"])
                except BadImage as e:
                    raise VerifyError(f"image does not decode: {e.message}", loc) from None
                if size is not None and (rec["image/width"], rec["image/height"]) != size:
                    raise VerifyError(f"record is {rec['image/width']}x{rec['image/height']}, dataset_info.json's "
                                      f"image.size is {size[0]}x{size[1]}", loc)
                if im.size != (rec["image/width"], rec["image/height"]):
                    raise VerifyError(f"image is {im.size[0]}x{im.size[1]}, the record says "
                                      f"{rec['image/width']}x{rec['image/height']}", loc)
                for i, v in enumerate(rec["keypoints/visibility"]):
                    if v not in (0, 1, 2):
                        raise VerifyError(f"keypoint {i}: visibility {v} is not 0, 1 or 2", loc)
                    vis[i][v] += 1
                count += 1
            if count != entry["records"]:
                raise VerifyError(f"holds {count} record(s), dataset_info.json says {entry['records']}", Location(name))
            with open(path, "rb") as f:
                digest, nbytes = sha256_stream(f)
            if nbytes != entry.get("bytes") or digest != entry.get("sha256"):
                raise VerifyError(f"sha256 or size differs from {INFO_FILE} (the file changed after writing)",
                                  Location(name))
            total += count
        if "visibility" in s and vis != s["visibility"]:
            raise VerifyError(f"split {split}: keypoint visibility counts differ from dataset_info.json",
                              Location(INFO_FILE))
    return total


def _records(path: Path, name: str, compression: str) -> Iterator[bytes]:
    try:
        yield from read_records(str(path), compression)
    except VerifyError as e:  # re-locate with the shard's name as given in dataset_info.json
        raise VerifyError(e.message, Location(name, record=e.location.record)) from None


def contact_sheet(out_dir, dataset: DatasetInfo, path: str, n: int = 16, cell: int = 256,
                  split: Optional[str] = None, predict=None, min_confidence: float = 0.5) -> int:
    """Draw up to ``n`` records (shard order; only ``split`` when given) with keypoints, names and skeleton;
    returns the number drawn. With ``predict`` (``images (1, H, W, 3) -> (xy (1, K, 2), confidence (1, K))``,
    e.g. :meth:`kpconv.model.inference.Inference.infer`) the predictions are dots (those of ``min_confidence`` and
    more), the truth rings, a white line joining the two."""
    import numpy as np
    from PIL import Image, ImageDraw

    from .data.images import BadImage, decode, to_rgb

    names = dataset.keypoint_names
    k = len(names)
    colours = side_colours(k, dataset.flip_pairs)
    cells = []
    for name, entry in dataset.shards():
        if len(cells) >= n:
            break
        if split is not None and name != split:
            continue
        for data in read_records(str(Path(out_dir) / entry["file"]), dataset.compression_name):
            if len(cells) >= n:
                break
            try:
                rec = decode_record(data, k)
                im = to_rgb(decode(rec["image/encoded"]))
            except (ValueError, BadImage) as e:
                raise VerifyError(f"cannot draw record {len(cells)}: {getattr(e, 'message', e)}",
                                  Location(entry["file"])) from None
            w, h = im.size
            pred = None
            if predict is not None:
                xy, conf = predict(np.asarray(im, np.float32)[None])
                pred = [(float(x), float(y), float(c)) for (x, y), c in zip(xy[0], conf[0])]
            scale = cell / max(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))))
            sw, sh = im.size
            tile = Image.new("RGB", (cell, cell + 14), (0, 0, 0))
            tile.paste(im, (0, 0))
            d = ImageDraw.Draw(tile)
            pts = [(x * sw, y * sh, v) for x, y, v in zip(rec["keypoints/x"], rec["keypoints/y"],
                                                       rec["keypoints/visibility"])]
            if pred is None:
                draw_keypoints(d, pts, names, dataset.skeleton, colours)
            else:
                guess = [(x * sw, y * sh, 2 if c >= min_confidence else 0) for x, y, c in pred]
                for t, g in zip(pts, guess):
                    if t[2] and g[2]:
                        d.line([t[:2], g[:2]], fill=(255, 255, 255), width=1)
                draw_keypoints(d, [(x, y, 1 if v else 0) for x, y, v in pts], None, [], colours, radius=5)
                draw_keypoints(d, guess, None, dataset.skeleton, colours)
            label = f"{name}: {rec['image/source_path']}#{rec['instance/id']}"
            d.text((2, cell + 1), label[:40], fill=(255, 255, 255))
            cells.append(tile)
    if not cells:
        return 0
    cols = min(len(cells), 4)
    rows = (len(cells) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 14)), (40, 40, 40))
    for i, tile in enumerate(cells):
        sheet.paste(tile, ((i % cols) * cell, (i // cols) * (cell + 14)))
    buf = io.BytesIO()
    sheet.save(buf, "PNG")
    with atomic_output(str(path), "wb") as f:
        f.write(buf.getvalue())
    return len(cells)


def inspect(out_dir, verify_records: bool = False, grid: Optional[str] = None, n: int = 16) -> InspectResult:
    """Summarize a shard directory; optionally verify every record and draw a contact sheet."""
    info = DatasetInfo.read(out_dir)
    result = InspectResult(info, summary(out_dir, info))
    if verify_records:
        result.verified = verify(out_dir, info)
    if grid:
        contact_sheet(out_dir, info, grid, n)
        result.grid = grid
    return result
