"""Keypoint losses masked by visibility (Keras losses).

``y_true`` is ``(B, K, 3)``: normalized ``x, y`` and a visibility mask (see ``kpconv.model.pipeline``);
``y_pred`` is ``(B, K, 2)``. For each example::

    loss = sum_k w_k * m_k * e_k / max(sum_k m_k, 1)

where ``m_k`` is the mask, ``w_k`` the keypoint weight (1 unless ``weighted-mse``) and ``e_k`` the
mean over ``x`` and ``y`` of the element loss: squared error (``mse``, ``weighted-mse``), absolute
error (``mae``) or Huber (``huber``, ``delta`` in normalized units). Unlabelled keypoints contribute
nothing; an example with no labelled keypoint has loss 0. Keras then averages over the batch.
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras

NAMES = ("mse", "weighted-mse", "mae", "huber")


@keras.saving.register_keras_serializable(package="kpconv")
class MaskedKeypointLoss(keras.losses.Loss):
    def __init__(self, kind: str = "mse", keypoint_weights: Optional[Sequence[float]] = None, delta: float = 0.05,
                 name: Optional[str] = None, reduction="sum_over_batch_size", dtype=None):
        if kind not in NAMES:
            raise ValueError(f"unknown loss '{kind}' (expected one of {', '.join(NAMES)})")
        if kind == "weighted-mse" and not keypoint_weights:
            raise ValueError("loss 'weighted-mse' needs keypoint weights")
        super().__init__(name=name or f"masked_{kind.replace('-', '_')}", reduction=reduction, dtype=dtype)
        self.kind = kind
        self.keypoint_weights = [float(w) for w in keypoint_weights] if keypoint_weights else None
        self.delta = float(delta)

    def call(self, y_true, y_pred):
        from keras import ops

        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        mask = y_true[..., 2]
        diff = y_pred[..., :2] - y_true[..., :2]
        if self.kind in ("mse", "weighted-mse"):
            el = ops.square(diff)
        elif self.kind == "mae":
            el = ops.abs(diff)
        else:
            a = ops.abs(diff)
            q = ops.minimum(a, self.delta)
            el = 0.5 * ops.square(q) + self.delta * (a - q)
        e = ops.mean(el, axis=-1)
        if self.kind == "weighted-mse":
            e = e * ops.convert_to_tensor(self.keypoint_weights, "float32")
        num = ops.sum(e * mask, axis=-1)
        return num / ops.maximum(ops.sum(mask, axis=-1), 1.0)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(kind=self.kind, keypoint_weights=self.keypoint_weights, delta=self.delta)
        return cfg


def get(kind: str, keypoint_weights: Optional[Sequence[float]] = None, delta: float = 0.05) -> MaskedKeypointLoss:
    return MaskedKeypointLoss(kind, keypoint_weights=keypoint_weights, delta=delta)


@keras.saving.register_keras_serializable(package="kpconv")
class HeatmapLoss(keras.losses.Loss):
    """The heatmap head's loss: ``y_pred`` heatmaps ``(B, h, w, K)``, ``y_true`` ``(B, K, 3)`` as
    above, for an input of ``h * stride`` x ``w * stride`` pixels: ``x, y`` normalized to that extent. The
    model outputs ``ceil(H / stride) x ceil(W / stride)`` cells for an ``H x W`` frame, so frames whose size is
    not a multiple of the stride are padded to one first (``kpconv.model.pipeline.pad_to_multiple``, which
    renormalizes the keypoints; training crops are multiples): the targets then lie on the pixels that
    :class:`kpconv.model.network.HeatmapDecode` maps the cells back to (tests/test_losses.py checks the round trip).

    Each labelled keypoint's target is a Gaussian of ``sigma`` heatmap cells (peak 1) centred on it
    (cell ``(i, j)`` at input pixel ``((j + 0.5) * stride, (i + 0.5) * stride)``); a keypoint that is
    not labelled, or has left the crop, has an all-zero target, which is what teaches the peak (the
    confidence) to fall when a keypoint is absent. The squared error is weighted by
    ``1 + pos_weight * target`` so that the few cells near a keypoint are not outweighed by the
    background (with plain MSE, heatmaps trained from scratch stay at the all-zero plateau), then
    averaged over cells and keypoints, and ``keypoint_weights`` scale each keypoint.
    """

    def __init__(self, stride: int = 4, sigma: float = 2.0, pos_weight: float = 9.0,
                 keypoint_weights: Optional[Sequence[float]] = None, name: Optional[str] = "heatmap_loss",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.stride = int(stride)
        self.sigma = float(sigma)
        self.pos_weight = float(pos_weight)
        self.keypoint_weights = [float(w) for w in keypoint_weights] if keypoint_weights else None

    def targets(self, y_true, h, w):
        """The target heatmaps ``(B, K, h, w)`` of ``y_true`` on a grid of ``h x w`` cells."""
        from keras import ops

        y_true = ops.cast(y_true, "float32")
        s = float(self.stride)
        xs = (ops.cast(ops.arange(w), "float32") + 0.5) * s
        ys = (ops.cast(ops.arange(h), "float32") + 0.5) * s
        kx = y_true[..., 0] * ops.cast(w, "float32") * s                     # (B, K) input pixels
        ky = y_true[..., 1] * ops.cast(h, "float32") * s
        denom = 2.0 * (self.sigma * s) ** 2
        gx = ops.exp(-ops.square(xs[None, None, :] - kx[..., None]) / denom)   # (B, K, w)
        gy = ops.exp(-ops.square(ys[None, None, :] - ky[..., None]) / denom)   # (B, K, h)
        return gy[..., :, None] * gx[..., None, :] * y_true[..., 2][..., None, None]   # (B, K, h, w)

    def call(self, y_true, y_pred):
        from keras import ops

        y_pred = ops.cast(y_pred, "float32")
        shape = ops.shape(y_pred)
        target = self.targets(y_true, shape[1], shape[2])
        pred = ops.transpose(y_pred, (0, 3, 1, 2))
        el = (1.0 + self.pos_weight * target) * ops.square(pred - target)
        per_kp = ops.mean(el, axis=(2, 3))                                   # (B, K)
        if self.keypoint_weights:
            per_kp = per_kp * ops.convert_to_tensor(self.keypoint_weights, "float32")
        return ops.mean(per_kp, axis=-1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(stride=self.stride, sigma=self.sigma, pos_weight=self.pos_weight,
                   keypoint_weights=self.keypoint_weights)
        return cfg


@keras.saving.register_keras_serializable(package="kpconv")
class CentroidLoss(HeatmapLoss):
    """The multi-instance centroid stage's loss: ``y_pred`` one heatmap ``(B, h, w, 1)``, ``y_true``
    ``(B, N, 3)``: every instance centre of the image (normalized ``x, y``, 1 for a centre, 0 for padding).
    The target is the maximum over the centres of a Gaussian of ``sigma`` cells (peak 1), so touching
    instances keep two peaks; the error is weighted as :class:`HeatmapLoss`'s."""

    def __init__(self, stride: int = 4, sigma: float = 1.5, pos_weight: float = 9.0,
                 name: Optional[str] = "centroid_loss", reduction="sum_over_batch_size", dtype=None):
        super().__init__(stride, sigma, pos_weight, name=name, reduction=reduction, dtype=dtype)

    def targets(self, y_true, h, w):
        """The target heatmap ``(B, h, w)`` of ``y_true``'s centres on a grid of ``h x w`` cells."""
        from keras import ops

        return ops.max(super().targets(y_true, h, w), axis=1)

    def call(self, y_true, y_pred):
        from keras import ops

        y_pred = ops.cast(y_pred, "float32")
        shape = ops.shape(y_pred)
        target = self.targets(y_true, shape[1], shape[2])
        el = (1.0 + self.pos_weight * target) * ops.square(y_pred[..., 0] - target)
        return ops.mean(el, axis=(1, 2))

    def get_config(self):
        cfg = super().get_config()
        del cfg["keypoint_weights"]
        return cfg
