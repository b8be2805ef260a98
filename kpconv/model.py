"""The keypoint regressor: a Keras application backbone and a head, returning ``(B, K, 2)``
normalized keypoint coordinates (continuous pixel convention) for ``float32`` images in ``[0, 255]``.

Sections: backbone registry, layers, heads, functional model, config.

Heads:

* ``dense``: global average pooling, a hidden dense layer, dropout, ``2K`` linear outputs (the
  usual tutorial regressor);
* ``spatial``: a 1x1 convolution on the backbone's last feature map, then ``upsample`` steps of
  bilinear upsampling added to a skip connection from the backbone at that stride and a separable
  convolution (stride 32 -> 16 -> 8 by default), one heatmap per keypoint and a soft-argmax
  (:class:`SoftArgmax`, integral regression) that turns each heatmap into its expected position.

Weights: ``imagenet`` (Keras's file, downloaded or in ``~/.keras/models/``), ``none`` (random
initialization) or a path to a weights file for the backbone.
"""
from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import keras
from keras import layers, ops

from .errors import TrainError

HEADS = ("dense", "spatial")


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


BACKBONES: Dict[str, Backbone] = {
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["image_size"] = tuple(d["image_size"])
        return cls(**d)


# ------------------------------------------------------------------------------------------- layers
@keras.saving.register_keras_serializable(package="kpconv")
class SoftArgmax(layers.Layer):
    """Heatmap logits ``(B, H, W, K)`` -> expected positions ``(B, K, 2)`` normalized to ``[0, 1]``
    (cell ``(i, j)`` is at ``((j + 0.5) / W, (i + 0.5) / H)``). Computed in float32."""

    def __init__(self, **kw):
        kw.setdefault("dtype", "float32")
        super().__init__(**kw)

    def call(self, x):
        x = ops.cast(x, "float32")
        shape = ops.shape(x)
        h, w, k = shape[1], shape[2], shape[3]
        flat = ops.reshape(ops.transpose(x, (0, 3, 1, 2)), (-1, k, h * w))
        p = ops.softmax(flat, axis=-1)
        p = ops.reshape(p, (-1, k, h, w))
        xs = (ops.cast(ops.arange(w), "float32") + 0.5) / ops.cast(w, "float32")
        ys = (ops.cast(ops.arange(h), "float32") + 0.5) / ops.cast(h, "float32")
        ex = ops.sum(ops.sum(p, axis=2) * xs, axis=-1)
        ey = ops.sum(ops.sum(p, axis=3) * ys, axis=-1)
        return ops.stack([ex, ey], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3], 2)


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
    h, w = cfg.image_size
    if min(h, w) < bb.min_size:
        raise TrainError(f"image size {w}x{h} is too small for {cfg.backbone} (at least {bb.min_size} px)")
    k = cfg.num_keypoints
    inputs = keras.Input((h, w, 3), name="image")
    x = inputs
    if bb.rescale:
        x = layers.Rescaling(bb.rescale[0], offset=bb.rescale[1], name="rescale")(x)
    if weights == "imagenet":
        # the download has no timeout of its own: never hang on a network that drops packets
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)
        try:
            base = bb.build((h, w, 3), cfg.alpha, weights)
        except Exception as e:  # Keras raises a bare Exception for a failed download; re-raised, chained
            raise TrainError(f"--weights imagenet: cannot get the ImageNet weights for {cfg.backbone}: {e}. Put "
                             f"the file Keras downloads into {keras_cache_dir()}/, pass a weights file with "
                             f"--weights PATH, or use --weights none") from e
        finally:
            socket.setdefaulttimeout(old_timeout)
    else:
        try:
            base = bb.build((h, w, 3), cfg.alpha, weights)
        except (OSError, ValueError) as e:
            if weights is None:
                raise
            raise TrainError(f"--weights {weights}: cannot load into {cfg.backbone}: {e}") from None
    skips = _skip_layers(base, (h, w), cfg.upsample) if cfg.head == "spatial" else []
    base = keras.Model(base.input, [l.output for l in skips] + [base.output] if skips else base.output,
                       name="backbone")
    momentum = cfg.bn_momentum
    if momentum is not None:  # from scratch, 0.999 needs thousands of steps to track the statistics
        for l in base.layers:
            if isinstance(l, layers.BatchNormalization):
                l.momentum = momentum

    def bn(name):
        return layers.BatchNormalization(momentum=momentum if momentum is not None else 0.99, name=name)

    feats = base(x)
    if cfg.head == "dense":
        y = layers.GlobalAveragePooling2D(name="pool")(feats)
        y = layers.Dense(cfg.dense_units, activation="relu", name="fc")(y)
        y = layers.Dropout(cfg.dropout, name="dropout")(y)
        y = layers.Dense(2 * k, name="coords", dtype="float32")(y)
        out = layers.Reshape((k, 2), name="keypoints", dtype="float32")(y)
    else:
        *skip_feats, last = feats if skips else [feats]
        y = layers.Conv2D(cfg.head_channels, 1, use_bias=False, name="head_reduce")(last)
        y = bn("head_reduce_bn")(y)
        y = layers.ReLU(name="head_reduce_relu")(y)
        for i, skip in enumerate(reversed(skip_feats)):
            y = layers.Resizing(skip.shape[1], skip.shape[2], interpolation="bilinear", name=f"head_up{i}_resize")(y)
            sk = layers.Conv2D(cfg.head_channels, 1, use_bias=False, name=f"head_skip{i}")(skip)
            y = layers.Add(name=f"head_up{i}_add")([y, bn(f"head_skip{i}_bn")(sk)])
            y = layers.SeparableConv2D(cfg.head_channels, 3, padding="same", use_bias=False, name=f"head_up{i}")(y)
            y = bn(f"head_up{i}_bn")(y)
            y = layers.ReLU(name=f"head_up{i}_relu")(y)
        y = layers.Conv2D(k, 1, name="heatmaps", dtype="float32")(y)
        out = SoftArgmax(name="keypoints")(y)
    return keras.Model(inputs, out, name=f"kpconv_{cfg.backbone}_{cfg.head}")


def _skip_layers(base, size, steps: int):
    """The last layer at each of the ``steps`` strides below the output's (stride 16 and 8 for
    two steps): the spatial head's skip connections, found from the layers' output shapes so any
    registered backbone works."""
    out_h = base.output.shape[1]
    sizes = []
    h, w = size
    while h > out_h:
        sizes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    wanted = sizes[::-1][:steps]   # e.g. stride 16, then 8
    found = []
    for target in wanted:
        cands = [l for l in base.layers if len(getattr(l.output, "shape", ())) == 4
                 and tuple(l.output.shape[1:3]) == target and not isinstance(l, layers.InputLayer)]
        if cands:
            found.append(cands[-1])
    return found[::-1]   # fine to coarse


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer("backbone")


def set_backbone_trainable(model: keras.Model, trainable: bool, from_layer: Optional[str] = None) -> None:
    """Freeze or unfreeze the backbone; with ``from_layer``, only that layer and the ones after it
    are trainable. BatchNormalization layers stay in inference mode while frozen."""
    base = backbone_of(model)
    if not trainable:
        base.trainable = False
        return
    base.trainable = True
    if from_layer is None:
        return
    names = [l.name for l in base.layers]
    if from_layer not in names:
        raise TrainError(f"--fine-tune-from {from_layer}: no such layer in the {base.name} backbone "
                         f"(e.g. {', '.join(names[-40::8])})")
    start = names.index(from_layer)
    for i, l in enumerate(base.layers):
        l.trainable = i >= start


def custom_objects() -> dict:
    from . import losses, metrics

    mpe, pck = metrics.keras_metric_classes()
    return {"SoftArgmax": SoftArgmax, "MaskedKeypointLoss": losses.MaskedKeypointLoss,
            "MeanPixelError": mpe, "PCK": pck}


def load_model(path, compile: bool = False) -> keras.Model:
    """Load a ``model.keras`` written by ``kpconv train``."""
    if not Path(path).is_file():
        raise TrainError(f"{path}: no model file")
    return keras.saving.load_model(str(path), custom_objects=custom_objects(), compile=compile)
