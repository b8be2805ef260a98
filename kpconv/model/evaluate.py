"""``kpconv eval``: the metrics of a trained run on one split, in pixels of the original images.

Predictions (normalized to the stored image) and targets are mapped back through each record's
``transform/stored_to_original``; PCK and NME are normalized by the instance's box (its longer side,
mapped to original pixels) or the original image's longer side when the record has no box. See
``kpconv.model.metrics`` for the definitions.

The confidence calibration (:func:`calibrate`) lives here too: it is an evaluation of the model on a
split, stored in the run's ``config.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from . import metrics
from ..errors import TrainError


def _no_nan(obj):
    """NaN (a metric with no labelled keypoint) -> null, so the JSON stays valid."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return obj


def collect(predict: Callable, dataset) -> Dict[str, np.ndarray]:
    """Run ``predict(images)`` (``(B, K, 2)`` normalized points, or ``(B, K, 3)`` with a confidence)
    over a ``pipeline.load(..., include_meta=True)`` dataset; returns the arrays the metrics need, in
    original pixels: ``pred_px``, ``true_px``, ``mask``, ``norm`` (instance size), ``confidence``
    (None without one), ``pred_norm``, ``true_norm``."""
    keys = ("transform", "stored_size", "bbox", "original_size")
    preds, targets, metas = [], [], {k: [] for k in keys}
    for images, target, meta in dataset:
        preds.append(np.asarray(predict(images), np.float64))
        targets.append(target.numpy())
        for k in keys:
            metas[k].append(meta[k].numpy())
    if not preds:
        raise TrainError("the split holds no records: nothing to evaluate")
    out, target = np.concatenate(preds), np.concatenate(targets)
    tr, st, bb, og = (np.concatenate(metas[k]) for k in keys)
    pred, true, mask = out[..., :2], target[..., :2], target[..., 2]
    return {"pred_px": metrics.to_original(pred, st, tr), "true_px": metrics.to_original(true, st, tr),
            "mask": mask, "norm": metrics.instance_size(metrics.bbox_to_original(bb, st, tr), og),
            "confidence": out[..., 2] if out.shape[-1] > 2 else None, "pred_norm": pred, "true_norm": true}


def evaluate_dataset(predict: Callable, dataset, names=None, min_confidence: Optional[float] = None) -> Dict:
    """Every metric of ``predict`` over the dataset (see :func:`collect`); with ``min_confidence``
    and a model that gives a confidence, also the errors above and below it."""
    a = collect(predict, dataset)
    result = metrics.summary(a["pred_px"], a["true_px"], a["mask"], a["norm"], pred_norm=a["pred_norm"],
                             true_norm=a["true_norm"], names=names)
    if min_confidence is not None and a["confidence"] is not None:
        result["confidence"] = metrics.confidence_summary(metrics.errors(a["pred_px"], a["true_px"]), a["mask"],
                                                          a["norm"], a["confidence"], min_confidence)
    return result


def evaluate(run_dir, shard_dir, split: str = "test", batch_size: int = 64, json_path: Optional[str] = None,
             min_confidence: float = 0.5, grid: Optional[str] = None, grid_n: int = 16,
             flip_test: Optional[bool] = None) -> Dict:
    """Evaluate ``run_dir``'s model on ``split`` of ``shard_dir``; optionally write the JSON, and a
    contact sheet of predictions over the truth (``grid``, ``grid_n`` records; see
    :func:`kpconv.inspect.contact_sheet`). ``flip_test``: test-time flip (None: the run's default,
    :func:`kpconv.model.inference.flip_permutation`)."""
    from . import pipeline
    from ..data.dataset_info import read_dataset_info
    from .inference import Inference

    run = Path(run_dir)
    inference = Inference.from_run(run, batch_size=batch_size, flip_test=flip_test)
    config = inference.config
    info = read_dataset_info(shard_dir, any_size=True)
    names = config["dataset"]["keypoints"]
    if info.keypoint_names != names:
        raise TrainError(f"{info.path}: keypoints {info.keypoint_names} differ from the run's {names}")
    run_size = config["dataset"]["image_size"]      # null: frames at their own size (--image-size none)

    def size_text(size):
        return "each image's own size (--image-size none)" if size is None else f"image size {size[0]}x{size[1]}"
    shard_size = None if info.image_size is None else [info.image_width, info.image_height]
    if shard_size != (None if run_size is None else list(run_size)):
        raise TrainError(f"{info.path}: {size_text(shard_size)} differs from the run's {size_text(run_size)}")
    ds = pipeline.load(shard_dir, split, batch_size, include_meta=True)
    has_conf = bool(config.get("calibration")) or config["model"].get("head") == "heatmap"
    result = evaluate_dataset(inference, ds, names,
                              min_confidence=min_confidence if has_conf else None)
    result = {"run_dir": str(run), "shard_dir": str(shard_dir), "split": split,
              "flip_test": inference.flip_permutation is not None, **result}
    if grid:
        from ..inspect import contact_sheet

        result["grid"] = {"path": str(grid), "records": contact_sheet(shard_dir, info, grid, grid_n, split=split,
                                                                      predict=inference.infer,
                                                                      min_confidence=min_confidence)}
    if json_path:
        from ..data.manifest import atomic_output

        with atomic_output(json_path) as f:
            f.write(json.dumps(_no_nan(result), indent=2) + "\n")
    return result


CALIBRATION_PCK = 0.05   # the confidence is calibrated to P(error <= 0.05 x instance size)


def calibrate(run_dir, shard_dir, split: str, threshold: float = CALIBRATION_PCK, holdout=None) -> dict:
    """Fit the heatmap head's confidence on ``split`` (without augmentation): the probability that a
    keypoint is labelled and predicted within ``threshold`` x the instance size (PCK's criterion),
    as a logistic function of the heatmap peak; an unlabelled keypoint counts as a miss, so a low
    confidence also flags a keypoint that is absent. Stored in ``config.json`` (``calibration``). ``holdout``
    ``(fraction, seed)``: only the images of ``split`` that training held out (``pipeline.load``), the
    frames the model did not train on; when that part is empty (a tiny split) the whole split, recorded
    as ``held_out: 0``. Predictions as eval and predict make them by default (test-time flip included
    when the run trained with flips: :func:`kpconv.model.inference.flip_permutation`)."""
    from . import pipeline
    from .inference import Inference
    from .run import open_run, write_config

    config, model = open_run(run_dir)
    config.pop("calibration", None)
    inference = Inference(model, config=config)
    held = 0.0
    arrays = None
    if holdout:
        try:
            arrays = collect(inference, pipeline.load(shard_dir, split, 16, include_meta=True, holdout=holdout,
                                                      held_out=True))
            held = float(holdout[0])
        except TrainError:      # (collect's "no records": no image fell in the held-out part)
            arrays = None
    if arrays is None:
        arrays = collect(inference, pipeline.load(shard_dir, split, 16, include_meta=True))
    err = metrics.errors(arrays["pred_px"], arrays["true_px"])
    correct = (arrays["mask"] > 0) & (err <= threshold * arrays["norm"][:, None])
    # held_out: the fraction of the split's images kept out of training (0: frames it trained on)
    config["calibration"] = _calibration(arrays["confidence"], correct, threshold, split,
                                         held_out=held if split == config["dataset"].get("train_split") else None,
                                         flip_test=inference.flip_permutation is not None)
    write_config(run_dir, config)
    return config["calibration"]


def _calibration(confidence, correct, threshold: float, split: str, **extra) -> dict:
    """``config.json``'s ``calibration``: the fitted parameters and what they were fitted on."""
    return {"params": metrics.fit_calibration(confidence, correct), "split": split,
            "criterion": f"within {threshold:g} x instance size", "keypoints": int(correct.size),
            "hits": int(correct.sum()), **extra}


def calibrate_crops(model, ds, batches: int = 10, threshold: float = CALIBRATION_PCK) -> dict:
    """The multi-instance stage's confidence calibration (as :func:`calibrate` for single-instance runs): on
    ``batches`` batches of unaugmented training crops, P(keypoint labelled and within ``threshold`` x the
    instance's size, the longer side of its labelled keypoints' box) as a logistic function of the heatmap peak."""
    from .inference import Inference

    infer = Inference(model, batch_size=16)
    conf, correct = [], []
    for images, target in ds.take(batches):
        out = infer(images)
        t = np.asarray(target)
        m = t[..., 2] > 0
        err = np.hypot(out[..., 0] - t[..., 0], out[..., 1] - t[..., 1])
        big = np.where(m, 1.0, np.nan)
        size = np.fmax(np.nanmax(t[..., 0] * big, 1) - np.nanmin(t[..., 0] * big, 1),
                       np.nanmax(t[..., 1] * big, 1) - np.nanmin(t[..., 1] * big, 1))
        size = np.nan_to_num(size, nan=0.0)
        conf.append(out[..., 2])
        correct.append(m & (err <= threshold * size[:, None]))
    return _calibration(np.concatenate(conf), np.concatenate(correct), threshold, "train crops (unaugmented)")
