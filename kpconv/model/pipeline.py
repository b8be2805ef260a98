"""The tf.data input pipeline over the shards written by ``kpconv shard`` (public API).

``load(shard_dir, split, batch_size, augment=..., seed=...)`` returns a ``tf.data.Dataset`` of
``(images, targets)``:

* ``images``: ``float32 (B, H, W, 3)``, pixel values in ``[0, 255]`` (the model rescales them);
* ``targets``: ``float32 (B, K, 3)``: ``x, y`` normalized to the image (continuous pixel convention,
  pixel ``i``'s centre is ``(i + 0.5) / size``) and a visibility mask (1 labelled and inside the
  frame, 0 otherwise: such keypoints contribute nothing to the losses and metrics).

With ``include_meta=True`` each element is ``(images, targets, meta)`` where ``meta`` holds what the
evaluation needs to go back to the original image: ``transform`` (B, 6) stored->original,
``stored_size`` (B, 2) ``[w, h]``, ``bbox`` (B, 4) normalized ``[x, y, w, h]``, ``original_size``
(B, 2) ``[w, h]``, ``source_path`` and ``instance_id``.

The stages: interleaved parallel reads over the shard files (file order shuffled), parallel parse
and decode, an in-memory cache of the decoded records when the split is small, shuffling, batching,
keypoint-aware augmentation on whole batches inside the graph (``augment_batch``), prefetch.
Everything random is derived from ``seed``: the same seed gives the same batches.

Shards of ``--image-size none`` keep each frame at its own size (:func:`frame_sizes` lists them): batches
are formed per size (``group_by_window``), so every batch holds frames of one size; the augmentation's
crops (``Augment.crop``) are all one size, and evaluation runs each frame at its own size.

Nothing here imports TensorFlow at module import time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

from ..data.dataset_info import read_dataset_info
from ..errors import TrainError

CACHE_LIMIT_BYTES = 1 << 30  # cache decoded records in memory when the split needs less than this


# ------------------------------------------------------------------------------------- augmentation
@dataclass
class Augment:
    """Augmentation ranges. Geometry: flip (probability), rotation (degrees, +-), scale (factor
    range), translation (fraction of the output size, +-); colour: brightness (fraction of 255,
    +-), contrast and saturation (factor ranges).

    ``crop`` ``(width, height)``: the output is a crop of that size (the same random rotation, scale
    and flip, in the same single warp) centred on a random point of the box around the example's
    labelled keypoints, then translated; keypoints outside the crop become unlabelled. Training
    on small crops of the frames makes each optimiser step several times cheaper; a fully
    convolutional model then predicts on whole frames. Without ``crop`` the output has the input's
    size and the centre is the image's."""

    flip: float = 0.5
    rotation: float = 20.0
    scale: Tuple[float, float] = (0.85, 1.15)
    translate: float = 0.08
    brightness: float = 0.15
    contrast: Tuple[float, float] = (0.75, 1.25)
    saturation: Tuple[float, float] = (0.75, 1.25)
    crop: Optional[Tuple[int, int]] = None
    crop_margin: float = 0.0   # the crop's centre drawn from the keypoints' box grown by this fraction of the crop

    @classmethod
    def from_value(cls, value) -> Optional["Augment"]:
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        raise TypeError(f"augment: expected a bool, a dict or an Augment, got {value!r}")


def _affine_matrices(batch, centre, out_w, out_h, cfg: Augment, seed):
    """Random forward matrices (B, 3, 3) in continuous pixel coordinates, and the flip flags:
    ``centre`` (B, 2) input pixels goes to the output's centre, then the random translation."""
    import tensorflow as tf

    def uni(i, lo, hi, shape=(batch,)):
        s = tf.random.experimental.stateless_fold_in(seed, i)
        return tf.random.stateless_uniform(shape, s, lo, hi)

    w = tf.cast(out_w, tf.float32)
    h = tf.cast(out_h, tf.float32)
    flip = uni(0, 0.0, 1.0) < cfg.flip
    theta = uni(1, -1.0, 1.0) * (cfg.rotation * math.pi / 180.0)
    scale = uni(2, cfg.scale[0], cfg.scale[1])
    tx = uni(3, -1.0, 1.0) * cfg.translate * w
    ty = uni(4, -1.0, 1.0) * cfg.translate * h
    cos, sin = tf.cos(theta) * scale, tf.sin(theta) * scale
    px, py = centre[:, 0], centre[:, 1]
    ox, oy = w / 2.0 + tx, h / 2.0 + ty
    # flip about the centre (x -> 2 px - x), rotate and scale about it, move it to the output's
    # centre plus the translation: A = T(o) R S T(-p) F_p
    fx = tf.where(flip, -1.0, 1.0)
    a = cos * fx
    b = -sin
    c = -cos * fx * px + sin * py + ox
    d = sin * fx
    e = cos
    f = -sin * fx * px - cos * py + oy
    zeros, ones = tf.zeros_like(a), tf.ones_like(a)
    m = tf.stack([tf.stack([a, b, c], -1), tf.stack([d, e, f], -1), tf.stack([zeros, zeros, ones], -1)], 1)
    return m, flip


def _warp_colour(images, t, colour, saturation: bool, out_size=None):
    """The pixel work of :func:`augment_batch`: warp and colour jitter of a batch, in TF ops that XLA
    fuses into a few loops.

    ``images`` (B, H, W, C) uint8 or float in [0, 255]; ``out_size`` ``(width, height)`` of the output
    (default: the input's); ``t`` (B, 6) the affine map from output pixel indices to input pixel indices (row ``[a, b, c, d, e, f]``: ``x_in = a*j + b*i + c``,
    ``y_in = d*j + e*i + f``); ``colour`` (B, 3) ``[brightness offset, contrast, saturation]``.
    Bilinear interpolation, pixels from outside the input read as 0, then the colour map about the
    warped image's mean, clipped to [0, 255]; returns float32. Compiled with the rest of
    ``augment_batch`` it is about 4x faster on CPU than ``ImageProjectiveTransformV3`` (which
    recomputes the coordinates for every channel) followed by separate colour ops, which made
    augmentation the bottleneck of the input pipeline.
    """
    import tensorflow as tf

    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    nc = images.shape[-1]
    ow, oh = out_size if out_size else (w, h)
    xs = tf.range(ow, dtype=tf.float32)[None, None, :]
    ys = tf.range(oh, dtype=tf.float32)[None, :, None]
    p = t[:, :, None, None]
    sx = p[:, 0] * xs + p[:, 1] * ys + p[:, 2]
    sy = p[:, 3] * xs + p[:, 4] * ys + p[:, 5]
    x0, y0 = tf.floor(sx), tf.floor(sy)
    wx, wy = sx - x0, sy - y0
    x0, y0 = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    flat = tf.reshape(images, (-1, nc))
    base = tf.range(b, dtype=tf.int32)[:, None, None] * (h * w)
    out = 0.0
    for dy, wgt_y in ((0, 1.0 - wy), (1, wy)):
        yi = y0 + dy
        inside_y = (yi >= 0) & (yi < h)
        row = base + tf.clip_by_value(yi, 0, h - 1) * w
        for dx, wgt_x in ((0, 1.0 - wx), (1, wx)):
            xi = x0 + dx
            inside = inside_y & (xi >= 0) & (xi < w)
            wgt = tf.where(inside, wgt_y * wgt_x, 0.0)
            px = tf.gather(flat, row + tf.clip_by_value(xi, 0, w - 1))
            out = out + tf.cast(px, tf.float32) * wgt[..., None]
    col = colour[:, None, None, None, :]
    d, c, s = col[..., 0], col[..., 1], col[..., 2]
    mean = tf.reduce_mean(out, axis=[1, 2, 3], keepdims=True)
    if saturation:
        grey = (out[..., 0:1] + out[..., 1:2] + out[..., 2:3]) * (1.0 / 3.0)   # fuses; a reduce does not
        out = (s * c) * out + ((1.0 - s) * c) * grey + ((1.0 - c) * mean + d)
    else:
        out = c * out + ((1.0 - c) * mean + d)
    return tf.clip_by_value(out, 0.0, 255.0)


def _augment(images, keypoints, visibility, seed, cfg: Augment, flip_permutation):
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    px = keypoints[..., 0] * wf
    py = keypoints[..., 1] * hf
    vis = tf.cast(visibility > 0, tf.float32)
    if cfg.crop:
        # a random point of the box around the labelled keypoints (the image centre without any)
        ow, oh = int(cfg.crop[0]), int(cfg.crop[1])
        labelled = vis > 0
        big = tf.constant(1e9, tf.float32)
        lo_x = tf.reduce_min(tf.where(labelled, px, big), 1)
        hi_x = tf.reduce_max(tf.where(labelled, px, -big), 1)
        lo_y = tf.reduce_min(tf.where(labelled, py, big), 1)
        hi_y = tf.reduce_max(tf.where(labelled, py, -big), 1)
        any_kp = tf.reduce_any(labelled, 1)
        if cfg.crop_margin:
            # the box grown by a margin: a keypoint at the box's edge (the instance's extreme points) is not
            # always near the crop's edge, where the network saw it only beside the zero padding
            mx, my = cfg.crop_margin * ow, cfg.crop_margin * oh
            lo_x, hi_x, lo_y, hi_y = lo_x - mx, hi_x + mx, lo_y - my, hi_y + my
        u = tf.random.stateless_uniform((b, 2), tf.random.experimental.stateless_fold_in(seed, 200))
        cx = tf.where(any_kp, lo_x + u[:, 0] * (hi_x - lo_x), wf / 2.0)
        cy = tf.where(any_kp, lo_y + u[:, 1] * (hi_y - lo_y), hf / 2.0)
        centre = tf.stack([cx, cy], -1)
    else:
        ow, oh = w, h
        centre = tf.tile(tf.stack([wf / 2.0, hf / 2.0])[None], (b, 1))
    owf, ohf = tf.cast(ow, tf.float32), tf.cast(oh, tf.float32)
    m, flip = _affine_matrices(b, centre, ow, oh, cfg, seed)

    # keypoints: normalized -> pixels -> A -> normalized
    nx = m[:, 0:1, 0] * px + m[:, 0:1, 1] * py + m[:, 0:1, 2]
    ny = m[:, 1:2, 0] * px + m[:, 1:2, 1] * py + m[:, 1:2, 2]
    kp = tf.stack([nx / owf, ny / ohf], -1)
    inside = (nx >= 0.0) & (nx < owf) & (ny >= 0.0) & (ny < ohf)
    vis = vis * tf.cast(inside, tf.float32)
    if flip_permutation is not None and list(flip_permutation) != list(range(len(flip_permutation))):
        perm = tf.constant(list(flip_permutation), tf.int32)
        kp = tf.where(flip[:, None, None], tf.gather(kp, perm, axis=1), kp)
        vis = tf.where(flip[:, None], tf.gather(vis, perm, axis=1), vis)

    # image: output pixel index -> input pixel index is T(-0.5) A^-1 T(0.5) (A is affine: its inverse
    # in closed form, no matrix inversion op)
    a, bb, c0 = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d0, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    det = a * e - bb * d0
    ia, ib, id_, ie = e / det, -bb / det, -d0 / det, a / det
    ic = -(ia * c0 + ib * f)
    if_ = -(id_ * c0 + ie * f)
    # shift by half a pixel on both sides: x_in = ia*(j+0.5) + ib*(i+0.5) + ic - 0.5
    tx = ic + 0.5 * (ia + ib) - 0.5
    ty = if_ + 0.5 * (id_ + ie) - 0.5
    t = tf.stack([ia, ib, tx, id_, ie, ty], -1)

    # colour: brightness (+d), contrast (c about the image mean), saturation (s about the pixel's
    # grey), fused into one affine map per example: out = s*c*x + (1-s)*c*grey + (1-c)*mean + d
    def uni(i, lo, hi):
        s = tf.random.experimental.stateless_fold_in(seed, 100 + i)
        return tf.random.stateless_uniform((b,), s, lo, hi)

    ones = tf.ones((b,), tf.float32)
    d = uni(0, -cfg.brightness, cfg.brightness) * 255.0 if cfg.brightness else 0.0 * ones
    c = uni(1, cfg.contrast[0], cfg.contrast[1]) if cfg.contrast else ones
    use_sat = bool(cfg.saturation) and images.shape[-1] == 3
    sat = uni(2, cfg.saturation[0], cfg.saturation[1]) if use_sat else ones
    out = _warp_colour(images, t, tf.stack([d, c, sat], -1), use_sat, (ow, oh))
    return out, kp, vis


_AUGMENT_FNS: Dict[tuple, object] = {}


def augment_batch(images, keypoints, visibility, seed, cfg: Optional[Augment] = None,
                  flip_permutation: Optional[Sequence[int]] = None):
    """Augment a batch in the graph.

    ``images`` uint8 or float (B, H, W, C) in [0, 255]; ``keypoints`` (B, K, 2) normalized; ``visibility``
    (B, K) (any dtype, > 0 is labelled); ``seed`` an int tensor of shape (2,). The same random
    matrix moves the pixels and the keypoints; keypoints that leave the frame get visibility 0; a
    flipped example has its left/right keypoints swapped by ``flip_permutation``. Returns
    ``(images, keypoints, visibility)`` with visibility as float32 0/1.

    The whole body is one XLA-compiled function (one per configuration, built lazily): the small
    ops (random draws, matrices, keypoints) and the pixel work (``_warp_colour``) run without a
    dispatch per op. The random streams are XLA's: deterministic for a seed, not the same numbers
    as the same ops run without XLA.
    """
    import tensorflow as tf

    cfg = cfg or Augment()
    perm = None if flip_permutation is None else tuple(int(i) for i in flip_permutation)
    key = (repr(cfg), perm)
    fn = _AUGMENT_FNS.get(key)
    if fn is None:
        fn = tf.function(lambda im, kp, vis, sd: _augment(im, kp, vis, sd, cfg, perm), jit_compile=True,
                         autograph=False, reduce_retracing=True)
        _AUGMENT_FNS[key] = fn
    return fn(images, keypoints, visibility, seed)


# ------------------------------------------------------------------------------------------- load
HOLDOUT_BUCKETS = 10000


def in_holdout(source_path, fraction: float, salt: int):
    """True for the images (by their path, so all instances of an image together) in the held-out
    ``fraction``: FarmHash of ``"<salt>:<path>"`` (deterministic on every platform) in the first
    ``fraction`` of :data:`HOLDOUT_BUCKETS` buckets."""
    import tensorflow as tf

    key = tf.strings.join([tf.constant(f"{int(salt)}:"), source_path])
    return tf.strings.to_hash_bucket_fast(key, HOLDOUT_BUCKETS) < int(round(fraction * HOLDOUT_BUCKETS))


def pad_to_multiple(image, keypoints, multiple: int):
    """``image`` (H, W, C) padded with zeros at the right and bottom to the next multiple of ``multiple``
    (``ceil(H / m) * m`` x ``ceil(W / m) * m``), and ``keypoints`` (K, 2), normalized to the image, normalized to
    the padded image instead (the same pixels). What the heatmap head's loss needs: its targets are laid on
    the grid of ``ceil(W / stride)`` cells of ``stride`` pixels that the model outputs, which covers exactly the
    padded image (:class:`kpconv.model.losses.HeatmapLoss`), while decoding maps cells to pixels of the unpadded
    frame (:class:`kpconv.model.network.HeatmapDecode`): the same pixels either way."""
    import tensorflow as tf

    sh = tf.shape(image)
    h, w = sh[0], sh[1]
    ph, pw = (h + multiple - 1) // multiple * multiple, (w + multiple - 1) // multiple * multiple
    image = tf.pad(image, [[0, ph - h], [0, pw - w], [0, 0]])
    scale = tf.stack([tf.cast(w, tf.float32) / tf.cast(pw, tf.float32), tf.cast(h, tf.float32) / tf.cast(ph, tf.float32)])
    return image, tf.cast(keypoints, tf.float32) * scale


def _parse_fn(num_keypoints: int, height: Optional[int], width: Optional[int]):
    import tensorflow as tf

    from ..data.records import feature_description

    desc = feature_description(num_keypoints)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, desc)
        img = tf.io.decode_image(ex["image/encoded"], channels=3, expand_animations=False)
        if height is None:   # --image-size none: each frame at its own size
            img = tf.ensure_shape(img, (None, None, 3))
            return {**fields(ex), "image": img}
        sh = tf.shape(img)
        img = tf.cond(tf.logical_and(tf.equal(sh[0], height), tf.equal(sh[1], width)),
                      lambda: img,
                      lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(img, (height, width))), 0, 255),
                                      tf.uint8))
        img = tf.ensure_shape(img, (height, width, 3))
        return {**fields(ex), "image": img}

    def fields(ex):
        return {
            "keypoints": tf.stack([ex["keypoints/x"], ex["keypoints/y"]], -1),
            "visibility": ex["keypoints/visibility"],
            "transform": ex["transform/stored_to_original"],
            "stored_size": tf.cast(tf.stack([ex["image/width"], ex["image/height"]]), tf.float32),
            "original_size": tf.cast(tf.stack([ex["image/original_width"], ex["image/original_height"]]), tf.float32),
            "bbox": ex["instance/bbox"],
            "source_path": ex["image/source_path"],
            "instance_id": ex["instance/id"],
        }

    return parse


def scale_images(images, factor: float):
    """``images`` (B, H, W, C) float resized by ``factor`` to ``round(H * factor) x round(W * factor)``: bilinear,
    after a Gaussian blur of sigma ``(1 / factor - 1) / 2`` when shrinking (scikit-image's anti-aliasing
    sigma; edges mirrored), in ops XLA compiles (``tf.image.resize``'s own ``antialias`` does not compile).
    The one resize of the heatmap head's input scale: the training pipeline (``load``'s ``prescale``) and
    :class:`kpconv.model.network.ScaleInput` at inference both call it."""
    import tensorflow as tf

    factor = float(factor)
    x = tf.cast(images, tf.float32)
    if factor < 1:
        sigma = (1.0 / factor - 1.0) / 2.0
        r = max(1, int(math.ceil(3 * sigma)))
        k = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-r, r + 1)]
        k = tf.constant([v / sum(k) for v in k], tf.float32)
        c = x.shape[-1] or 3
        x = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="SYMMETRIC")
        x = tf.nn.depthwise_conv2d(x, tf.tile(tf.reshape(k, (-1, 1, 1, 1)), (1, 1, c, 1)), [1, 1, 1, 1], "VALID")
        x = tf.nn.depthwise_conv2d(x, tf.tile(tf.reshape(k, (1, -1, 1, 1)), (1, 1, c, 1)), [1, 1, 1, 1], "VALID")
    sh = tf.cast(tf.shape(x)[1:3], tf.float32)
    size = tf.maximum(1, tf.cast(tf.round(sh * factor), tf.int32))
    return tf.image.resize(x, size, method="bilinear")


_SIZES: Dict[Tuple[str, str, float], Dict[Tuple[int, int], int]] = {}


def frame_sizes(shard_dir: Union[str, Path], split: str) -> Dict[Tuple[int, int], int]:
    """``{(width, height): records}`` of the stored images of one split (shards of ``--image-size none``
    hold frames of several sizes; ``dataset_info.json`` does not list them): only the two size fields of
    each record are parsed. Remembered per shard file and modification time."""
    import tensorflow as tf

    info = read_dataset_info(shard_dir, verify=False, any_size=True)
    files = info.files(split)
    key = (str(Path(shard_dir).resolve()), split, max((Path(f).stat().st_mtime for f in files), default=0.0))
    if key in _SIZES:
        return dict(_SIZES[key])
    if info.image_size is not None:
        sizes = {tuple(info.image_size): info.split(split).num_records}
    else:
        desc = {"image/width": tf.io.FixedLenFeature([], tf.int64), "image/height": tf.io.FixedLenFeature([], tf.int64)}
        ds = tf.data.TFRecordDataset(files, compression_type=info.compression or "").batch(256)
        sizes = {}
        for b in ds.map(lambda x: tf.io.parse_example(x, desc)):
            for wh in zip(b["image/width"].numpy().tolist(), b["image/height"].numpy().tolist()):
                sizes[wh] = sizes.get(wh, 0) + 1
    _SIZES[key] = sizes
    return dict(sizes)


def instance_sizes(shard_dir: Union[str, Path], split: str):
    """The longer side of each record's instance box, in stored pixels (numpy array): the box the
    annotations give, else the one around the labelled keypoints (``instance/bbox``); only the size and box
    fields of each record are parsed."""
    import numpy as np
    import tensorflow as tf

    info = read_dataset_info(shard_dir, verify=False, any_size=True)
    desc = {"image/width": tf.io.FixedLenFeature([], tf.int64), "image/height": tf.io.FixedLenFeature([], tf.int64),
            "instance/bbox": tf.io.FixedLenFeature([4], tf.float32)}
    ds = tf.data.TFRecordDataset(info.files(split), compression_type=info.compression or "").batch(256)
    out = []
    for b in ds.map(lambda x: tf.io.parse_example(x, desc)):
        wh = np.stack([b["image/width"].numpy(), b["image/height"].numpy()], -1).astype(np.float64)
        out.append(np.max(b["instance/bbox"].numpy()[:, 2:4] * wh, axis=-1))
    return np.concatenate(out) if out else np.zeros((0,))


def load(shard_dir: Union[str, Path], split: str, batch_size: int, augment=False, seed: Optional[int] = None,
         shuffle: Optional[bool] = None, cache: Union[str, bool] = "auto", drop_remainder: bool = False,
         include_meta: bool = False, repeat: bool = False, shuffle_buffer: int = 2048,
         pad_multiple: Optional[int] = None, holdout: Optional[Tuple[float, int]] = None, held_out: bool = False,
         prescale: Optional[float] = None):
    """A ``tf.data.Dataset`` over one split of ``shard_dir`` (see the module docstring).

    ``augment``: ``False``, ``True`` (default ranges) or an :class:`Augment` / dict of ranges.
    ``shuffle`` defaults to ``bool(augment)``. ``cache``: ``"auto"`` caches decoded records in memory
    when the split needs less than 1 GiB, ``True``/``False`` force it. ``seed`` makes shuffling and
    augmentation deterministic. ``pad_multiple``: frames padded to a multiple of it (:func:`pad_to_multiple`;
    not with ``include_meta`` or ``augment``, whose crops set the size). ``holdout`` ``(fraction, seed)``: the
    split's images divided by a salted hash of their path (:func:`in_holdout`): ``held_out`` False keeps the
    others, True only those (the frames a run holds out of training to calibrate its confidence on).
    ``prescale``: each frame resized by this factor (:func:`scale_images`, as
    :class:`kpconv.model.network.ScaleInput` resizes whole frames at inference) before the cache and the augmentation
    (training at the heatmap head's input scale; keypoints normalized to the frame are unchanged; not with
    ``include_meta``).
    """
    import tensorflow as tf

    info = read_dataset_info(shard_dir, any_size=True)
    files = info.files(split)
    if not files:
        raise TrainError(f"{info.path}: split '{split}' has no shard files")
    for f in files:
        if not Path(f).is_file():
            raise TrainError(f"{f}: shard file listed in {info.path} is missing")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    aug = Augment.from_value(augment)
    if pad_multiple and (include_meta or aug):
        raise ValueError("pad_multiple: not with include_meta or augment")
    if prescale not in (None, 1, 1.0) and include_meta:
        raise ValueError("prescale: not with include_meta")
    shuffle = bool(aug) if shuffle is None else shuffle
    h, w, k = info.image_height, info.image_width, info.num_keypoints
    variable = info.image_size is None     # --image-size none: frames of their own sizes, batched by size
    autotune = tf.data.AUTOTUNE

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type=info.compression or "",
                                                         buffer_size=1 << 20),
                       cycle_length=min(len(files), 8), block_length=1, num_parallel_calls=autotune,
                       deterministic=True)
    ds = ds.map(_parse_fn(k, h, w), num_parallel_calls=autotune)
    if holdout is not None:
        fraction, salt = holdout
        ds = ds.filter(lambda e: tf.equal(in_holdout(e["source_path"], fraction, salt), held_out))
    if prescale not in (None, 1, 1.0):
        factor = float(prescale)

        def rescale(e):
            img = scale_images(e["image"][None], factor)[0]
            return {**e, "image": tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)}

        ds = ds.map(rescale, num_parallel_calls=autotune)
        if not variable:
            h, w = max(1, round(h * factor)), max(1, round(w * factor))
            ds = ds.map(lambda e: {**e, "image": tf.ensure_shape(e["image"], (h, w, 3))})
    if pad_multiple and (variable or h % pad_multiple or w % pad_multiple):
        def pad(e):
            img, kp = pad_to_multiple(e["image"], e["keypoints"], pad_multiple)
            return {**e, "image": img, "keypoints": kp}

        ds = ds.map(pad, num_parallel_calls=autotune)
    if not include_meta:
        ds = ds.map(lambda e: {n: e[n] for n in ("image", "keypoints", "visibility")})
    n_records = info.split(split).num_records
    if cache == "auto":
        pixels = (sum(a * b * n for (a, b), n in frame_sizes(shard_dir, split).items()) if variable
                  else n_records * h * w)
        cache = 0 < pixels * 3 < CACHE_LIMIT_BYTES
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(max(1, min(shuffle_buffer, n_records or shuffle_buffer)), seed=seed,
                        reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if not repeat and n_records > 0 and holdout is None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(n_records))
    if variable:
        # one batch per size: the frames of each size in the order they come (deterministic), a batch as soon
        # as batch_size of one size have come, the rest at the end
        def size_key(e):
            sh = tf.shape(e["image"], out_type=tf.int64)
            return sh[0] * (1 << 20) + sh[1]

        ds = ds.group_by_window(size_key, lambda _, d: d.batch(batch_size, drop_remainder=drop_remainder),
                                window_size=batch_size)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=autotune)
    perm = info.flip_permutation()

    def finish(e):
        img = tf.cast(e["image"], tf.float32)
        target = tf.concat([e["keypoints"], tf.cast(e["visibility"] > 0, tf.float32)[..., None]], -1)
        if include_meta:
            meta = {n: e[n] for n in ("transform", "stored_size", "original_size", "bbox", "source_path",
                                      "instance_id")}
            return img, target, meta
        return img, target

    if aug:
        # new augmentation seeds each time the dataset is iterated (each epoch of fit(epochs=N) starts a new
        # iterator; without rerandomize_each_iteration every epoch drew the same values), the same sequence of
        # epochs for the same ``seed``
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds))

        def apply(e, s):
            # a last, smaller batch is padded to batch_size (and cut back after): the XLA-compiled
            # augmentation is compiled once per shape (~2 s), not once more at the end of epoch 1
            n = tf.shape(e["image"])[0]
            pad = batch_size - n

            def padded(x):
                return tf.pad(x, [[0, pad]] + [[0, 0]] * (len(x.shape) - 1))

            img, kp, vis = augment_batch(padded(e["image"]), padded(e["keypoints"]), padded(e["visibility"]),
                                         s, aug, perm)
            img, kp, vis = img[:n], kp[:n], vis[:n]
            out = dict(e)
            out.update(image=img, keypoints=kp, visibility=vis)
            return finish(out)

        # AUTOTUNE measured faster than a fixed one batch per core (2 cores); order stays deterministic
        ds = ds.map(apply, num_parallel_calls=autotune, deterministic=True)
    else:
        ds = ds.map(finish, num_parallel_calls=autotune)
    return ds.prefetch(autotune)
