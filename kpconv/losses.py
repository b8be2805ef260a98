"""Keypoint losses masked by visibility (Keras losses).

``y_true`` is ``(B, K, 3)``: normalized ``x, y`` and a visibility mask (see ``kpconv.pipeline``);
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
