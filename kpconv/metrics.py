"""Keypoint metrics: plain numpy functions (``kpconv eval`` and the per-epoch ``val_px_error`` /
``val_pck@T`` of ``kpconv train`` both use them, so a name means one thing everywhere).

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
# PCK's (and NME's) reference length, the one definition that eval's JSON, training's val_pck@T and the
# benchmarks report (``summary`` writes it beside the figures): :func:`instance_size`.
PCK_REFERENCE = ("the longer side of the instance's box in original pixels (the box the annotations give, else "
                 "the box around the instance's labelled keypoints, made by ingest), or the original image's longer "
                 "side when that box is empty (one labelled keypoint)")


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


def _masked_mean(values, mask, reduce=np.mean) -> float:
    """``reduce`` over the labelled entries; NaN when there is none."""
    v = np.asarray(values, np.float64)[np.asarray(mask) > 0]
    return float(reduce(v)) if v.size else float("nan")


def masked_mse(pred, true, mask) -> float:
    d = (np.asarray(pred, np.float64) - np.asarray(true, np.float64)) ** 2
    return _masked_mean(d.mean(-1), mask)


def mean_error(err, mask) -> float:
    return _masked_mean(err, mask)


def median_error(err, mask) -> float:
    return _masked_mean(err, mask, np.median)


def pck(err, mask, norm, threshold: float) -> float:
    return _masked_mean(np.asarray(err, np.float64) <= threshold * np.asarray(norm, np.float64)[:, None], mask)


def nme(err, mask, norm) -> float:
    return _masked_mean(np.asarray(err, np.float64) / np.asarray(norm, np.float64)[:, None], mask)


def _errors_block(err, mask, norm, thresholds) -> Dict:
    """count, mean and median error, PCK at each threshold of the keypoints in ``mask``."""
    out = {"count": int(mask.sum()), "mean_error_px": mean_error(err, mask), "median_error_px": median_error(err, mask)}
    for t in thresholds:
        out[f"pck@{t:g}"] = pck(err, mask, norm, t)
    return out


def summary(pred_px, true_px, mask, norm, pred_norm=None, true_norm=None,
            names: Optional[Sequence[str]] = None, thresholds=PCK_THRESHOLDS) -> Dict:
    """Every metric, overall and per keypoint, as a JSON-ready dict (errors in original pixels)."""
    err = errors(pred_px, true_px)
    mask = np.asarray(mask) > 0
    k = err.shape[1]
    names = list(names) if names is not None else [str(i) for i in range(k)]

    def block(e, m, nrm, pn, tn):
        out = _errors_block(e, m, nrm, thresholds)
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
    return {"instances": int(err.shape[0]), "keypoints": int(mask.sum()), "pck_reference": PCK_REFERENCE,
            "overall": overall, "per_keypoint": per}


def confidence_summary(err, mask, norm, confidence, threshold: float) -> Dict:
    """Errors of the labelled keypoints at or above the confidence ``threshold`` and below it, and
    the fraction of unlabelled keypoints at or above it (confident predictions of absent points)."""
    conf = np.asarray(confidence, np.float64)
    mask = np.asarray(mask) > 0
    above = conf >= threshold
    unl = ~mask
    return {"threshold": float(threshold), "above": _errors_block(err, mask & above, norm, PCK_THRESHOLDS),
            "below": _errors_block(err, mask & ~above, norm, PCK_THRESHOLDS),
            "unlabelled": int(unl.sum()),
            "unlabelled_above": float((unl & above).sum() / unl.sum()) if unl.any() else float("nan")}


def fit_calibration(confidence, correct, l2: float = 1e-3, iterations: int = 50) -> Optional[List[float]]:
    """Platt scaling: ``[a, b]`` such that ``sigmoid(a * confidence + b)`` estimates P(correct),
    fitted by Newton's method on the log-likelihood (with a small L2 penalty on ``a``). None when
    every keypoint is correct or every one is wrong (nothing to calibrate against)."""
    x = np.asarray(confidence, np.float64).ravel()
    y = np.asarray(correct, np.float64).ravel()
    if x.size == 0 or y.min() == y.max():
        return None
    # Platt's smoothed targets keep the fit finite when the classes separate perfectly
    n1, n0 = y.sum(), y.size - y.sum()
    t = np.where(y > 0, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))
    a, b = 1.0, 0.0
    for _ in range(iterations):
        z = np.clip(a * x + b, -30, 30)
        p = 1 / (1 + np.exp(-z))
        g = np.array([((p - t) * x).sum() + l2 * a, (p - t).sum()])
        w = p * (1 - p)
        h = np.array([[(w * x * x).sum() + l2, (w * x).sum()], [(w * x).sum(), w.sum() + 1e-9]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return [float(a), float(b)]


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
