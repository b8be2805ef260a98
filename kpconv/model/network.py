"""The keypoint regressor: a Keras application backbone and a head, returning ``(B, K, 2)``
normalized keypoint coordinates (continuous pixel convention) for ``float32`` images in ``[0, 255]``.

Sections: backbone registry, layers, heads, functional model, config.

Heads:

* ``dense``: global average pooling, a hidden dense layer, dropout, ``2K`` linear outputs (the
  usual tutorial regressor);
* ``spatial``: a 1x1 convolution on the backbone's last feature map, then ``upsample`` steps of
  bilinear upsampling added to a skip connection from the backbone at that stride and a separable
  convolution (stride 32 -> 16 -> 8 by default), one heatmap per keypoint and a soft-argmax
  (:class:`SoftArgmax`, integral regression) that turns each heatmap into its expected position;
* ``heatmap``: fully convolutional (any input size): the same kind of decoder, down to
  ``heatmap_stride`` (4), returns one heatmap per keypoint ``(B, H/s, W/s, K)``, trained on Gaussian
  targets (``kpconv.model.losses.HeatmapLoss``). :func:`inference_model` appends :class:`HeatmapDecode`
  (sub-pixel peak and a calibrated confidence per keypoint).

Every head's inference output is ``(B, K, 3)``: ``x, y`` normalized and a confidence (see
:func:`inference_model`).

Backbones: Keras applications (``mobilenet_v2`` ...), and ``unet``: a small from-scratch encoder
(16-32-64-128 channels times ``alpha``, about 0.5 M parameters with the heatmap head), the default
with random initialization.

Weights: ``imagenet`` (Keras's file, downloaded or in ``~/.keras/models/``), ``none`` (random
initialization) or a path to a weights file for the backbone.
"""
from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
from keras import layers, ops

from ..errors import TrainError

HEADS = ("heatmap", "spatial", "dense")


# --------------------------------------------------------------------------------- backbone registry
@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable            # (input_shape, alpha, weights) -> keras.Model without top
    rescale: Optional[Tuple[float, float]]  # (scale, offset) applied to [0, 255] pixels, or None
    weights_file: Callable     # (alpha, input size) -> Keras's imagenet file name (for the cache check)
    min_size: int = 32


def _mnv2(shape, alpha, weights):
    return keras.applications.MobileNetV2(input_shape=shape, alpha=alpha, include_top=False, weights=weights)


def _mnv2_file(alpha, size):
    rows = size if size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def _mnv3(large):
    def build(shape, alpha, weights):
        cls = keras.applications.MobileNetV3Large if large else keras.applications.MobileNetV3Small
        return cls(input_shape=shape, alpha=alpha, include_top=False, weights=weights,
                   include_preprocessing=True, minimalistic=False)
    return build


def _effnet(v2):
    def build(shape, alpha, weights):
        cls = keras.applications.EfficientNetV2B0 if v2 else keras.applications.EfficientNetB0
        return cls(input_shape=shape, include_top=False, weights=weights)
    return build


def _unet(shape, alpha, weights, levels: int = 4):
    """A small plain encoder for training from scratch: per level two 3x3 conv + BN + ReLU, the
    first with stride 2 (strides 2, 4, 8, 16; 16, 32, 64, 128 channels times ``alpha``; with ``levels``
    5 a fifth level at stride 32 with 256 channels, which doubles the receptive field to about 190 px)."""
    if weights is not None:
        raise TrainError("the unet backbone has no pretrained weights: use --weights none (or a kpconv run "
                         "directory to fine-tune from)")
    inputs = keras.Input(shape, name="unet_input")
    x = inputs
    for level, ch in enumerate((16, 32, 64, 128, 256)[:levels], start=1):
        ch = max(8, int(round(ch * alpha)))
        for j, stride in enumerate((2, 1)):
            x = layers.Conv2D(ch, 3, strides=stride, padding="same", use_bias=False, name=f"unet_l{level}_conv{j}")(x)
            x = layers.BatchNormalization(name=f"unet_l{level}_bn{j}")(x)
            x = layers.ReLU(name=f"unet_l{level}_relu{j}")(x)
    return keras.Model(inputs, x, name="unet")


def _unet5(shape, alpha, weights):
    return _unet(shape, alpha, weights, levels=5)


BACKBONES: Dict[str, Backbone] = {
    "unet": Backbone("unet", _unet, (1 / 127.5, -1.0), lambda a, s: "", min_size=16),
    "unet5": Backbone("unet5", _unet5, (1 / 127.5, -1.0), lambda a, s: "", min_size=32),
    "mobilenet_v2": Backbone("mobilenet_v2", _mnv2, (1 / 127.5, -1.0), _mnv2_file),
    "mobilenet_v3_small": Backbone("mobilenet_v3_small", _mnv3(False), None,
                                   lambda a, s: f"weights_mobilenet_v3_small_224_{float(a)}_float_no_top_v2.h5"),
    "mobilenet_v3_large": Backbone("mobilenet_v3_large", _mnv3(True), None,
                                   lambda a, s: f"weights_mobilenet_v3_large_224_{float(a)}_float_no_top_v2.h5"),
    "efficientnet_b0": Backbone("efficientnet_b0", _effnet(False), None, lambda a, s: "efficientnetb0_notop.h5"),
    "efficientnet_v2_b0": Backbone("efficientnet_v2_b0", _effnet(True), None,
                                   lambda a, s: "efficientnetv2-b0_notop.h5"),
}


# ------------------------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    num_keypoints: int
    image_size: Tuple[int, int]          # (height, width)
    backbone: str = "mobilenet_v2"
    alpha: float = 1.0
    head: str = "spatial"
    weights: str = "none"                # imagenet | none | PATH
    dense_units: int = 256
    dropout: float = 0.2
    head_channels: int = 64
    upsample: int = 2                    # spatial head: number of x2 upsampling steps
    bn_momentum: Optional[float] = None  # backbone BatchNormalization momentum (None: Keras's 0.999)
    heatmap_stride: int = 4              # heatmap head: input pixels per heatmap cell (2, 4 or 8)
    input_scale: float = 1.0             # heatmap head: frames resized by this factor before the network
    border: int = 0                      # heatmap head: black margin (network pixels) around frames at inference

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["image_size"] = tuple(d["image_size"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------------------- layers
def _per_keypoint(x):
    """``(B, H, W, K)`` -> ``(B, K, H * W)`` float32 (the heatmap of each keypoint as one row)."""
    x = ops.cast(x, "float32")
    shape = ops.shape(x)
    return ops.reshape(ops.transpose(x, (0, 3, 1, 2)), (shape[0], shape[3], shape[1] * shape[2]))


@keras.saving.register_keras_serializable(package="kpconv")
class SoftArgmax(layers.Layer):
    """Heatmap logits ``(B, H, W, K)`` -> expected positions ``(B, K, 2)`` normalized to ``[0, 1]``
    (cell ``(i, j)`` is at ``((j + 0.5) / W, (i + 0.5) / H)``). Computed in float32."""

    def __init__(self, **kw):
        kw.setdefault("dtype", "float32")
        super().__init__(**kw)

    def call(self, x):
        shape = ops.shape(x)
        h, w, k = shape[1], shape[2], shape[3]
        p = ops.softmax(_per_keypoint(x), axis=-1)
        p = ops.reshape(p, (-1, k, h, w))
        xs = (ops.cast(ops.arange(w), "float32") + 0.5) / ops.cast(w, "float32")
        ys = (ops.cast(ops.arange(h), "float32") + 0.5) / ops.cast(h, "float32")
        ex = ops.sum(ops.sum(p, axis=2) * xs, axis=-1)
        ey = ops.sum(ops.sum(p, axis=3) * ys, axis=-1)
        return ops.stack([ex, ey], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3], 2)


@keras.saving.register_keras_serializable(package="kpconv")
class PadToMultiple(layers.Layer):
    """Pads ``(B, H, W, C)`` with zeros at the bottom and the right to multiples of ``multiple``, so a
    fully convolutional model takes any input size (coordinates are unchanged)."""

    def __init__(self, multiple: int = 32, **kw):
        super().__init__(**kw)
        self.multiple = int(multiple)

    def call(self, x):
        import tensorflow as tf

        sh = tf.shape(x)
        m = self.multiple
        return tf.pad(x, [[0, 0], [0, (-sh[1]) % m], [0, (-sh[2]) % m], [0, 0]])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="kpconv")
class Upsample2x(layers.Layer):
    """Bilinear x2 upsampling that also works on fully dynamic shapes (Keras's ``UpSampling2D``
    does not trace with an unknown height and width)."""

    def call(self, x):
        import tensorflow as tf

        sh = tf.shape(x)
        # resized in float32 (its gradient is float32 too: XLA refuses a bfloat16/float32 mix under
        # --mixed-precision)
        return tf.cast(tf.image.resize(tf.cast(x, "float32"), (2 * sh[1], 2 * sh[2]), method="bilinear"), x.dtype)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        return (input_shape[0], None if h is None else 2 * h, None if w is None else 2 * w, input_shape[3])


@keras.saving.register_keras_serializable(package="kpconv")
class CropToInput(layers.Layer):
    """``[heatmaps, image]`` -> the heatmaps cut to ``ceil(H / stride) x ceil(W / stride)`` cells
    (what :class:`PadToMultiple` added is dropped). Heatmap cell ``(i, j)`` is centred on input pixel
    position ``((j + 0.5) * stride, (i + 0.5) * stride)`` (continuous pixel convention)."""

    def __init__(self, stride: int = 4, margin: int = 0, **kw):
        kw.setdefault("dtype", "float32")
        super().__init__(**kw)
        self.stride = int(stride)
        self.margin = int(margin)    # BorderPad's margin (a multiple of the stride): its cells dropped at inference

    def call(self, inputs, training=None):
        import tensorflow as tf

        hm, image = inputs
        sh = tf.shape(image)
        s = self.stride
        o = 0 if training else self.margin // s
        return tf.cast(hm[:, o:o + (sh[1] + s - 1) // s, o:o + (sh[2] + s - 1) // s, :], "float32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], None, None, input_shape[0][3])

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "margin": self.margin}


@keras.saving.register_keras_serializable(package="kpconv")
class HeatmapDecode(layers.Layer):
    """``[heatmaps (B, h, w, K), image (B, H, W, C)]`` -> ``(B, K, 3)``: ``x, y`` normalized to the
    image and a confidence.

    Position: the peak cell refined to sub-pixel by a quadratic fit of the log heatmap through the
    peak and its two neighbours along each axis (the offset clipped to half a cell), mapped to input
    pixels with :class:`CropToInput`'s convention. Confidence: ``sigmoid(a * peak + b)`` with the
    calibration ``(a, b)`` fitted after training (:func:`kpconv.model.metrics.fit_calibration`), or the
    peak clipped to ``[0, 1]`` when uncalibrated. Computed in float32.
    """

    def __init__(self, stride: int = 4, calibration: Optional[List[float]] = None, **kw):
        kw.setdefault("dtype", "float32")
        super().__init__(**kw)
        self.stride = int(stride)
        self.calibration = [float(v) for v in calibration] if calibration else None

    def call(self, inputs):
        import tensorflow as tf

        hm, image = inputs
        sh = tf.shape(hm)
        h, w = sh[1], sh[2]
        flat = _per_keypoint(hm)
        idx = tf.argmax(flat, axis=-1, output_type=tf.int32)
        peak = tf.reduce_max(flat, axis=-1)
        iy, ix = idx // w, idx % w

        def log_at(dy, dx):
            yy = tf.clip_by_value(iy + dy, 0, h - 1)
            xx = tf.clip_by_value(ix + dx, 0, w - 1)
            return tf.math.log(tf.maximum(tf.gather(flat, yy * w + xx, batch_dims=2), 1e-6))

        def offset(lo, c, hi, inside):
            den = lo - 2.0 * c + hi
            off = tf.where(den < -1e-6, 0.5 * (lo - hi) / tf.where(den < -1e-6, den, -1.0), 0.0)
            return tf.where(inside, tf.clip_by_value(off, -0.5, 0.5), 0.0)

        c = log_at(0, 0)
        dx = offset(log_at(0, -1), c, log_at(0, 1), (ix > 0) & (ix < w - 1))
        dy = offset(log_at(-1, 0), c, log_at(1, 0), (iy > 0) & (iy < h - 1))
        ish = tf.shape(image)
        s = float(self.stride)
        x = (tf.cast(ix, tf.float32) + 0.5 + dx) * s / tf.cast(ish[2], tf.float32)
        y = (tf.cast(iy, tf.float32) + 0.5 + dy) * s / tf.cast(ish[1], tf.float32)
        if self.calibration:
            conf = tf.sigmoid(self.calibration[0] * peak + self.calibration[1])
        else:
            conf = tf.clip_by_value(peak, 0.0, 1.0)
        return tf.stack([x, y, conf], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[0][3], 3)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "calibration": self.calibration}


@keras.saving.register_keras_serializable(package="kpconv")
class ScaleInput(layers.Layer):
    """Frames resized by ``scale`` (:func:`kpconv.model.pipeline.scale_images`: anti-aliased bilinear) before the network, at inference only: in training the input pipeline has already resized the frames
    the same way (``pipeline.load``'s ``prescale``) before its crops, so the layer passes them through. The
    resize maps the frame's extent onto the result's, so coordinates normalized to one are normalized to the
    other: decoding uses the resized frame (:func:`inference_model`)."""

    def __init__(self, scale: float = 1.0, **kw):
        super().__init__(**kw)
        self.scale = float(scale)

    def call(self, x, training=None):
        import tensorflow as tf

        from .pipeline import scale_images

        if training:
            return x
        return tf.cast(scale_images(x, self.scale), x.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="kpconv")
class BorderPad(layers.Layer):
    """A black margin of ``margin`` pixels around each frame, at inference only (:class:`CropToInput` drops
    its cells again). Training crops show black beyond the frame's edge (the warp reads outside pixels as
    0), while a whole frame at inference has the convolutions' zero padding there, which after the input
    rescaling is mid-grey: a keypoint near the edge was then missed on whole frames although the crops had
    it right (the stand-in's nose, 17 network pixels from the top: 464 px mean error on whole training
    frames, 5.5 px with this margin of 16; docs/training.md)."""

    def __init__(self, margin: int = 16, **kw):
        super().__init__(**kw)
        self.margin = int(margin)

    def call(self, x, training=None):
        import tensorflow as tf

        if training or not self.margin:
            return x
        m = self.margin
        return tf.pad(x, [[0, 0], [m, m], [m, m], [0, 0]])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


@keras.saving.register_keras_serializable(package="kpconv")
class MirrorInput(layers.Layer):
    """``(B, H, W, C)`` -> the mirror image (left and right swapped) of the input padded with zeros at the
    right to a multiple of ``stride`` (the padding ends up on the left): the heatmap cells of the mirror
    then fall exactly on the frame's cells reversed (:class:`FlipTestAverage`), for any frame width."""

    def __init__(self, stride: int = 4, **kw):
        super().__init__(**kw)
        self.stride = int(stride)

    def call(self, x):
        import tensorflow as tf

        w = tf.shape(x)[2]
        return tf.reverse(tf.pad(x, [[0, 0], [0, 0], [0, (-w) % self.stride], [0, 0]]), [2])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], None, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable(package="kpconv")
class FlipTestAverage(layers.Layer):
    """``[heatmaps (B, h, w, K), heatmaps of the mirror image (B, h, w, K)]`` -> their average, the mirror's
    cells reversed along the width and its keypoints swapped left/right by ``flip_permutation`` (keypoint
    ``k`` of the frame is keypoint ``flip_permutation[k]`` of its mirror): test-time flip."""

    def __init__(self, flip_permutation: Sequence[int] = (), **kw):
        kw.setdefault("dtype", "float32")
        super().__init__(**kw)
        self.flip_permutation = [int(i) for i in flip_permutation]

    def call(self, inputs):
        import tensorflow as tf

        hm, mirrored = (tf.cast(t, tf.float32) for t in inputs)
        back = tf.gather(tf.reverse(mirrored, [2]), self.flip_permutation, axis=3)
        # the mirror's padding (MirrorInput) ends up at the right once reversed: the frame's cells come first. With
        # an input scale the scaled widths may differ by a cell (the padding is not a whole number of cells there)
        w, wb = tf.shape(hm)[2], tf.shape(back)[2]
        back = tf.pad(back[:, :, :w], [[0, 0], [0, 0], [0, tf.maximum(0, w - wb)], [0, 0]])
        return 0.5 * (hm + back)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "flip_permutation": self.flip_permutation}


@keras.saving.register_keras_serializable(package="kpconv")
class UnitConfidence(layers.Layer):
    """``(B, K, 2)`` coordinates -> ``(B, K, 3)`` with a confidence of 1 (heads without one)."""

    def __init__(self, **kw):
        kw.setdefault("dtype", "float32")
        super().__init__(**kw)

    def call(self, xy):
        xy = ops.cast(xy, "float32")
        return ops.concatenate([xy, ops.ones_like(xy[..., :1])], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], 3)


# -------------------------------------------------------------------------------------------- weights
def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _network_reachable(host="storage.googleapis.com", port=443, timeout=3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(cfg: ModelConfig, check_network: Optional[Callable[[], bool]] = None):
    """What to pass to ``keras.applications``: ``None``, ``"imagenet"`` or a local file path.
    Fails fast with :class:`TrainError` when imagenet weights are neither cached nor downloadable."""
    w = cfg.weights
    if w in (None, "none", ""):
        return None
    bb = BACKBONES[cfg.backbone]
    if w == "imagenet":
        fname = bb.weights_file(cfg.alpha, cfg.image_size[0])
        cached = keras_cache_dir() / fname
        if cached.is_file():
            return "imagenet"
        if not (check_network or _network_reachable)():
            raise TrainError(
                f"--weights imagenet: the ImageNet weights for {cfg.backbone} (alpha {cfg.alpha:g}) are not in "
                f"{keras_cache_dir()} and the download server cannot be reached. Copy the file {fname} into "
                f"{keras_cache_dir()}/ (from a machine with internet: it is what Keras downloads), pass its path with "
                f"--weights PATH, or train from scratch with --weights none.")
        return "imagenet"
    p = Path(w)
    if not p.is_file():
        raise TrainError(f"--weights {w}: no such file (expected 'imagenet', 'none' or a weights file)")
    return str(p)


# -------------------------------------------------------------------------------------------- model
def build_model(cfg: ModelConfig, weights=None) -> keras.Model:
    """The functional model for ``cfg``. ``weights`` overrides the backbone weights argument
    (``resolve_weights(cfg)`` decides it in ``kpconv train``; ``None`` here means random)."""
    if cfg.backbone not in BACKBONES:
        raise TrainError(f"unknown backbone '{cfg.backbone}' (known: {', '.join(BACKBONES)})")
    if cfg.head not in HEADS:
        raise TrainError(f"unknown head '{cfg.head}' (known: {', '.join(HEADS)})")
    bb = BACKBONES[cfg.backbone]
    if cfg.head == "heatmap":
        return _build_heatmap_model(cfg, bb, weights)
    h, w = cfg.image_size
    if min(h, w) < bb.min_size:
        raise TrainError(f"image size {w}x{h} is too small for {cfg.backbone} (at least {bb.min_size} px)")
    k = cfg.num_keypoints
    inputs = keras.Input((h, w, 3), name="image")
    base = _build_backbone(bb, (h, w, 3), cfg, weights)
    skips = []
    if cfg.head == "spatial":   # the skip connections, fine to coarse (stride 8, 16 for two steps)
        total = _output_stride(base, h)
        strides = [total >> i for i in range(1, cfg.upsample + 1) if total >> i >= 1]
        skips = [l for l in _layers_at_strides(base, (h, w), strides) if l is not None][::-1]
    base = _backbone_model(base, [l.output for l in skips] + [base.output] if skips else base.output, cfg)

    feats = base(_rescaled(inputs, bb))
    if cfg.head == "dense":
        y = layers.GlobalAveragePooling2D(name="pool")(feats)
        y = layers.Dense(cfg.dense_units, activation="relu", name="fc")(y)
        y = layers.Dropout(cfg.dropout, name="dropout")(y)
        y = layers.Dense(2 * k, name="coords", dtype="float32")(y)
        out = layers.Reshape((k, 2), name="keypoints", dtype="float32")(y)
    else:
        *skip_feats, last = feats if skips else [feats]
        y = layers.Conv2D(cfg.head_channels, 1, use_bias=False, name="head_reduce")(last)
        y = _bn(cfg, "head_reduce_bn")(y)
        y = layers.ReLU(name="head_reduce_relu")(y)
        for i, skip in enumerate(reversed(skip_feats)):
            y = layers.Resizing(skip.shape[1], skip.shape[2], interpolation="bilinear", name=f"head_up{i}_resize")(y)
            sk = layers.Conv2D(cfg.head_channels, 1, use_bias=False, name=f"head_skip{i}")(skip)
            y = layers.Add(name=f"head_up{i}_add")([y, _bn(cfg, f"head_skip{i}_bn")(sk)])
            y = layers.SeparableConv2D(cfg.head_channels, 3, padding="same", use_bias=False, name=f"head_up{i}")(y)
            y = _bn(cfg, f"head_up{i}_bn")(y)
            y = layers.ReLU(name=f"head_up{i}_relu")(y)
        y = layers.Conv2D(k, 1, name="heatmaps", dtype="float32")(y)
        out = SoftArgmax(name="keypoints")(y)
    return keras.Model(inputs, out, name=f"kpconv_{cfg.backbone}_{cfg.head}")


def _rescaled(inputs, bb: Backbone):
    return layers.Rescaling(bb.rescale[0], offset=bb.rescale[1], name="rescale")(inputs) if bb.rescale else inputs


def _backbone_model(base, outputs, cfg: ModelConfig) -> keras.Model:
    """``base`` as the model named ``backbone`` with ``outputs``, its BatchNormalization momentum set
    to ``cfg.bn_momentum`` when given (from scratch, 0.999 needs thousands of steps to track the
    statistics)."""
    base = keras.Model(base.input, outputs, name="backbone")
    if cfg.bn_momentum is not None:
        for l in base.layers:
            if isinstance(l, layers.BatchNormalization):
                l.momentum = cfg.bn_momentum
    return base


def _bn(cfg: ModelConfig, name: str):
    return layers.BatchNormalization(momentum=0.99 if cfg.bn_momentum is None else cfg.bn_momentum, name=name)


def _layers_at_strides(model, size, strides) -> list:
    """For each stride, the last layer of ``model`` (built for ``size``, height and width) whose output
    is a feature map at that stride, or None: the decoders' skip connections, found from the layers'
    output shapes so any registered backbone works."""
    found = []
    for s in strides:
        cells = (-(-size[0] // s), -(-size[1] // s))
        cands = [l for l in model.layers if len(getattr(l.output, "shape", ())) == 4
                 and tuple(l.output.shape[1:3]) == cells and not isinstance(l, layers.InputLayer)]
        found.append(cands[-1] if cands else None)
    return found


def _output_stride(model, height: int) -> int:
    stride = 1
    while -(-height // stride) > model.output.shape[1]:
        stride *= 2
    return stride


def _build_backbone(bb: Backbone, shape, cfg: ModelConfig, weights):
    if weights == "imagenet":
        # the download has no timeout of its own: never hang on a network that drops packets
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            return bb.build(shape, cfg.alpha, weights)
        except Exception as e:  # Keras raises a bare Exception for a failed download; re-raised, chained
            raise TrainError(f"--weights imagenet: cannot get the ImageNet weights for {cfg.backbone}: {e}. Put "
                             f"the file Keras downloads into {keras_cache_dir()}/, pass a weights file with "
                             f"--weights PATH, or use --weights none") from e
        finally:
            socket.setdefaulttimeout(old_timeout)
    try:
        return bb.build(shape, cfg.alpha, weights)
    except (OSError, ValueError) as e:
        if weights is None:
            raise
        raise TrainError(f"--weights {weights}: cannot load into {cfg.backbone}: {e}") from None


def _stride_layers(bb: Backbone, cfg: ModelConfig):
    """``(names, total stride)``: for each stride from ``heatmap_stride`` up to (not including) the
    backbone's output stride, the name of the backbone's last layer at that stride (fine to coarse),
    from a probe built at a fixed size."""
    probe_size = 256
    probe = bb.build((probe_size, probe_size, 3), cfg.alpha, None)
    total = _output_stride(probe, probe_size)
    strides = []
    while cfg.heatmap_stride * 2 ** len(strides) < total:
        strides.append(cfg.heatmap_stride * 2 ** len(strides))
    found = _layers_at_strides(probe, (probe_size, probe_size), strides)
    for stride, layer in zip(strides, found):
        if layer is None:
            raise TrainError(f"{cfg.backbone}: no layer at stride {stride} for the heatmap decoder")
    return [l.name for l in found], total


def _build_heatmap_model(cfg: ModelConfig, bb: Backbone, weights) -> keras.Model:
    """The fully convolutional heatmap model (see the module docstring)."""
    if cfg.heatmap_stride not in (1, 2, 4, 8):
        raise TrainError(f"heatmap stride {cfg.heatmap_stride}: expected 1, 2, 4 or 8")
    names, total = _stride_layers(bb, cfg)
    base = _build_backbone(bb, (None, None, 3), cfg, weights)
    base = _backbone_model(base, [base.get_layer(n).output for n in names] + [base.output], cfg)

    def conv_bn_relu(y, ch, name, kernel=3):
        y = layers.Conv2D(ch, kernel, padding="same", use_bias=False, name=name)(y)
        y = _bn(cfg, f"{name}_bn")(y)
        return layers.ReLU(name=f"{name}_relu")(y)

    inputs = keras.Input((None, None, 3), name="image")
    x = inputs if cfg.input_scale == 1 else ScaleInput(cfg.input_scale, name="input_scale")(inputs)
    if cfg.border % cfg.heatmap_stride:
        raise TrainError(f"border {cfg.border}: expected a multiple of the heatmap stride {cfg.heatmap_stride}")
    xb = BorderPad(cfg.border, name="border")(x) if cfg.border else x
    feats = base(PadToMultiple(total, name="pad")(_rescaled(xb, bb)))
    feats = feats if isinstance(feats, (list, tuple)) else [feats]
    *skips, y = feats
    for i, skip in enumerate(reversed(skips)):
        ch = max(32, min(cfg.head_channels, int(skip.shape[-1])))
        y = Upsample2x(name=f"head_up{i}_resize")(y)
        y = conv_bn_relu(y, ch, f"head_up{i}_reduce", kernel=1)
        sk = conv_bn_relu(skip, ch, f"head_skip{i}", kernel=1)
        y = layers.Add(name=f"head_up{i}_add")([y, sk])
        y = conv_bn_relu(y, ch, f"head_up{i}_conv0")
        y = conv_bn_relu(y, ch, f"head_up{i}_conv1")
    y = layers.Conv2D(cfg.num_keypoints, 1, name="heatmaps", dtype="float32")(y)
    out = CropToInput(cfg.heatmap_stride, cfg.border, name="heatmaps_crop")([y, x])
    return keras.Model(inputs, out, name=f"kpconv_{cfg.backbone}_heatmap")


def inference_model(model: keras.Model, calibration: Optional[Sequence[float]] = None,
                    flip_permutation: Optional[Sequence[int]] = None) -> keras.Model:
    """``model`` with ``(B, K, 3)`` outputs: normalized ``x, y`` and a confidence. Heatmap models get
    :class:`HeatmapDecode` (with ``calibration``); the regression heads (``spatial``, ``dense``)
    have no confidence of their own and report 1.0. ``flip_permutation`` (heatmap models only): test-time
    flip, the heatmaps of the frame and of its mirror averaged (:class:`MirrorInput`, :class:`FlipTestAverage`)
    before decoding. A model with an input scale (:class:`ScaleInput`) is decoded against the resized frame
    (coordinates normalized to it are normalized to the frame); its mirror is padded to a multiple of
    ``stride / scale`` frame pixels (exact cell alignment when that is a whole number)."""
    if len(model.outputs[0].shape) == 4:   # heatmaps
        stride = model.get_layer("heatmaps_crop").stride
        names = [l.name for l in model.layers]
        scaled = model.get_layer("input_scale") if "input_scale" in names else None
        image = scaled.output if scaled is not None else model.inputs[0]
        hm = model.outputs[0]
        if flip_permutation is not None:
            multiple = stride if scaled is None else max(1, int(round(stride / scaled.scale)))
            mirrored = model(MirrorInput(multiple, name="mirror")(model.inputs[0]))
            hm = FlipTestAverage(flip_permutation, name="flip_test")([hm, mirrored])
        out = HeatmapDecode(stride, calibration, name="decode")([hm, image])
    else:
        if flip_permutation is not None:
            raise TrainError("test-time flip needs a heatmap model (the heatmap head)")
        out = UnitConfidence(name="with_confidence")(model.outputs[0])
    return keras.Model(model.inputs[0], out, name=f"{model.name}_inference")


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer("backbone")


def set_backbone_trainable(model: keras.Model, trainable: bool, from_layer: Optional[str] = None) -> None:
    """Freeze or unfreeze the backbone; with ``from_layer``, only that layer and the ones after it
    are trainable. The backbone's BatchNormalization layers stay frozen (inference mode, their pretrained
    statistics) when it is unfrozen too: batches of 8 crops would replace ImageNet's statistics by noisy
    ones (Keras's transfer-learning guide keeps them in inference mode for fine-tuning)."""
    base = backbone_of(model)
    if not trainable:
        base.trainable = False
        return
    base.trainable = True
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    if from_layer is None:
        return
    names = [l.name for l in base.layers]
    if from_layer not in names:
        raise TrainError(f"--fine-tune-from {from_layer}: no such layer in the {base.name} backbone "
                         f"(e.g. {', '.join(names[-40::8])})")
    start = names.index(from_layer)
    for i, l in enumerate(base.layers):
        l.trainable = i >= start and not isinstance(l, layers.BatchNormalization)


def load_model(path, compile: bool = False) -> keras.Model:
    """Load a ``model.keras`` written by ``kpconv train``."""
    from . import losses  # noqa: F401  (registers the losses with Keras, for compile=True)

    if not Path(path).is_file():
        raise TrainError(f"{path}: no model file")
    return keras.saving.load_model(str(path), compile=compile)
