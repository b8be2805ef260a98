"""Test helper: write small shards following ``kpconv/data/records.py`` (without ``kpconv shard``).

Each image is a dark square with one coloured dot per keypoint, so a model can learn the points and
the tests can check that a dot is still under its keypoint after augmentation.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NAMES = ["nose", "left_eye", "right_eye", "left_foot", "right_foot"]
FLIP_PAIRS = [(1, 2), (3, 4)]
SKELETON = [(0, 1), (0, 2), (0, 3), (0, 4)]
COLOURS = [(255, 255, 0), (255, 0, 0), (0, 0, 255), (255, 0, 255), (0, 255, 255)]


def make_example(rng, size, transform=None, bbox=None, fmt="png", original=None, invisible=(), num_keypoints=None):
    """One record as a dict of python values (and the image array); the first ``num_keypoints`` of
    NAMES (default: all)."""
    w, h = size
    k = num_keypoints or len(NAMES)
    xs = rng.uniform(0.2, 0.8, k)
    ys = rng.uniform(0.2, 0.8, k)
    vis = np.full(k, 2, np.int64)
    for i in invisible:
        vis[i] = 0
    im = Image.new("RGB", (w, h), (20, 20, 20))
    d = ImageDraw.Draw(im)
    r = max(1.5, w / 16)
    for i in range(k):
        if vis[i]:
            cx, cy = xs[i] * w, ys[i] * h
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[i])
    buf = io.BytesIO()
    im.save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
    ow, oh = original or (w, h)
    return {
        "image/encoded": buf.getvalue(), "image/format": fmt.encode(), "image/height": h, "image/width": w,
        "image/source_path": f"img_{rng.integers(1 << 30)}.{fmt}".encode(),
        "image/original_height": oh, "image/original_width": ow, "instance/id": b"0",
        "instance/bbox": list(bbox or [0.1, 0.1, 0.8, 0.8]), "instance/index": 0,
        "image/instances/center": [0.5, 0.5], "image/instances/bbox": list(bbox or [0.1, 0.1, 0.8, 0.8]),
        "image/instances/keypoints": [float(v) for i in range(k) for v in (xs[i], ys[i], vis[i])],
        "keypoints/x": [float(x) for x in xs], "keypoints/y": [float(y) for y in ys],
        "keypoints/visibility": [int(v) for v in vis],
        "transform/stored_to_original": list(transform or [ow / w, 0.0, 0.0, 0.0, oh / h, 0.0]),
        "_array": np.asarray(im),
    }


def to_example(rec):
    import tensorflow as tf

    feats = {}
    for name, value in rec.items():
        if name.startswith("_"):
            continue
        if isinstance(value, bytes):
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        elif isinstance(value, int):
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        elif name in ("keypoints/visibility",):
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
        else:
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def write_shards(out_dir, splits, size=(32, 32), num_shards=2, seed=0, **kw):
    """Write ``splits`` (``{name: n_records}``) of random dot images; returns ``{name: [records]}``."""
    import tensorflow as tf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    info_splits, written = {}, {}
    for split, n in splits.items():
        recs = [make_example(rng, size, **kw) for _ in range(n)]
        files = []
        for s in range(num_shards):
            name = f"{split}.tfrecord-{s:05d}-of-{num_shards:05d}"
            with tf.io.TFRecordWriter(str(out / name)) as wr:
                for rec in recs[s::num_shards]:
                    wr.write(to_example(rec))
            files.append(name)
        info_splits[split] = {"shards": [{"file": f, "records": len(recs[i::num_shards])}
                                         for i, f in enumerate(files)], "records": n}
        written[split] = recs
    k = kw.get("num_keypoints") or len(NAMES)
    from kpconv.data.records import SPEC_VERSION

    info = {"spec_version": SPEC_VERSION, "keypoints": NAMES[:k], "skeleton": [list(p) for p in SKELETON if max(p) < k],
            "flip_pairs": [list(p) for p in FLIP_PAIRS if max(p) < k],
            "image": {"size": [size[0], size[1]], "resize": "stretch", "crop": "none", "crop_pad": None},
            "compression": "none", "splits": info_splits}
    (out / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return written


def tiny_run(base) -> Path:
    """A tiny trained run (dense head, one epoch on 16 records of 32x32) in ``base/run``, its shards in
    ``base/shards``: the predict and output tests' model."""
    from click.testing import CliRunner

    from kpconv.cli import cli

    base = Path(base)
    write_shards(base / "shards", {"train": 16, "val": 4}, size=(32, 32))
    run = base / "run"
    r = CliRunner().invoke(cli, ["-q", "train", str(base / "shards"), "-o", str(run), "--weights", "none",
                                 "--alpha", "0.35", "--epochs", "1", "--batch-size", "8", "--head", "dense",
                                 "--no-augment"])
    assert r.exit_code == 0, r.output
    return run


def bbox_crop_copy(run, out) -> Path:
    """A copy of ``run`` (its config.json and model.keras) in ``out``, as if its shards had been cut to each
    instance's box (--crop bbox, no padding): the same model, a run that takes boxes."""
    import shutil

    out = Path(out)
    out.mkdir(parents=True)
    cfg = json.loads((Path(run) / "config.json").read_text())
    cfg["dataset"]["preprocessing"].update(crop="bbox", crop_pad=0.0)
    (out / "config.json").write_text(json.dumps(cfg))
    shutil.copy(Path(run) / "model.keras", out / "model.keras")
    return out
