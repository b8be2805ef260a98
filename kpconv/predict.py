"""``kpconv predict``: keypoints in original image pixels for new images.

Each image goes through the same preprocessing as the shards the run was trained on (recorded in
``config.json`` at train time from ``dataset_info.json``): the crop (``none``, or ``bbox`` with the
shard's padding around ``--bbox``; without ``--bbox`` a ``bbox`` run uses the whole image), the
resize (``stretch`` or ``pad``) and EXIF orientation, all by ``kpconv.images`` (the code ``kpconv
shard`` uses). The model's output is mapped back through the same transform.

The model gives no confidence: every predicted keypoint has visibility 2, and the COCO results
``score`` is 1.0.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np

from .errors import ImageError, TrainError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FORMATS = ("jsonl", "csv", "coco")


@dataclass
class Prediction:
    image: str
    width: int                      # original size (EXIF orientation applied)
    height: int
    keypoints: List[List[float]]    # K x [x, y] original pixels
    bbox: Optional[List[float]]


def expand_inputs(paths: Sequence[str]) -> List[str]:
    """Files as given; folders -> their images (sorted, not recursive)."""
    out = []
    for p in paths:
        q = Path(p)
        if q.is_dir():
            out += sorted(str(f) for f in q.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        else:
            out.append(str(q))
    return out


def _image_options(config: dict):
    from .images import ImageOptions

    pre = config["dataset"].get("preprocessing") or {}
    size = pre.get("size") or config["dataset"]["image_size"]
    return ImageOptions(size=(int(size[0]), int(size[1])), resize=pre.get("resize") or "stretch",
                        crop=pre.get("crop") or "none", crop_pad=float(pre.get("crop_pad") or 0.0))


def prepare(path: str, opts, bbox_px: Optional[Sequence[float]] = None):
    """(stored image array (H, W, 3) uint8, stored_to_original transform, original (w, h))."""
    from .images import SourceImage, decode, render, to_rgb

    src = SourceImage(path)
    w, h = src.size
    if bbox_px is not None:
        bx, by, bw, bh = bbox_px
        bbox = [bx / w, by / h, bw / w, bh / h]
    else:
        bbox = [0.0, 0.0, 1.0, 1.0]
    stored = render(src, bbox, opts)
    im = to_rgb(decode(stored.data))
    arr = np.asarray(im, np.uint8)
    if arr.shape[:2] != (opts.size[1], opts.size[0]):
        raise ImageError(f"stored image is {arr.shape[1]}x{arr.shape[0]}, expected {opts.size[0]}x{opts.size[1]}")
    return arr, stored.layout.transform, (w, h)


class Predictor:
    """A trained run, ready to predict (``Predictor(run_dir).predict(paths)``)."""

    def __init__(self, run_dir):
        from .train import open_run

        self.config, self.model, self.inference = open_run(run_dir)
        self.names = self.config["dataset"]["keypoints"]
        self.skeleton = self.config["dataset"].get("skeleton") or []
        self.options = _image_options(self.config)

    def predict(self, paths: Iterable[str], bbox: Optional[Sequence[float]] = None, batch_size: int = 16):
        """Yield one :class:`Prediction` per image, in order."""
        from .metrics import to_original

        batch = []

        def flush():
            x = np.stack([b[1] for b in batch]).astype(np.float32)
            y = np.asarray(self.inference(x, training=False))[..., :2]
            st = np.tile([[self.options.size[0], self.options.size[1]]], (len(batch), 1))
            px = to_original(y, st, np.asarray([b[2] for b in batch]))
            for b, p in zip(batch, px):
                yield Prediction(b[0], b[3][0], b[3][1], [[float(v[0]), float(v[1])] for v in p],
                                 list(bbox) if bbox is not None else None)
            batch.clear()

        for path in paths:
            arr, transform, size = prepare(path, self.options, bbox)
            batch.append((path, arr, transform, size))
            if len(batch) == batch_size:
                yield from flush()
        if batch:
            yield from flush()


def csv_cell(text: str) -> str:
    """A text cell that a spreadsheet shows as text, never runs as a formula (CSV injection): a leading
    ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a ``'`` in front (OWASP's advice)."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def write(predictions: Sequence[Prediction], out, fmt: str, names: Sequence[str]) -> None:
    """Write predictions to a text stream as JSON Lines, CSV (one row per image, NAME_x/NAME_y
    columns) or COCO results (a JSON list)."""
    if fmt == "jsonl":
        for p in predictions:
            out.write(json.dumps({"image": p.image, "width": p.width, "height": p.height,
                                  "keypoints": {n: [round(x, 3), round(y, 3)] for n, (x, y) in zip(names, p.keypoints)},
                                  **({"bbox": p.bbox} if p.bbox else {})}) + "\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["image", "width", "height", *[csv_cell(f"{n}_{c}") for n in names for c in ("x", "y")]])
        for p in predictions:
            w.writerow([csv_cell(p.image), p.width, p.height, *[f"{v:.3f}" for xy in p.keypoints for v in xy]])
    elif fmt == "coco":
        res = []
        for i, p in enumerate(predictions):
            kps = []
            for x, y in p.keypoints:
                kps += [round(x, 3), round(y, 3), 2]
            res.append({"image_id": i + 1, "file_name": p.image, "category_id": 1, "keypoints": kps, "score": 1.0})
        out.write(json.dumps(res) + "\n")
    else:
        raise ValueError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")


def draw(prediction: Prediction, skeleton, out_dir, radius: Optional[float] = None) -> Path:
    """Save the original image with the keypoints and the skeleton drawn; returns the file written."""
    from PIL import ImageDraw

    from .images import SourceImage, to_rgb
    from .manifest import atomic_output

    src = SourceImage(prediction.image)
    im, _ = src.load()
    im = to_rgb(im).copy()
    d = ImageDraw.Draw(im)
    r = radius or max(2.0, max(im.size) / 150)
    pts = prediction.keypoints
    for a, b in skeleton:
        if a < len(pts) and b < len(pts):
            d.line([tuple(pts[a]), tuple(pts[b])], fill=(0, 255, 0), width=max(1, int(r / 2)))
    for x, y in pts:
        d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 0, 0), outline=(255, 255, 255))
    out = Path(out_dir) / (Path(prediction.image).stem + ".png")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    with atomic_output(str(out), "wb") as f:
        f.write(buf.getvalue())
    return out
