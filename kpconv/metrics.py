"""Keypoint metrics: plain numpy functions, and thin Keras wrappers for the training progress.

Conventions: ``pred`` and ``true`` are ``(N, K, 2)`` arrays of points, ``mask`` ``(N, K)`` (1 for a
labelled keypoint, 0 otherwise; unlabelled keypoints never count). Errors are Euclidean distances.

* ``pck``: fraction of labelled keypoints whose error is at most ``threshold * norm`` where ``norm``
  (N,) is the instance's size: the longer side of its box (original pixels), or of the image when
  there is no box.
* ``nme``: mean of ``error / norm`` over labelled keypoints.
* ``masked_mse``: mean over labelled keypoints of the squared error averaged over x and y, in
  normalized coordinates (the same number as the ``mse`` training loss on a batch).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

PCK_THRESHOLDS = (0.05, 0.1, 0.2)


def to_original(points_norm, stored_size, transform):
    """Normalized stored-image points (N, K, 2) -> original image pixels, through the
    ``transform/stored_to_original`` (N, 6) of each record; ``stored_size`` (N, 2) is ``[w, h]``."""
    p = np.asarray(points_norm, np.float64)
    s = np.asarray(stored_size, np.float64)[:, None, :]
    t = np.asarray(transform, np.float64)
    x = p[..., 0] * s[..., 0]
    y = p[..., 1] * s[..., 1]
    ox = t[:, 0:1] * x + t[:, 1:2] * y + t[:, 2:3]
    oy = t[:, 3:4] * x + t[:, 4:5] * y + t[:, 5:6]
    return np.stack([ox, oy], -1)


def bbox_to_original(bbox_norm, stored_size, transform):
    """Normalized ``[x, y, w, h]`` boxes (N, 4) -> original pixel ``[x, y, w, h]`` (axis-aligned
    box around the mapped corners)."""
    b = np.asarray(bbox_norm, np.float64)
    corners = np.stack([b[:, [0, 1]], b[:, [0, 1]] + b[:, [2, 3]] * [1, 0], b[:, [0, 1]] + b[:, [2, 3]] * [0, 1],
                        b[:, [0, 1]] + b[:, [2, 3]]], 1)
    c = to_original(corners, stored_size, transform)
    lo, hi = c.min(1), c.max(1)
    return np.concatenate([lo, hi - lo], 1)


def instance_size(bbox_px, image_size) -> np.ndarray:
    """The PCK/NME normalizer (N,): the longer side of the box, or of the image (``[w, h]``) when
    the box is empty."""
    b = np.asarray(bbox_px, np.float64)
    img = np.asarray(image_size, np.float64)
    box = np.maximum(b[:, 2], b[:, 3])
    has_box = (b[:, 2] > 0) & (b[:, 3] > 0)
    return np.where(has_box, box, np.maximum(img[:, 0], img[:, 1]))


def errors(pred, true) -> np.ndarray:
    """Euclidean distance (N, K)."""
    d = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
    return np.sqrt((d ** 2).sum(-1))


def _masked(values, mask):
    m = np.asarray(mask) > 0
    return np.asarray(values, np.float64)[m]


def masked_mse(pred, true, mask) -> float:
    d = (np.asarray(pred, np.float64) - np.asarray(true, np.float64)) ** 2
    v = _masked(d.mean(-1), mask)
    return float(v.mean()) if v.size else float("nan")


def mean_error(err, mask) -> float:
    v = _masked(err, mask)
    return float(v.mean()) if v.size else float("nan")


def median_error(err, mask) -> float:
    v = _masked(err, mask)
    return float(np.median(v)) if v.size else float("nan")


def pck(err, mask, norm, threshold: float) -> float:
    e = np.asarray(err, np.float64)
    ok = e <= threshold * np.asarray(norm, np.float64)[:, None]
    v = _masked(ok, mask)
    return float(v.mean()) if v.size else float("nan")


def nme(err, mask, norm) -> float:
    e = np.asarray(err, np.float64) / np.asarray(norm, np.float64)[:, None]
    v = _masked(e, mask)
    return float(v.mean()) if v.size else float("nan")


def summary(pred_px, true_px, mask, norm, pred_norm=None, true_norm=None,
            names: Optional[Sequence[str]] = None, thresholds=PCK_THRESHOLDS) -> Dict:
    """Every metric, overall and per keypoint, as a JSON-ready dict (errors in original pixels)."""
    err = errors(pred_px, true_px)
    mask = np.asarray(mask) > 0
    k = err.shape[1]
    names = list(names) if names is not None else [str(i) for i in range(k)]

    def block(e, m, nrm, pn, tn):
        out = {"count": int(m.sum()), "mean_error_px": mean_error(e, m), "median_error_px": median_error(e, m)}
        for t in thresholds:
            out[f"pck@{t:g}"] = pck(e, m, nrm, t)
        out["nme"] = nme(e, m, nrm)
        if pn is not None:
            out["masked_mse"] = masked_mse(pn, tn, m)
        return out

    overall = block(err, mask, norm, pred_norm, true_norm)
    per = []
    for i in range(k):
        b = block(err[:, i:i + 1], mask[:, i:i + 1], norm,
                  None if pred_norm is None else np.asarray(pred_norm)[:, i:i + 1],
                  None if true_norm is None else np.asarray(true_norm)[:, i:i + 1])
        b["name"] = names[i]
        per.append(b)
    return {"instances": int(err.shape[0]), "keypoints": int(mask.sum()), "overall": overall, "per_keypoint": per}


def format_table(result: Dict, thresholds=PCK_THRESHOLDS) -> str:
    """The per-keypoint table (and the overall line) as aligned text."""
    cols = ["count", "mean_error_px", "median_error_px", *[f"pck@{t:g}" for t in thresholds], "nme"]
    heads = ["n", "mean px", "median px", *[f"PCK@{t:g}" for t in thresholds], "NME"]
    rows = [[r["name"], *[r[c] for c in cols]] for r in result["per_keypoint"]]
    rows.append(["all", *[result["overall"][c] for c in cols]])
    width = max(8, max(len(str(r[0])) for r in rows))

    def fmt(v, c):
        if c == "count":
            return f"{v:>10d}"
        if v != v:  # nan
            return f"{'-':>10}"
        return f"{v:>10.2f}" if c.endswith("px") else f"{v:>10.3f}"

    lines = [f"{'keypoint':<{width}}" + "".join(f"{h:>10}" for h in heads)]
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(lines[0]))
        lines.append(f"{r[0]:<{width}}" + "".join(fmt(v, c) for v, c in zip(r[1:], cols)))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- Keras wrappers
def _keras_metric_classes():
    import keras
    from keras import ops

    def _pixel_errors(y_true, y_pred, image_size):
        """(per-keypoint Euclidean error in stored pixels, visibility mask) as tensors."""
        y_true = ops.cast(y_true, "float32")
        d = (ops.cast(y_pred, "float32")[..., :2] - y_true[..., :2]) * ops.convert_to_tensor(image_size)
        return ops.sqrt(ops.sum(ops.square(d), -1)), y_true[..., 2]

    @keras.saving.register_keras_serializable(package="kpconv")
    class MeanPixelError(keras.metrics.Metric):
        """Mean Euclidean error of labelled keypoints, in pixels of the stored image."""

        def __init__(self, image_size=(1, 1), name="px_error", **kw):
            super().__init__(name=name, **kw)
            self.image_size = [float(s) for s in image_size]  # [w, h]
            self.total = self.add_variable(shape=(), initializer="zeros", name="total")
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            e, m = _pixel_errors(y_true, y_pred, self.image_size)
            self.total.assign_add(ops.sum(e * m))
            self.count.assign_add(ops.sum(m))

        def result(self):
            return self.total / ops.maximum(self.count, 1.0)

        def get_config(self):
            return {**super().get_config(), "image_size": self.image_size}

    @keras.saving.register_keras_serializable(package="kpconv")
    class PCK(keras.metrics.Metric):
        """Fraction of labelled keypoints within ``threshold`` x the image's longer side."""

        def __init__(self, threshold=0.1, image_size=(1, 1), name=None, **kw):
            super().__init__(name=name or f"pck@{threshold:g}", **kw)
            self.threshold = float(threshold)
            self.image_size = [float(s) for s in image_size]
            self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            e, m = _pixel_errors(y_true, y_pred, self.image_size)
            ok = ops.cast(e <= self.threshold * max(self.image_size), "float32")
            self.hits.assign_add(ops.sum(ok * m))
            self.count.assign_add(ops.sum(m))

        def result(self):
            return self.hits / ops.maximum(self.count, 1.0)

        def get_config(self):
            return {**super().get_config(), "threshold": self.threshold, "image_size": self.image_size}

    return MeanPixelError, PCK


_CLASSES = None


def keras_metric_classes():
    """``(MeanPixelError, PCK)`` Keras metric classes (registered for ``model.keras`` loading)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _keras_metric_classes()
    return _CLASSES


def training_metrics(image_size, thresholds=(0.05, 0.1)) -> List:
    """Metrics shown in the Keras progress: ``px_error`` and ``pck@T`` for each threshold."""
    mpe, pck_cls = keras_metric_classes()
    return [mpe(image_size=image_size), *[pck_cls(t, image_size=image_size) for t in thresholds]]
