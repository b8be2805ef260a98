"""Multi-instance pose, top-down (SLEAP's centroid + centred-instance pair): training both stages into one
run directory, and predicting every instance of a frame without boxes (docs/multi-instance.md).

* **Centroid stage** (``centroid.keras``): the U-Net heatmap model with one channel on whole frames resized by
  ``scale`` (:func:`kpconv.model.centroid.centroid_scale`), trained on windows of at most
  :data:`CENTROID_MAX_INPUT` pixels; its target is the maximum of Gaussians at every instance centre
  (:class:`kpconv.model.losses.CentroidLoss`), instances are its peaks (:func:`kpconv.model.centroid.find_peaks`).
* **Instance stage** (``model.keras``): the usual keypoint heatmap model on ``crop`` x ``crop`` crops centred on
  one instance (:func:`kpconv.model.centroid.instance_crop`), its targets that instance's keypoints only.

:func:`train_multi` reads shards of record spec 2 of any image size and shares ``time_limit`` between the
stages (:data:`CENTROID_SHARE`); ``config.json``'s ``"stages"`` say how the models are chained.
:class:`MultiPredictor`: frames -> centroid peaks (or the centres of given boxes) -> crops around each, batched
across instances and frames -> instance model -> keypoints in original pixels, each instance scored
(:data:`SCORES`).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import centroid as cgeom, metrics
from ..errors import TrainError
from .predict import FilePredictor, Prediction, read_image
from .video import is_video

CENTROID_FILE = "centroid.keras"
INSTANCE_FILE = "model.keras"
CENTROID_SHARE = 1.0 / 3.0          # of --time-limit for the centroid stage; the rest for the instance stage
CENTROID_MAX_INPUT = 192            # the centroid stage trains on windows of at most this many (resized) pixels
CENTROID_STRIDE = 4
CENTROID_SIGMA = 1.0                # cells: touching instances keep separate peaks
# (a heatmap of stride 2, sigma 1.5 cells, for small touching animals at full resolution was measured worse on the
# small-animal benchmark, 15 min: AP@0.5 0.506, recall 0.700 against 0.876, 0.891 with stride 4: 13 epochs, not 25)
CENTROID_BATCH = 8
CENTROID_ALPHA = 0.5                # width of the centroid U-Net (finding blobs needs fewer channels than poses)
CENTROID_RANDOM_WINDOWS = 0.25      # share of training windows placed anywhere (the others around an instance)
CENTROID_FIXED_WINDOWS = 8          # windows cut once per frame when the resized frames do not fit in memory
PEAK_THRESHOLD = 0.2                # a centroid peak below this is no instance
STEPS_PER_EPOCH = 50
# Animals are mostly filmed from above and face every way, and a clip's training frames may show only some
# headings (two-flies: the flies of frames 0-1199 face one way, those of 1300-1499 turn): both stages train with
# rotations of up to +-ROTATION_ANY degrees (SLEAP's setting for such data) unless --augment-rotate is given or the
# keypoints are COCO's 17 person keypoints (upright subjects: the recipe's +-25).
ROTATION_ANY = 180.0
ANCHOR_MIN_LABELLED = 0.8           # an anchor keypoint is labelled in at least this share of the instances
SCORES = ("product", "centroid", "keypoints")   # instance score: peak x mean confidence, peak, mean confidence
# Measured on the synthetic multi-figure set (bench_multi.py, 10 min, 60 test images): OKS mAP 0.537 ranking by
# the mean keypoint confidence, 0.510 by peak x confidence, 0.464 by the peak alone (AP@0.5 0.746, 0.746, 0.726)
DEFAULT_SCORE = "keypoints"
# both stages train as TensorFlow graphs, not XLA-compiled (as the single-instance heatmap step, kpconv.model.train):
# on the small-animal stand-in (bench_multi.py's small set), 2-minute runs alternating XLA, graph, graph, XLA on this
# 2-core CPU (niced tests beside them): centroid/instance epochs 5/13 and 6/15 with XLA, 6/15 and 7/15 as graphs
STAGE_JIT_COMPILE = False
POSE_NMS = 0.5   # MultiPredictor drops a pose that matches a better-scored one with OKS above this


def is_multi(config: dict) -> bool:
    """Whether a run's ``config.json`` describes a multi-instance (two-stage) run."""
    return bool(config.get("stages"))


def run_is_multi(run_dir) -> bool:
    """Whether ``run_dir`` holds a multi-instance run (False when it holds no readable config.json: the
    single-instance code then names the problem)."""
    from .run import CONFIG_FILE

    path = Path(run_dir) / CONFIG_FILE
    try:
        return is_multi(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------------ statistics
def instance_stats(shard_dir, split: str) -> dict:
    """What the stage sizes are chosen from, read from the records without TensorFlow: every instance box's
    longer side (stored pixels), instances per image, images, each instance centre's distance to the nearest
    other centre of its image (stored pixels)."""
    from ..data.dataset_info import DatasetInfo
    from ..data.records import decode_record
    from ..data.tfrecord import read_records

    info = DatasetInfo.read(shard_dir)
    k = info.num_keypoints
    sides, counts, near = [], [], []
    labelled, spread = np.zeros(k), np.zeros(k)
    for path in info.files(split):
        for data in read_records(path, info.compression_name):
            r = decode_record(data, k)
            w, h = r["image/width"], r["image/height"]
            b = r["instance/bbox"]
            side = max(b[2] * w, b[3] * h)
            sides.append(side)
            if r["instance/index"] == 0:
                centres = np.reshape(r["image/instances/center"], (-1, 2)) * [w, h]
                counts.append(len(centres))
                if len(centres) > 1:        # each centre's distance to its nearest neighbour (stored px)
                    d = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
                    np.fill_diagonal(d, np.inf)
                    near.extend(d.min(1).tolist())
            m = np.asarray(r["keypoints/visibility"]) > 0
            if m.any() and side > 0:
                xy = np.stack([np.asarray(r["keypoints/x"]) * w, np.asarray(r["keypoints/y"]) * h], -1)
                d = np.hypot(*(xy - xy[m].mean(0)).T) / side
                labelled += m
                spread += np.where(m, d, 0.0)
    return {"sides": sides, "max_instances": max(counts) if counts else 0, "images": len(counts),
            "records": len(sides), "labelled": labelled, "spread": spread, "neighbour_distances": near}


def choose_anchor(stats: dict, names: Sequence[str], min_labelled: float = ANCHOR_MIN_LABELLED) -> Optional[int]:
    """The keypoint the stages centre instances on (SLEAP's anchor part): of the keypoints labelled in at least
    ``min_labelled`` of the instances, the one closest on average to the mean of its instance's labelled
    keypoints (relative to the instance size), the most central body part; None when none qualifies (then the
    middle of the labelled keypoints' box, ``image/instances/center``, is the centre)."""
    n = max(1, stats["records"])
    lab, spread = np.asarray(stats["labelled"], np.float64), np.asarray(stats["spread"], np.float64)
    ok = lab >= min_labelled * n
    if not ok.any():
        return None
    mean = np.where(ok, spread / np.maximum(lab, 1), np.inf)
    return int(np.argmin(mean))


# ----------------------------------------------------------------------------------------- tf pipeline
def crop_boxes_tf(centres, region, out, image_size):
    """``tf.image.crop_and_resize`` boxes (M, 4) ``[y0, x0, y1, x1]`` for regions of ``region`` (2,) or (M, 2)
    ``[rw, rh]`` stored pixels centred on ``centres`` (M, 2) px, sampled into ``out`` ``(ow, oh)`` pixels, in images
    of ``image_size`` (M, 2) ``[w, h]``: output pixel ``j``'s centre samples the input at
    ``cx - rw / 2 + (j + 0.5) * rw / ow`` (continuous convention). Pixels outside the image are 0."""
    import tensorflow as tf

    c = tf.cast(centres, tf.float32)
    reg = tf.broadcast_to(tf.cast(region, tf.float32), tf.shape(c))
    size = tf.cast(image_size, tf.float32)
    ow, oh = tf.cast(out[0], tf.float32), tf.cast(out[1], tf.float32)
    x0 = c[:, 0] - reg[:, 0] / 2.0
    y0 = c[:, 1] - reg[:, 1] / 2.0
    # crop_and_resize samples at index space y0 * (H - 1) + i * (y1 - y0) * (H - 1) / (oh - 1)
    ax = x0 + 0.5 * reg[:, 0] / ow - 0.5
    bx = x0 + (ow - 0.5) * reg[:, 0] / ow - 0.5
    ay = y0 + 0.5 * reg[:, 1] / oh - 0.5
    by = y0 + (oh - 0.5) * reg[:, 1] / oh - 0.5
    wm1 = tf.maximum(size[:, 0] - 1.0, 1.0)
    hm1 = tf.maximum(size[:, 1] - 1.0, 1.0)
    return tf.stack([ay / hm1, ax / wm1, by / hm1, bx / wm1], -1)


def _parse(num_keypoints: int, anchor: Optional[int] = None):
    import tensorflow as tf

    from ..data.records import feature_description

    desc = feature_description(num_keypoints)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, desc)
        img = tf.io.decode_image(ex["image/encoded"], channels=3, expand_animations=False)
        wh = tf.cast(tf.stack([ex["image/width"], ex["image/height"]]), tf.float32)
        centres = tf.reshape(tf.sparse.to_dense(ex["image/instances/center"]), (-1, 2)) * wh
        kps = tf.reshape(tf.sparse.to_dense(ex["image/instances/keypoints"]), (-1, num_keypoints, 3))
        if anchor is not None:      # the anchor keypoint where it is labelled, else the box's middle
            centres = tf.where(kps[:, anchor, 2:3] > 0, kps[:, anchor, :2] * wh, centres)
        return {"image": img, "size": wh, "keypoints": tf.stack([ex["keypoints/x"], ex["keypoints/y"]], -1) * wh,
                "visibility": ex["keypoints/visibility"], "index": ex["instance/index"], "centres": centres}

    return parse


def _records(info, split: str):
    import tensorflow as tf

    files = info.files(split)
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=info.compression or ""),
        cycle_length=min(len(files), 8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _augment(options, crop: bool):
    from .pipeline import Augment

    if not options.augment:
        return None
    return Augment(flip=0.0 if not crop else options.augment_flip, rotation=options.augment_rotate,
                   scale=tuple(options.augment_scale), translate=0.05, brightness=options.augment_brightness,
                   contrast=tuple(options.augment_contrast), crop=None)


def _finish(ds, batch: int, aug, perm, seed):
    """Batched ``(images, targets (B, N, 3))`` with the pipeline's augmentation (whole batches, one warp)."""
    import tensorflow as tf

    from .pipeline import augment_batch

    ds = ds.batch(batch, drop_remainder=True)
    if aug is None:
        return ds.map(lambda e: (tf.cast(e["image"], tf.float32),
                                 tf.concat([e["keypoints"], tf.cast(e["visibility"] > 0, tf.float32)[..., None]], -1)))
    seeds = tf.data.Dataset.random(seed=seed).batch(2)

    def apply(e, s):
        img, kp, vis = augment_batch(e["image"], e["keypoints"], e["visibility"], s, aug, perm)
        return img, tf.concat([kp, vis[..., None]], -1)

    return tf.data.Dataset.zip((ds, seeds)).map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _cached(ds, nbytes: float):
    """``ds.cache()`` when its elements need less than :data:`kpconv.model.pipeline.CACHE_LIMIT_BYTES` in memory."""
    from .pipeline import CACHE_LIMIT_BYTES

    return ds.cache() if nbytes < CACHE_LIMIT_BYTES else ds


def instance_dataset(split: str, info, crop: int, scale: float, batch: int, seed: int, aug, perm,
                     anchor: Optional[int] = None):
    """The instance stage's training batches: ``crop`` x ``crop`` crops (covering ``crop / scale`` stored pixels)
    centred on each record's instance centre, its keypoints normalized to the crop (outside: unlabelled). The
    crops are cut once (each frame decoded once) and kept in memory when they fit; augmentation follows."""
    import tensorflow as tf

    region = crop / scale

    def to_crop(e):
        c = e["centres"][e["index"]]
        box = crop_boxes_tf(c[None], [region, region], (crop, crop), e["size"][None])
        img = tf.image.crop_and_resize(tf.cast(e["image"][None], tf.float32), box, [0], (crop, crop))[0]
        kp = (e["keypoints"] - (c - region / 2.0)) / region
        inside = tf.reduce_all((kp >= 0.0) & (kp < 1.0), -1)
        vis = tf.where(inside & (e["visibility"] > 0), 1.0, 0.0)
        return {"image": tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8),
                "keypoints": tf.where(inside[:, None], kp, 0.0), "visibility": vis}

    n = info.split(split).num_records
    ds = _records(info, split).map(_parse(info.num_keypoints, anchor), num_parallel_calls=tf.data.AUTOTUNE)
    ds = _cached(ds.map(to_crop, num_parallel_calls=tf.data.AUTOTUNE), n * crop * crop * 3)
    ds = ds.shuffle(min(n, 4096), seed=seed, reshuffle_each_iteration=True).repeat()
    return _finish(ds, batch, aug, perm, seed).prefetch(tf.data.AUTOTUNE)


def centroid_input_size(frame_size: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """(w, h) of a whole frame of ``frame_size`` at the centroid stage's ``scale``."""
    return max(1, int(round(frame_size[0] * scale))), max(1, int(round(frame_size[1] * scale)))


def resize_frames(frames, scale: float):
    """Whole frames (B, H, W, 3) -> the centroid stage's input (B, oh, ow, 3) float32 in [0, 255], as training
    and prediction both make it: ``crop_and_resize`` over ``(ow, oh) / scale`` pixels centred on the frame
    (:func:`crop_boxes_tf`), so a resized pixel ``j`` samples ``w / 2 - ow / (2 scale) + (j + 0.5) / scale``."""
    import tensorflow as tf

    n = tf.shape(frames)[0]
    hw = tf.shape(frames)[1:3]
    size = tf.tile(tf.cast(tf.stack([hw[1], hw[0]]), tf.float32)[None], (n, 1))
    ow = tf.maximum(1, tf.cast(tf.round(tf.cast(hw[1], tf.float32) * scale), tf.int32))
    oh = tf.maximum(1, tf.cast(tf.round(tf.cast(hw[0], tf.float32) * scale), tf.int32))
    out_wh = tf.cast(tf.stack([ow, oh]), tf.float32)
    boxes = crop_boxes_tf(size / 2.0, out_wh[None] / scale, (ow, oh), size)
    # uint8 frames go in as they are: the op converts each sampled pixel to float32 itself (the same values),
    # without a float32 copy of every whole frame (1024x1024 frames: 30 ms instead of 55 ms per 8 on 2 cores)
    small = tf.image.crop_and_resize(frames if frames.dtype == tf.uint8 else tf.cast(frames, tf.float32), boxes,
                                     tf.range(n), tf.stack([oh, ow]))
    return tf.clip_by_value(tf.round(small), 0.0, 255.0)


def window_at(image, centre, window: int):
    """The ``window`` x ``window`` pixels of ``image`` (H, W, C) centred on ``centre`` (x, y), a whole pixel
    position (window even): pixels ``x0 + j`` with ``x0 = centre - window / 2``, those outside the image 0, as
    ``crop_and_resize`` with :func:`crop_boxes_tf` samples them at this size, but sliced, not resampled (the
    centroid stage's training windows of full-HD frames: the whole frame was cast to float for each window)."""
    import tensorflow as tf

    x0 = tf.cast(tf.round(tf.cast(centre, tf.float32) - window / 2.0), tf.int32)
    size = tf.shape(image)[1::-1]
    lo = tf.clip_by_value(x0, 0, size)
    hi = tf.clip_by_value(x0 + window, lo, size)
    part = image[lo[1]:hi[1], lo[0]:hi[0]]
    img = tf.pad(part, [[lo[1] - x0[1], x0[1] + window - hi[1]], [lo[0] - x0[0], x0[0] + window - hi[0]], [0, 0]])
    return tf.ensure_shape(img, (window, window, None))


def centroid_dataset(split: str, info, scale: float, window: int, max_instances: int, batch: int,
                     seed: int, aug, frame_sizes: Sequence[Tuple[int, int]] = (), anchor: Optional[int] = None,
                     images: Optional[int] = None):
    """The centroid stage's training batches: one per image (its records of ``instance/index`` 0), resized by
    ``scale`` once (kept in memory when the ``images`` resized frames fit), then a ``window`` x ``window`` part of
    it (the whole frame, padded, when it fits; else around a random instance centre, or anywhere for
    :data:`CENTROID_RANDOM_WINDOWS` of them), with every centre (padded to ``max_instances``, mask 0). When the
    frames do not fit in memory, :data:`CENTROID_FIXED_WINDOWS` windows of each are cut once and kept."""
    import tensorflow as tf

    def resized(e):
        small = resize_frames(e["image"][None], scale)[0]
        sh = tf.shape(small)
        rsize = tf.cast(tf.stack([sh[1], sh[0]]), tf.float32)
        # stored px -> resized px: x_r = (x - (w / 2 - ow / (2 scale))) * scale
        origin = e["size"] / 2.0 - rsize / (2.0 * scale)
        return {"image": tf.cast(small, tf.uint8), "size": rsize, "centres": (e["centres"] - origin) * scale}

    def to_window(e, s):
        n = tf.shape(e["centres"])[0]
        size = e["size"]
        region = float(window)
        fits = tf.reduce_all(size <= region)
        pick = tf.random.stateless_uniform((), s, 0, n, tf.int32)
        jitter = tf.random.stateless_uniform((2,), s + 1, -0.3, 0.3) * region
        anywhere = tf.random.stateless_uniform((2,), s + 2) * size
        half = tf.minimum(size / 2.0, region / 2.0)
        chosen = tf.where(tf.random.stateless_uniform((), s + 3) < CENTROID_RANDOM_WINDOWS, anywhere,
                          e["centres"][pick] + jitter)
        c = tf.round(tf.where(fits, size / 2.0, tf.clip_by_value(chosen, half, size - half)))   # whole pixels
        img = window_at(e["image"], c, window)
        cen = (e["centres"] - (c - region / 2.0)) / region
        inside = tf.reduce_all((cen >= 0.0) & (cen < 1.0), -1)
        m = tf.minimum(n, max_instances)
        cen = tf.pad(cen[:max_instances], [[0, max_instances - m], [0, 0]])
        vis = tf.pad(tf.cast(inside, tf.float32)[:max_instances], [[0, max_instances - m]])
        return {"image": img, "keypoints": tf.ensure_shape(cen, (max_instances, 2)),
                "visibility": tf.ensure_shape(vis, (max_instances,))}

    if images is None:
        images = info.split(split).num_records      # (an upper bound: records, not images)
    biggest = max((w * h for w, h in frame_sizes), default=1 << 22)
    first = {"instance/index": tf.io.FixedLenFeature((), tf.int64)}     # (one record per image decoded)
    ds = _records(info, split).filter(
        lambda r: tf.equal(tf.io.parse_single_example(r, first)["instance/index"], 0))
    ds = ds.map(_parse(info.num_keypoints, anchor), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(resized, num_parallel_calls=tf.data.AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=seed + 1).batch(2)
    from .pipeline import CACHE_LIMIT_BYTES

    if images * biggest * scale * scale * 3 < CACHE_LIMIT_BYTES:      # the resized frames, in memory
        ds = ds.cache().shuffle(1024, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = tf.data.Dataset.zip((ds, seeds)).map(to_window, num_parallel_calls=tf.data.AUTOTUNE)
    else:   # too many big frames to keep: CENTROID_FIXED_WINDOWS windows of each, cut once and kept (decoding a
        # full-HD frame for every window starved the stage: 1 epoch in 80 s), varied by the augmentation
        ds = ds.flat_map(lambda e: tf.data.Dataset.from_tensors(e).repeat(CENTROID_FIXED_WINDOWS))
        ds = tf.data.Dataset.zip((ds, seeds)).map(to_window, num_parallel_calls=tf.data.AUTOTUNE)
        ds = _cached(ds, images * CENTROID_FIXED_WINDOWS * window * window * 3)
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True).repeat()
    return _finish(ds, batch, aug, None, seed).prefetch(tf.data.AUTOTUNE)


# -------------------------------------------------------------------------------------------- training
@dataclass
class StagePlan:
    centroid_scale: float
    centroid_window: int
    crop: int
    crop_scale: float
    max_instances: int


def plan_stages(stats: dict, frame_sizes: Sequence[Tuple[int, int]] = ()) -> StagePlan:
    """The stage sizes for the instance statistics of :func:`instance_stats` (see :mod:`kpconv.model.centroid`)."""
    s = cgeom.centroid_scale(stats["sides"], neighbour_distances=stats.get("neighbour_distances", ()))
    biggest = max((max(w, h) for w, h in frame_sizes), default=CENTROID_MAX_INPUT / s)
    window = min(CENTROID_MAX_INPUT, int(math.ceil(biggest * s / 32)) * 32)
    crop, crop_scale = cgeom.instance_crop(stats["sides"])
    return StagePlan(s, max(32, window), crop, crop_scale, max(1, stats["max_instances"]))


def _fit_stage(model, loss, ds, options, seconds: Optional[float], epochs: int, label: str, log: Callable):
    import keras

    from .callbacks import NanGuard, TimeBudget, epoch_cosine
    model.compile(optimizer=keras.optimizers.Adam(options.learning_rate), loss=loss, jit_compile=STAGE_JIT_COMPILE)
    lr0 = options.learning_rate
    nan = NanGuard()
    cbs = [nan]
    if seconds is not None:
        cbs.append(TimeBudget(seconds, time.monotonic(), lr0, lr0 * options.min_learning_rate_factor))
        epochs = 10 ** 6
    else:
        cbs.append(epoch_cosine(lr0, lr0 * options.min_learning_rate_factor, 0, epochs))
    hist = model.fit(ds, epochs=epochs, steps_per_epoch=options.steps_per_epoch or STEPS_PER_EPOCH, callbacks=cbs,
                     verbose=options.verbose, shuffle=False)
    if nan.where is not None:
        raise TrainError(f"{label} stage: loss became NaN at epoch {nan.where[0] + 1}, batch {nan.where[1] + 1} "
                         "(try a lower --learning-rate or check the shards with 'kpconv inspect')")
    losses = hist.history.get("loss", [])
    log(f"{label} stage: {len(losses)} epoch(s), final loss {losses[-1]:.5f}" if losses else f"{label}: no epoch")
    return len(losses), (float(losses[-1]) if losses else None)


def train_multi(shard_dir, run_dir, options=None, log: Callable[[str], None] = lambda s: None) -> dict:
    """Train the centroid and the centred-instance stage on ``shard_dir`` (record spec 2, any image size) into
    ``run_dir`` (which must not hold a run). ``options`` a :class:`kpconv.model.train.TrainOptions` (heatmap head,
    ``unet`` from random weights: pretrained backbones and ``--resume`` are for single-instance runs);
    ``options.time_limit`` minutes are shared by the stages (:data:`CENTROID_SHARE`). Returns config.json."""
    import keras

    from . import losses, network as kmodel
    from ..data.dataset_info import DatasetInfo, dataset_sha256, verify_shards
    from .evaluate import calibrate_crops
    from .pipeline import frame_sizes as frame_sizes_of
    from .run import CONFIG_FILE, save_model, write_json
    from .train import TrainOptions, _versions, resolve_recipe

    started = time.monotonic()
    run, shard_dir = Path(run_dir), Path(shard_dir)
    info = DatasetInfo.read(shard_dir)
    verify_shards(info)
    options = options or TrainOptions(weights="none")
    if options.head != "heatmap":
        raise TrainError(f"--head {options.head}: multi-instance training uses the heatmap head")
    if options.weights == "imagenet":       # (kpconv train's default)
        log("multi-instance: both stages start from random weights (the unet backbone); --weights imagenet is "
            "for single-instance runs")
    elif options.weights not in (None, "", "none"):
        raise TrainError(f"--weights {options.weights}: multi-instance training starts from random weights "
                         "(--weights none)")
    if (run / CONFIG_FILE).exists():
        raise TrainError(f"{run}: already holds a run; choose another -o")
    rotate_given = options.augment_rotate
    options = resolve_recipe(TrainOptions(**{**options.to_dict(), "weights": "none"}), info)
    if info.split(options.train_split).num_records == 0:
        raise TrainError(f"{info.path}: split '{options.train_split}' has no records")
    if options.time_limit is not None and not (options.time_limit > 0 and math.isfinite(options.time_limit)):
        raise TrainError(f"time limit {options.time_limit}: expected a positive number of minutes")
    stats = instance_stats(shard_dir, options.train_split)
    frame_sizes = sorted(frame_sizes_of(shard_dir, options.train_split))
    plan = plan_stages(stats, frame_sizes)
    anchor = choose_anchor(stats, info.keypoint_names)
    from .metrics import COCO_SIGMAS

    if rotate_given is None and not (info.keypoint_names and all(n in COCO_SIGMAS for n in info.keypoint_names)):
        options.augment_rotate = ROTATION_ANY
    log(f"multi-instance: {stats['images']} image(s), up to {plan.max_instances} instance(s) each; centroid stage "
        f"at scale {plan.centroid_scale:g} ({plan.centroid_window} px windows), instance stage on {plan.crop} px "
        f"crops (scale {plan.crop_scale:g}); instances centred on "
        f"{repr(info.keypoint_names[anchor]) if anchor is not None else 'the middle of their labelled keypoints'}; "
        f"rotations up to {options.augment_rotate:g} degrees")
    stride = options.heatmap_stride
    c_cfg = kmodel.ModelConfig(num_keypoints=1, image_size=(plan.centroid_window, plan.centroid_window),
                               backbone="unet", alpha=CENTROID_ALPHA * options.alpha, head="heatmap", weights="none",
                               heatmap_stride=CENTROID_STRIDE, bn_momentum=0.9)
    i_cfg = kmodel.ModelConfig(num_keypoints=info.num_keypoints, image_size=(plan.crop, plan.crop),
                               backbone=options.backbone if options.backbone == "unet" else "unet",
                               alpha=options.alpha, head="heatmap", weights="none", heatmap_stride=stride,
                               bn_momentum=0.9)
    total = options.time_limit * 60.0 if options.time_limit is not None else None
    epochs = options.epochs or 30
    config = {
        "options": options.to_dict(),
        "model": i_cfg.to_dict(),
        "dataset": {"shard_dir": str(shard_dir.resolve()), "sha256": dataset_sha256(shard_dir, info),
                    "keypoints": info.keypoint_names, "skeleton": [list(p) for p in info.skeleton],
                    "flip_pairs": [list(p) for p in info.flip_pairs], "image_size": None,
                    "preprocessing": info.preprocessing(),
                    "splits": {n: s.num_records for n, s in info.splits.items()},
                    "train_split": options.train_split, "val_split": None,
                    "instances": {"max_per_image": plan.max_instances, "images": stats["images"],
                                  "median_box_px": float(np.median(stats["sides"])) if stats["sides"] else None,
                                  "p90_box_px": float(np.percentile(stats["sides"], 90)) if stats["sides"] else None}},
        "anchor": info.keypoint_names[anchor] if anchor is not None else None,
        "stages": [
            {"name": "centroid", "model": CENTROID_FILE, "scale": plan.centroid_scale, "window": plan.centroid_window,
             "stride": CENTROID_STRIDE, "sigma": CENTROID_SIGMA, "peak_threshold": PEAK_THRESHOLD,
             "max_instances": plan.max_instances, "model_config": c_cfg.to_dict(),
             "time_share": CENTROID_SHARE if total else None},
            {"name": "instance", "model": INSTANCE_FILE, "crop": plan.crop, "scale": plan.crop_scale,
             "stride": stride, "sigma": options.sigma, "time_share": 1 - CENTROID_SHARE if total else None}],
        "score": DEFAULT_SCORE,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    run.mkdir(parents=True, exist_ok=True)
    try:
        keras.utils.set_random_seed(options.seed)
        spent = time.monotonic() - started
        c_seconds = max(1.0, (total - spent) * CENTROID_SHARE) if total else None
        c_model = kmodel.build_model(c_cfg, None)
        c_ds = centroid_dataset(options.train_split, info, plan.centroid_scale, plan.centroid_window,
                                plan.max_instances, CENTROID_BATCH, options.seed, _augment(options, False), frame_sizes,
                                anchor, stats["images"])
        c_epochs, c_loss = _fit_stage(c_model, losses.CentroidLoss(CENTROID_STRIDE, CENTROID_SIGMA), c_ds, options,
                                      c_seconds, epochs, "centroid", log)
        save_model(c_model, run / CENTROID_FILE)
        # (the calibration and saving after the instance stage are kept inside the budget)
        i_seconds = max(1.0, total - (time.monotonic() - started) - min(30.0, 0.05 * total)) if total else None
        i_model = kmodel.build_model(i_cfg, None)
        i_ds = instance_dataset(options.train_split, info, plan.crop, plan.crop_scale, options.batch_size,
                                options.seed, _augment(options, True), info.flip_permutation(), anchor)
        i_epochs, i_loss = _fit_stage(i_model, losses.HeatmapLoss(stride, options.sigma), i_ds, options, i_seconds,
                                      epochs, "instance", log)
        save_model(i_model, run / INSTANCE_FILE)
        plain = instance_dataset(options.train_split, info, plan.crop, plan.crop_scale, 16, options.seed,
                                 None, None, anchor)
        config["calibration"] = calibrate_crops(i_model, plain)
        config["stages"][0].update(epochs=c_epochs, final_loss=c_loss)
        config["stages"][1].update(epochs=i_epochs, final_loss=i_loss)
        config["train_seconds"] = round(time.monotonic() - started, 1)
        write_json(run / CONFIG_FILE, config)
    except BaseException:
        for name in (CENTROID_FILE, INSTANCE_FILE, CONFIG_FILE):
            (run / name).unlink(missing_ok=True)
        raise
    return config


# ------------------------------------------------------------------------------------------ prediction
@dataclass
class Found:
    """One instance found in one frame (stored == original pixels for ``--image-size none`` runs)."""

    centre: Tuple[float, float]
    peak: float
    keypoints: np.ndarray           # (K, 3): x, y px, confidence
    score: float


class MultiPredictor(FilePredictor):
    """A multi-instance run, ready to predict every instance of images and video frames::

        p = kpconv.model.multi.MultiPredictor("run/")
        for pred in p.predict("clip.mp4"):        # one Prediction per instance, ``instance`` 0, 1, ...
            print(pred.frame, pred.instance, pred.score, pred.keypoints)

    ``max_instances`` (default: the most seen in training) and ``min_score`` bound what is returned;
    ``peak_threshold`` the centroid peaks; ``pose_nms`` the OKS above which a pose is a duplicate of a better one
    (None keeps every pose; boxes given are never merged); ``score`` one of :data:`SCORES`; ``runtime`` the two models'
    (:data:`kpconv.model.inference.RUNTIMES`: ``"tf"`` or ``"onnx"``). :meth:`predict`'s ``bbox`` (one box for every
    input) or ``boxes`` (per image or frame) skip the centroid stage: each box's centre is an instance's."""

    def __init__(self, run_dir, max_instances: Optional[int] = None, min_score: float = 0.0,
                 peak_threshold: Optional[float] = None, score: Optional[str] = None, batch_size: int = 8,
                 flip_test: Optional[bool] = None, runtime: str = "tf", pose_nms: Optional[float] = POSE_NMS):
        import tensorflow as tf

        from . import network as kmodel
        from .inference import Inference, flip_permutation
        from .run import CONFIG_FILE, read_config

        self.run_dir = Path(run_dir)
        self.config = read_config(self.run_dir)
        if not is_multi(self.config):
            raise TrainError(f"{self.run_dir}: a single-instance run (no 'stages' in {CONFIG_FILE})")
        stages = {s["name"]: s for s in self.config["stages"]}
        self.cstage, self.istage = stages["centroid"], stages["instance"]
        self.names = list(self.config["dataset"]["keypoints"])
        self.skeleton = [tuple(p) for p in self.config["dataset"].get("skeleton") or []]
        self.flip_pairs = [tuple(p) for p in self.config["dataset"].get("flip_pairs") or []]
        self.max_instances = int(max_instances or self.cstage["max_instances"])
        self.max_individuals = self.max_instances
        self.min_score = float(min_score)
        self.pose_nms = pose_nms
        self._sigmas = metrics.oks_sigmas(self.names)
        self.peak_threshold = float(self.cstage["peak_threshold"] if peak_threshold is None else peak_threshold)
        self.score = score or self.config.get("score", DEFAULT_SCORE)
        if self.score not in SCORES:
            raise TrainError(f"unknown instance score '{self.score}' (known: {', '.join(SCORES)})")
        for st in (self.cstage, self.istage):
            if not (self.run_dir / st["model"]).is_file():
                raise TrainError(f"{self.run_dir / st['model']}: missing (the {st['name']} stage's model)")
        # both stages run through kpconv.model.inference.Inference (one compiled function per input size); the
        # resizing and the crops around each instance are this chain's preprocessing, one graph each
        self.centroid = Inference(kmodel.load_model(self.run_dir / self.cstage["model"]), heatmaps=True,
                                  batch_size=batch_size, runtime=runtime)
        # the test-time flip of the instance stage only when asked (--flip-test): not measured on multi-instance runs
        self.instance = Inference(kmodel.load_model(self.run_dir / self.istage["model"]),
                                  (self.config.get("calibration") or {}).get("params"), batch_size=4 * batch_size,
                                  flip_test=flip_permutation(self.config, True) if flip_test else None,
                                  runtime=runtime)
        crop, region = int(self.istage["crop"]), float(self.istage["crop"]) / float(self.istage["scale"])
        self.crop, self.region = crop, region
        scale = float(self.cstage["scale"])

        frames_spec = tf.TensorSpec((None, None, None, 3), tf.uint8)

        @tf.function(input_signature=[frames_spec])      # (one trace for every frame size and count)
        def resize(frames):
            return resize_frames(frames, scale)

        @tf.function(input_signature=[frames_spec, tf.TensorSpec((None, 2), tf.float32),
                                      tf.TensorSpec((None,), tf.int32)])
        def crops(frames, centres, index):
            size = tf.cast(tf.shape(frames)[2:0:-1], tf.float32)
            m = tf.shape(centres)[0]
            boxes = crop_boxes_tf(centres, [region, region], (crop, crop), tf.tile(size[None], (m, 1)))
            out = tf.image.crop_and_resize(frames, boxes, index, (crop, crop))   # (uint8 in: see resize_frames)
            return tf.clip_by_value(tf.round(out), 0.0, 255.0)

        self._resize, self._crops = resize, crops
        self._tensor = lambda frames: tf.convert_to_tensor(frames, tf.uint8)

    def centroid_heatmaps(self, frames) -> np.ndarray:
        """``frames`` uint8 (B, H, W, 3) of one size -> the centroid heatmaps (B, h, w) at the stage's scale."""
        return self.centroid(self._resize(self._tensor(frames)))[..., 0]

    def poses(self, frames, centres: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Keypoints (M, K, 3) (x, y original px, confidence) of the instances centred on ``centres`` (M, 2) px
        of ``frames[index]``, one batch across instances and frames."""
        if len(centres) == 0:
            return np.zeros((0, len(self.names), 3), np.float32)
        out = np.array(self.instance(self._crops(self._tensor(frames), np.asarray(centres, np.float32),
                                                 np.asarray(index, np.int32))))
        origin = np.asarray(centres, np.float32)[:, None, :] - self.region / 2.0
        out[..., :2] = origin + out[..., :2] * self.region
        return out

    def find(self, frames: np.ndarray, boxes: Optional[Sequence[Sequence[Sequence[float]]]] = None
             ) -> List[List[Found]]:
        """Every instance of each frame (``frames`` uint8 (B, H, W, 3)), best score first. ``boxes``: per frame,
        the boxes (x, y, w, h px) whose centres replace the centroid stage."""
        h, w = frames.shape[1:3]
        frames = self._tensor(frames)   # one copy into TensorFlow for both stages
        per_frame: List[List[Tuple[Tuple[float, float], float]]] = []
        if boxes is None:
            heat = self.centroid_heatmaps(frames)
            scale = float(self.cstage["scale"])
            ow, oh = centroid_input_size((w, h), scale)
            # the resized frame covers (ow, oh) / scale pixels centred on the frame (crop_boxes_tf's convention)
            x0, y0 = w / 2.0 - ow / (2.0 * scale), h / 2.0 - oh / (2.0 * scale)
            stride = float(self.cstage["stride"])
            for hm in heat:
                xy, val = cgeom.find_peaks(hm, self.peak_threshold, self.max_instances)
                per_frame.append([((x0 + x * stride / scale, y0 + y * stride / scale), float(v))
                                  for (x, y), v in zip(xy, val)])
        else:
            per_frame = [[((b[0] + b[2] / 2.0, b[1] + b[3] / 2.0), 1.0) for b in fb] for fb in boxes]
        centres = [c for f in per_frame for c, _ in f]
        index = [i for i, f in enumerate(per_frame) for _ in f]
        kps = self.poses(frames, np.asarray(centres, np.float32).reshape(-1, 2), np.asarray(index, np.int32))
        out, j = [], 0
        for f in per_frame:
            found = []
            for c, peak in f:
                k = kps[j]
                j += 1
                mean_conf = float(np.mean(k[:, 2])) if len(k) else 0.0
                peak1 = min(1.0, max(0.0, peak))        # (a heatmap peak may overshoot 1)
                score = {"product": peak1 * mean_conf, "centroid": peak1, "keypoints": mean_conf}[self.score]
                if score >= self.min_score:
                    found.append(Found(c, peak, k, float(score)))
            found.sort(key=lambda f_: -f_.score)
            out.append(found if boxes is not None else self._pose_nms(found))
        return out

    def _pose_nms(self, found: List[Found]) -> List[Found]:
        """Best score first, drop an instance whose pose matches a kept one with OKS above :attr:`pose_nms`:
        two centroid peaks on one animal give two crops that pose the same animal. Measured on the small-animal
        stand-in (bench_multi --only small's 15-minute run, 24 test frames, 110 animals): AP@0.5 0.877 -> 0.888,
        precision 0.742 -> 0.883, recall unchanged (0.891); on a run with a stride-2 centroid stage (more
        duplicates) AP@0.5 0.506 -> 0.691. 0.5 was the best of 0.3 (lost recall), 0.5, 0.7 and 0.9."""
        if self.pose_nms is None or len(found) < 2:
            return found
        kept: List[Found] = []
        for f in found:
            if all(metrics.pose_oks(f.keypoints, k.keypoints, self._sigmas) <= self.pose_nms for k in kept):
                kept.append(f)
        return kept

    def _items(self, path, frames, keep_frames, boxes_of):
        """One item per image or selected video frame; ``boxes``: the boxes given (their centres replace the
        centroid stage's) or None."""
        from . import video
        from ..progress import progress

        def given(frame):
            g = boxes_of(path, frame)
            return None if g is None else [b for b, _ in g]

        if is_video(path):
            fps, count, _ = video.info(path)
            decoded = progress(video.frames(path, frames), total=frames.expected(count, fps),
                               desc=Path(path).name, unit="frame")
            for index, t, arr in decoded:
                yield dict(file=path, array=arr, frame=index, time=round(t, 6),
                           pixels=arr if keep_frames else None, boxes=given(index))
        else:
            yield dict(file=path, array=read_image(path), frame=None, time=None, pixels=None, boxes=given(None))

    def _flush(self, batch):
        """One :class:`kpconv.model.predict.Prediction` per instance found (``instance`` 0, 1, ... by decreasing
        score)."""
        given = None if batch[0]["boxes"] is None else [b["boxes"] for b in batch]
        for b, found in zip(batch, self.find(np.stack([b["array"] for b in batch]), given)):
            h, w = b["array"].shape[:2]
            for i, f in enumerate(found):
                k = f.keypoints
                x0, y0 = float(k[:, 0].min()), float(k[:, 1].min())
                box = [x0, y0, float(k[:, 0].max()) - x0, float(k[:, 1].max()) - y0]
                yield Prediction(b["file"], w, h, [[float(v[0]), float(v[1]), float(v[2])] for v in k],
                                 box, round(f.score, 6), b["frame"], b["time"], i, b["pixels"])


# ------------------------------------------------------------------------------------------ evaluation
def labelled_images(shard_dir, split: str) -> Tuple[list, dict]:
    """The images of ``split`` with every labelled instance: ``[(key, stored image bytes, transform)]`` and
    ``{key: [{"keypoints": (K, 3) original px and visibility, "bbox": original px, "id": instance id}]}``."""
    from ..data.dataset_info import DatasetInfo
    from ..data.records import decode_record
    from ..data.tfrecord import read_records

    info = DatasetInfo.read(shard_dir)
    images, truth = {}, {}
    for path in info.files(split):
        for data in read_records(path, info.compression_name):
            r = decode_record(data, info.num_keypoints)
            key = r["image/source_path"]
            a, _, c, _, e, f = r["transform/stored_to_original"]
            w, h = r["image/width"], r["image/height"]
            x = np.asarray(r["keypoints/x"]) * w * a + c
            y = np.asarray(r["keypoints/y"]) * h * e + f
            v = np.asarray(r["keypoints/visibility"], np.float64)
            b = r["instance/bbox"]
            truth.setdefault(key, []).append({"keypoints": np.stack([x, y, v], -1), "id": r["instance/id"],
                                              "bbox": [b[0] * w * a + c, b[1] * h * e + f, b[2] * w * a, b[3] * h * e]})
            if key not in images:
                images[key] = (r["image/encoded"], (a, c, e, f))
    return [(k, d, t) for k, (d, t) in sorted(images.items())], truth


def evaluate_multi(run_dir, shard_dir, split: str = "test", oks_sigma: Optional[float] = None,
                   predictor: Optional[MultiPredictor] = None, batch_size: int = 8,
                   json_path: Optional[str] = None) -> Dict:
    """``kpconv eval`` for a multi-instance run: every image of ``split`` predicted without boxes, scored by
    :func:`kpconv.model.metrics.multi_instance_summary` (COCO OKS AP/AR, recall, precision, pixel errors)."""
    import io
    from itertools import groupby, islice

    from PIL import Image

    from ..data.dataset_info import DatasetInfo
    from ..data.images import to_rgb

    predictor = predictor or MultiPredictor(run_dir)
    info = DatasetInfo.read(shard_dir)
    names = predictor.names
    if info.keypoint_names != names:
        raise TrainError(f"{info.path}: keypoints {info.keypoint_names} differ from the run's {names}")
    images, truth = labelled_images(shard_dir, split)
    preds: Dict[str, list] = {}
    started = time.monotonic()
    decoded = ((key, t, np.asarray(to_rgb(Image.open(io.BytesIO(data))))) for key, data, t in images)
    for _, same_size in groupby(decoded, key=lambda x: x[2].shape):     # batches of one image size
        while group := list(islice(same_size, batch_size)):
            for (key, (a, c, e, f), _), found in zip(group, predictor.find(np.stack([g[2] for g in group]))):
                preds[key] = [{"keypoints": np.stack([f_.keypoints[:, 0] * a + c, f_.keypoints[:, 1] * e + f,
                                                      f_.keypoints[:, 2]], -1), "score": f_.score} for f_ in found]
    seconds = time.monotonic() - started
    result = metrics.multi_instance_summary(truth, preds, metrics.oks_sigmas(names, oks_sigma), names)
    result = {"run_dir": str(run_dir), "shard_dir": str(shard_dir), "split": split, "score": predictor.score,
              **result, "predict_seconds": round(seconds, 2)}
    if json_path:
        from ..data.manifest import atomic_output

        with atomic_output(json_path) as fh:
            fh.write(json.dumps(result, indent=2) + "\n")
    return result


def format_multi(result: Dict) -> str:
    """The multi-instance evaluation as the lines ``kpconv eval`` prints."""
    def f(v, spec=".3f"):
        return "-" if v is None else format(v, spec)

    lines = [f"{result['split']}: {result['images']} image(s), {result['instances']} labelled instance(s), "
             f"{result['predictions']} predicted (OKS sigmas {', '.join(map(str, sorted(set(result['oks_sigmas']))))})",
             f"OKS mAP {f(result['mAP'])}  AP@0.5 {f(result['AP@0.5'])}  AP@0.75 {f(result['AP@0.75'])}  "
             f"mAR {f(result['mAR'])}",
             f"instances: recall {f(result['recall'])}  precision {f(result['precision'])} (OKS >= "
             f"{result['match_oks']:g})",
             f"matched instances: mean error {f(result['mean_error_px'], '.2f')} px, median "
             f"{f(result['median_error_px'], '.2f')} px"]
    if result.get("per_keypoint"):
        lines.append("per keypoint (mean px): " + ", ".join(f"{k} {f(v, '.2f')}" for k, v in result["per_keypoint"].items()))
    return "\n".join(lines)
