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


# ------------------------------------------------------------------------------ multi-instance (OKS)
# COCO's per-keypoint OKS sigmas (pycocotools' COCOeval defaults), by COCO person keypoint name
COCO_SIGMAS = {"nose": .026, "left_eye": .025, "right_eye": .025, "left_ear": .035, "right_ear": .035,
               "left_shoulder": .079, "right_shoulder": .079, "left_elbow": .072, "right_elbow": .072,
               "left_wrist": .062, "right_wrist": .062, "left_hip": .107, "right_hip": .107,
               "left_knee": .087, "right_knee": .087, "left_ankle": .089, "right_ankle": .089}
# Keypoints that are not COCO's: one sigma for all, the mean of COCO's (about 0.07; SLEAP and DeepLabCut
# also score animals with one uniform sigma). ``kpconv eval --oks-sigma`` sets another.
DEFAULT_OKS_SIGMA = 0.07
OKS_MATCH = 0.5         # an instance is found when a prediction matches it with OKS >= this


def oks_sigmas(names: Sequence[str], sigma: Optional[float] = None) -> np.ndarray:
    """Per-keypoint OKS sigmas: ``sigma`` for all when given; COCO's when every name is a COCO person
    keypoint name; else :data:`DEFAULT_OKS_SIGMA` for all."""
    if sigma is not None:
        return np.full(len(names), float(sigma))
    if names and all(n in COCO_SIGMAS for n in names):
        return np.asarray([COCO_SIGMAS[n] for n in names])
    return np.full(len(names), DEFAULT_OKS_SIGMA)


def pose_oks(a, b, sigmas) -> float:
    """OKS of pose ``a`` against pose ``b`` ((K, 2+) x, y px), ``b``'s keypoint box as the area: COCOeval's
    ``computeOks`` formula for one pair (what ``MultiPredictor`` needs per frame, without a COCO index)."""
    a, b = np.asarray(a, np.float64)[:, :2], np.asarray(b, np.float64)[:, :2]
    area = max(float(np.ptp(b[:, 0]) * np.ptp(b[:, 1])), 1.0)
    d2 = ((a - b) ** 2).sum(1)
    return float(np.mean(np.exp(-d2 / ((2.0 * np.asarray(sigmas, np.float64)) ** 2 * area * 2.0))))


def multi_instance_summary(truth: Dict[object, List[dict]], predictions: Dict[object, List[dict]],
                           sigmas: Sequence[float], names: Optional[Sequence[str]] = None,
                           match_oks: float = OKS_MATCH) -> Dict:
    """OKS-based AP/AR (pycocotools' ``COCOeval``, iouType ``keypoints``), instance recall and precision and
    the pixel error of matched instances, for images keyed alike in ``truth`` and ``predictions``.

    ``truth[image]``: ``{"keypoints": (K, 3) x, y px and visibility, "bbox": [x, y, w, h] px}`` per labelled
    instance (its area, for OKS, is the box's); ``predictions[image]``: ``{"keypoints": (K, 3) x, y px and
    confidence, "score": float}``. Matching (recall, precision, errors): per image, the assignment of
    predictions to labelled instances that maximizes the total OKS (:func:`scipy.optimize.linear_sum_assignment`
    on COCOeval's OKS matrix), pairs with OKS >= ``match_oks`` kept."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from scipy.optimize import linear_sum_assignment

    sigmas = np.asarray(sigmas, np.float64)
    k = len(sigmas)
    keys = sorted(set(truth) | set(predictions), key=str)
    ids = {key: i + 1 for i, key in enumerate(keys)}
    gt_anns, dt_anns = [], []
    for key in keys:
        for t in truth.get(key, []):
            kp = np.asarray(t["keypoints"], np.float64).reshape(k, 3)
            v = np.where(kp[:, 2] > 0, 2, 0)
            flat = np.stack([np.where(v > 0, kp[:, 0], 0), np.where(v > 0, kp[:, 1], 0), v], -1).reshape(-1)
            x, y, w, h = (float(b) for b in t["bbox"])
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": ids[key], "category_id": 1, "iscrowd": 0,
                            "keypoints": flat.tolist(), "num_keypoints": int((v > 0).sum()), "bbox": [x, y, w, h],
                            "area": max(w * h, 1.0)})
        for p in predictions.get(key, []):
            kp = np.asarray(p["keypoints"], np.float64).reshape(k, 3)
            dt_anns.append({"image_id": ids[key], "category_id": 1, "score": float(p["score"]),
                            "keypoints": np.stack([kp[:, 0], kp[:, 1], np.ones(k)], -1).reshape(-1).tolist()})
    n_gt = sum(a["num_keypoints"] > 0 for a in gt_anns)
    out: Dict = {"images": len(keys), "instances": n_gt, "predictions": len(dt_anns),
                 "oks_sigmas": [round(float(s), 4) for s in sigmas], "match_oks": match_oks}
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in ids.values()], "annotations": gt_anns,
                      "categories": [{"id": 1, "name": "instance"}]}
        gt.createIndex()
        stats = [float("nan")] * 10
        ious = {}
        if dt_anns and n_gt:
            dt = gt.loadRes(dt_anns)
            ev = COCOeval(gt, dt, "keypoints")
            ev.params.kpt_oks_sigmas = sigmas
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats = [float(s) for s in ev.stats]
            ious = ev.ious
    labels = ["mAP", "AP@0.5", "AP@0.75", "AP_medium", "AP_large", "mAR", "AR@0.5", "AR@0.75", "AR_medium",
              "AR_large"]
    out.update({name: (None if not np.isfinite(v) or v < 0 else round(v, 4)) for name, v in zip(labels, stats)})
    matched_gt = matched_dt = 0
    errs, masks = [], []
    for key in keys:
        gts = [a for a in gt.imgToAnns.get(ids[key], []) if a["num_keypoints"] > 0]
        preds = sorted(predictions.get(key, []), key=lambda p: -float(p["score"]))
        m = ious.get((ids[key], 1))
        if not gts or not preds or m is None or len(m) == 0:
            continue
        m = np.asarray(m)       # (detections by decreasing score, all ground truths of the image)
        all_gts = gt.imgToAnns[ids[key]]
        cols = [all_gts.index(a) for a in gts]
        m = m[:, cols]
        rows, cs = linear_sum_assignment(-m)
        for r, c in zip(rows, cs):
            if m[r, c] >= match_oks:
                matched_dt += 1
                matched_gt += 1
                tk = np.asarray(gts[c]["keypoints"], np.float64).reshape(k, 3)
                pk = np.asarray(preds[r]["keypoints"], np.float64).reshape(k, 3)
                errs.append(np.hypot(pk[:, 0] - tk[:, 0], pk[:, 1] - tk[:, 1]))
                masks.append(tk[:, 2] > 0)
    out["recall"] = round(matched_gt / n_gt, 4) if n_gt else None
    out["precision"] = round(matched_dt / len(dt_anns), 4) if dt_anns else None
    out["matched"] = matched_gt
    if errs:
        e, mk = np.asarray(errs), np.asarray(masks)
        out["mean_error_px"] = round(float(e[mk].mean()), 3) if mk.any() else None
        out["median_error_px"] = round(float(np.median(e[mk])), 3) if mk.any() else None
        out["per_keypoint"] = {(names[i] if names else str(i)): (round(float(e[mk[:, i], i].mean()), 3)
                                                                  if mk[:, i].any() else None) for i in range(k)}
    else:
        out["mean_error_px"] = out["median_error_px"] = None
        out["per_keypoint"] = {}
    return out
