"""``kpconv train``: fit a keypoint regressor on the shards, streaming them through tf.data.

The run directory (``config.json``, ``model.keras``, ``history.csv``, ``checkpoints/``...) is
:mod:`kpconv.model.run`'s; the callbacks are :mod:`kpconv.model.callbacks`'.

Training runs in two phases when the backbone starts from pretrained weights (ImageNet or a weights
file): a short warm-up of the new head with the backbone frozen (``warmup_epochs``, 2), then the whole
network (from ``fine_tune_from`` on, default all of it) at ``fine_tune_learning_rate`` for the rest of
``epochs`` or of the ``time_limit`` (the schedule of the second phase laid out over the time left). With
``fine_tune_epochs`` given, the phases are ``epochs`` frozen, then ``fine_tune_epochs``. From random
weights (``weights="none"``) or from another kpconv run
(``weights=RUN_DIR``: every layer whose name and shape match is copied, the output layer is new when
the keypoints differ) the whole model trains from the start and there is no second phase. Each
phase follows a cosine learning-rate schedule and stops early after ``patience`` epochs without
improvement. A NaN loss stops training with TrainError.

``time_limit`` (minutes): as many epochs as fit in the budget, the cosine schedule laid out over the
budget's time (updated every batch), the best model kept; ``epochs`` is then only an upper bound.

The small-data recipe (the defaults of the ``heatmap`` head, see :func:`resolve_recipe`): the
``unet`` backbone from random weights (``mobilenet_v2`` with pretrained weights), heatmap stride 4,
Gaussian sigma 2 cells, random 128x128 training crops around the keypoints (CROP_MARGIN), rotation up to 25
degrees, scale 0.8-1.2, flip when the keypoints have left/right pairs, batch 8, Adam 1e-3,
batch-norm momentum 0.9 from scratch, the training step as a TensorFlow graph.
:func:`fit` is the fit loop. :func:`train` is the workflow ``kpconv train`` runs: fit, then calibrate
the heatmap head's confidence (:func:`kpconv.model.evaluate.calibrate`, stored in ``config.json``), then
export (:func:`kpconv.model.export.export_run`). It lives here, as a short function calling out to those
owners, because ``kpconv.train(...)`` is the public API and must give the same finished run as the
command; neither owner imports this module.
"""
from __future__ import annotations

import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .. import __version__
from ..errors import TrainError
from .run import (CKPT_DIR, CONFIG_FILE, HISTORY_FILE, LAST_FILE, MODEL_FILE, is_run, read_config, read_state,
                  run_dir_of, state_path, write_config)

EXPORTS = ("tflite", "tflite-fp16", "tflite-int8", "onnx")   # --export: besides the SavedModel, always written


@dataclass
class TrainOptions:
    """Every training option; ``None`` means "the recipe's default" (see :func:`resolve_recipe`)."""

    epochs: Optional[int] = None                      # 30; with time_limit: as many as fit
    batch_size: Optional[int] = None                  # heatmap: 8; spatial, dense: 32
    learning_rate: float = 1e-3
    backbone: Optional[str] = None                    # unet from scratch, mobilenet_v2 with pretrained weights
    alpha: Optional[float] = None                     # 1.0 (from a run: that run's)
    head: str = "heatmap"
    weights: str = "imagenet"                         # imagenet | none | weights file | kpconv run directory
    loss: str = "mse"                                 # spatial, dense (the heatmap head has its own loss)
    keypoint_weights: Optional[List[float]] = None
    huber_delta: float = 0.05
    augment: bool = True
    seed: int = 0
    fine_tune_epochs: Optional[int] = None            # pretrained: None = the rest after the warm-up
    warmup_epochs: int = 2                            # pretrained: epochs with the backbone frozen first
    fine_tune_from: Optional[str] = None
    fine_tune_learning_rate: Optional[float] = None   # default: learning_rate / 10
    patience: int = 10
    min_learning_rate_factor: float = 0.01
    mixed_precision: bool = False
    strategy: str = "default"                          # default | mirrored
    export: List[str] = field(default_factory=list)
    train_split: str = "train"
    val_split: Optional[str] = "auto"                  # auto: "val" or "validation" when present
    steps_per_epoch: Optional[int] = None
    verbose: int = 2                                   # Keras progress: 0 silent, 1 bar, 2 one line per epoch
    time_limit: Optional[float] = None                 # minutes
    heatmap_stride: Optional[int] = None               # 4 (from a run: that run's)
    sigma: float = 2.0                                 # Gaussian target, in heatmap cells
    crop_size: Optional[int] = None                    # heatmap: 128 (0: whole frames)
    # heatmap head with crops: frames resized by this factor before the network (None: auto, from the
    # instances' size, INSTANCE_TARGET_PX; 1: the stored pixels)
    input_scale: Optional[float] = None
    augment_rotate: Optional[float] = None             # degrees, +-; heatmap: 25, others: 20
    augment_scale: Optional[Tuple[float, float]] = None  # heatmap: (0.8, 1.2), others: (0.85, 1.15)
    augment_flip: Optional[float] = None               # probability; 0.5 when the keypoints have flip pairs
    augment_translate: Optional[float] = None          # fraction of the size; heatmap with crops: 0, others: 0.08
    augment_brightness: float = 0.15
    augment_contrast: Tuple[float, float] = (0.75, 1.25)
    # heatmap head without a validation split: this fraction of the training images (by a salted hash of the
    # path) is kept out of training and calibrates the confidence; 0: calibrated on the training frames
    calibration_holdout: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    run_dir: Path
    epochs_run: int
    best: Optional[float]
    monitor: str
    resumed_from: int = 0
    outputs: dict = field(default_factory=dict)
    options: Optional[TrainOptions] = None
    shard_dir: Optional[Path] = None
    calibration_split: Optional[str] = None   # the validation split, else the training split
    calibration_holdout: Optional[tuple] = None   # (fraction, seed) of the training images held out for it
    final_state: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ helpers
def _versions() -> dict:
    import keras
    import numpy
    import tensorflow as tf

    return {"kpconv": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def _val_split(info, wanted: Optional[str]) -> Optional[str]:
    if wanted in (None, "", "none"):
        return None
    if wanted == "auto":
        for name in ("val", "validation"):
            if name in info.splits and info.splits[name].num_records > 0:
                return name
        return None
    info.split(wanted)
    return wanted


INFERENCE_BORDER = 16     # heatmap head: black margin around whole frames at inference (model.BorderPad)
# training crops: their centre drawn from the keypoints' box grown by this fraction of the crop. Without it the
# instance's extreme keypoints (the box's edges) always lay in the crop's outer half, next to its edge: on whole
# frames the model put them 5 px inward (mirror-mouse at full size, 15 min: nose_bot dx -4.9 px, obsLow_bot
# dy -5.4 px on the training frames; with 0.25: -0.0 and -0.9; docs/training.md)
CROP_MARGIN = 0.25
INSTANCE_TARGET_PX = 200   # auto input scale: the median instance's longer side at most this many network pixels


def auto_input_scale(shard_dir, split: str) -> float:
    """The heatmap head's input scale for frames whose instances are large: ``INSTANCE_TARGET_PX`` over the
    median instance box's longer side (stored pixels), rounded down to a multiple of 1/64; 1 when that
    side is at most 1.25 x ``INSTANCE_TARGET_PX``."""
    import numpy as np

    from .pipeline import instance_sizes

    sizes = instance_sizes(shard_dir, split)
    sizes = sizes[sizes > 0]
    if not len(sizes) or float(np.median(sizes)) <= 1.25 * INSTANCE_TARGET_PX:   # (a small change is no gain)
        return 1.0
    return float(max(1, math.floor(INSTANCE_TARGET_PX / float(np.median(sizes)) * 64 + 1e-6)) / 64)


def resolve_recipe(options: TrainOptions, info) -> TrainOptions:
    """``options`` with every ``None`` replaced by the recipe's value for its head and weights (the
    result is what ``config.json`` records)."""
    o = TrainOptions(**options.to_dict())
    heat = o.head == "heatmap"
    src = None
    if is_run(o.weights):   # the architecture of the run to fine-tune from, unless given
        src = read_config(run_dir_of(o.weights))["model"]
    if o.backbone is None:
        o.backbone = src["backbone"] if src else ("unet" if o.weights in (None, "", "none") else "mobilenet_v2")
    if o.alpha is None:
        o.alpha = float(src.get("alpha", 1.0)) if src else 1.0
    if o.heatmap_stride is None:
        o.heatmap_stride = int(src.get("heatmap_stride", 4)) if src else 4
    if o.batch_size is None:
        o.batch_size = 8 if heat else 32
    if o.epochs is None and o.time_limit is None:
        o.epochs = 30
    if o.crop_size is None:
        o.crop_size = 128 if heat else 0
    if o.crop_size and not heat:
        raise TrainError(f"--crop-size: the {o.head} head has a fixed input size; crops are for the heatmap head")
    if o.crop_size and o.crop_size % o.heatmap_stride:
        raise TrainError(f"--crop-size {o.crop_size}: expected a multiple of --heatmap-stride {o.heatmap_stride}")
    if o.input_scale is None:
        if src:
            o.input_scale = float(src.get("input_scale", 1.0))
        elif heat and o.crop_size and o.augment and getattr(info, "path", None) is not None:
            o.input_scale = auto_input_scale(info.path.parent, o.train_split)
        else:
            o.input_scale = 1.0
    if o.input_scale != 1.0 and not (heat and o.crop_size and o.augment):
        raise TrainError(f"--input-scale {o.input_scale:g}: for the heatmap head trained on crops (--crop-size > 0, "
                         f"augmentation on), whose warp makes the crops at that scale")
    if not 0 < o.input_scale <= 4:
        raise TrainError(f"--input-scale {o.input_scale:g}: expected a factor in (0, 4]")
    if o.augment_rotate is None:
        o.augment_rotate = 25.0 if heat else 20.0
    if o.augment_scale is None:
        o.augment_scale = (0.8, 1.2) if heat else (0.85, 1.15)
    if o.augment_flip is None:
        o.augment_flip = 0.5 if info.flip_pairs else 0.0
    if o.augment_translate is None:
        o.augment_translate = 0.0 if (heat and o.crop_size) else 0.08
    o.augment_scale = tuple(o.augment_scale)
    o.augment_contrast = tuple(o.augment_contrast)
    return o


def _augment_config(options: TrainOptions, info):
    """The pipeline's :class:`~kpconv.model.pipeline.Augment` for the resolved ``options`` (None without
    augmentation). The heatmap head's training input is always a multiple of its stride: a crop of
    ``crop_size``, or the whole frame padded up to the next multiple."""
    from .pipeline import Augment

    if not options.augment:
        return None
    crop = None
    if options.head == "heatmap":
        s = options.heatmap_stride
        if options.crop_size:
            crop = (options.crop_size, options.crop_size)
        elif info.image_width % s or info.image_height % s:
            crop = (-(-info.image_width // s) * s, -(-info.image_height // s) * s)
    return Augment(flip=options.augment_flip, rotation=options.augment_rotate, scale=tuple(options.augment_scale),
                   translate=options.augment_translate, brightness=options.augment_brightness,
                   contrast=tuple(options.augment_contrast), crop=crop,
                   crop_margin=CROP_MARGIN if options.crop_size else 0.0)


def transfer_weights(source, target) -> Tuple[int, List[str]]:
    """Copy into ``target`` the weights of every layer of ``source`` with the same name and weight
    shapes (nested models included); returns (layers copied, target layers with weights left as
    they were)."""
    def flat(model):
        out = {}
        for layer in model.layers:
            if hasattr(layer, "layers") and layer.layers:
                out.update(flat(layer))
            else:
                out[layer.name] = layer
        return out

    src = flat(source)
    copied, kept = 0, []
    for name, layer in flat(target).items():
        w = layer.get_weights()
        if not w:
            continue
        other = src.get(name)
        ow = other.get_weights() if other is not None else None
        if ow is not None and len(ow) == len(w) and all(a.shape == b.shape for a, b in zip(ow, w)):
            layer.set_weights(ow)
            copied += 1
        else:
            kept.append(name)
    return copied, kept


def parse_keypoint_weights(text: str, names: Sequence[str]) -> List[float]:
    """``"2,1,1"`` (one per keypoint) or ``"nose=2,left_eye=0.5"`` (others 1)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and all("=" in p for p in parts):
        weights = [1.0] * len(names)
        for p in parts:
            n, v = p.split("=", 1)
            if n.strip() not in names:
                raise TrainError(f"--keypoint-weights: unknown keypoint '{n.strip()}' (known: {', '.join(names)})")
            weights[list(names).index(n.strip())] = _float(v, p)
        return weights
    if len(parts) != len(names):
        raise TrainError(f"--keypoint-weights: expected {len(names)} numbers (one per keypoint: "
                         f"{', '.join(names)}) or NAME=W pairs, got {len(parts)}")
    return [_float(p, p) for p in parts]


def _float(v, whole):
    try:
        f = float(v)
    except ValueError:
        raise TrainError(f"--keypoint-weights: '{whole}': expected a number") from None
    if not math.isfinite(f) or f < 0:
        raise TrainError(f"--keypoint-weights: '{whole}': expected a finite number >= 0")
    return f


# -------------------------------------------------------------------------------------------- train
def train(shard_dir, run_dir, options: Optional[TrainOptions] = None, resume: bool = False,
          callbacks: Sequence = ()) -> TrainResult:
    """``kpconv train``: :func:`fit`, then calibrate the heatmap head's confidence, mark the run
    finished, then export the SavedModel and ``options.export`` (each export checked against the
    model). Returns the paths written in ``outputs``."""
    from .evaluate import calibrate
    from .export import export_run
    from .run import write_state

    res = fit(shard_dir, run_dir, options, resume, callbacks)
    run = res.run_dir
    if res.options.head == "heatmap":
        calibrate(run, res.shard_dir, res.calibration_split, holdout=res.calibration_holdout)
    write_state(run, **res.final_state)
    res.outputs = {"model": str(run / MODEL_FILE)}
    for fmt in ("savedmodel", *res.options.export):
        ex = export_run(run, fmt, check_images=0 if fmt == "savedmodel" else 8)
        res.outputs["saved_model" if fmt == "savedmodel" else fmt] = ex.path
        if ex.max_diff_px is not None:
            res.outputs[f"{fmt} check"] = (f"largest difference from {MODEL_FILE}: {ex.max_diff_px:.3g} px on "
                                           f"{ex.checked} shard image(s)")
    return res


def fit(shard_dir, run_dir, options: Optional[TrainOptions] = None, resume: bool = False,
        callbacks: Sequence = ()) -> TrainResult:
    """Fit on ``shard_dir`` into ``run_dir`` (see the module docstring). With ``resume``, the
    options come from ``run_dir/config.json`` and training continues after the last finished epoch.

    A new run that fails before its first epoch is saved (bad weights file, corrupt shards, bad
    options, an interruption) leaves no trace in ``run_dir``, so the same command can be run again."""
    run = Path(run_dir)
    existed = run.exists()
    before = set(run.iterdir()) if existed and run.is_dir() else set()
    try:
        return _train(shard_dir, run_dir, options, resume, callbacks)
    except BaseException as e:
        if not resume and not state_path(run).exists():
            if not existed:
                shutil.rmtree(run, ignore_errors=True)
            elif run.is_dir():
                for p in set(run.iterdir()) - before:
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(e, tf.errors.DataLossError):   # a corrupt or truncated shard
            detail = [line.strip() for line in (e.message or "").splitlines()
                      if line.strip() and not line.strip().startswith("[[")][-1:] or ["unreadable record"]
            raise TrainError(f"{shard_dir}: a shard cannot be read ({detail[0]}); find it with "
                             f"'kpconv inspect {shard_dir} --verify'") from None
        raise


def _train(shard_dir, run_dir, options: Optional[TrainOptions], resume: bool, callbacks: Sequence) -> TrainResult:
    import keras
    import tensorflow as tf

    from . import losses, network as kmodel
    from ..data.dataset_info import dataset_sha256, read_dataset_info

    started = time.monotonic()
    run = Path(run_dir)
    shard_dir = Path(shard_dir)
    info = read_dataset_info(shard_dir, any_size=True)
    state = None
    if resume:
        if not (run / CONFIG_FILE).is_file():
            raise TrainError(f"{run}: --resume: no {CONFIG_FILE} here (not a kpconv run directory)")
        config = read_config(run)
        options = TrainOptions(**config["options"])
        state = read_state(run)
        if state is not None:
            if state.get("finished"):
                raise TrainError(f"{run}: --resume: this run already finished ({state['epoch']} epochs); "
                                 f"start a new run with another -o")
        sha = dataset_sha256(shard_dir, info)
        if sha != config["dataset"]["sha256"]:
            changed = sorted(set(sha.items()) ^ set(config["dataset"]["sha256"].items()))
            raise TrainError(f"{shard_dir}: --resume: the shards differ from the ones this run started with "
                             f"(first difference: {changed[0][0]})")
    else:
        options = options or TrainOptions()
        if (run / CONFIG_FILE).exists() or (run / MODEL_FILE).exists():
            raise TrainError(f"{run}: already holds a run; continue it with --resume or choose another -o")
        config = None

    if options.head not in kmodel.HEADS:
        raise TrainError(f"unknown head '{options.head}' (known: {', '.join(kmodel.HEADS)})")
    if state is None:
        options = resolve_recipe(options, info)
    if options.backbone not in kmodel.BACKBONES:
        raise TrainError(f"unknown backbone '{options.backbone}' (known: {', '.join(kmodel.BACKBONES)})")
    for e in options.export:
        if e not in EXPORTS:
            raise TrainError(f"unknown export '{e}' (known: {', '.join(EXPORTS)})")
    if options.keypoint_weights is not None and len(options.keypoint_weights) != info.num_keypoints:
        raise TrainError(f"keypoint weights: {len(options.keypoint_weights)} given, the dataset has "
                         f"{info.num_keypoints} keypoints")
    if options.head == "heatmap" and options.loss != "mse":
        raise TrainError(f"--loss {options.loss}: --loss is for the spatial and dense heads (the heatmap head "
                         f"has its own loss; --keypoint-weights still apply)")
    if options.loss == "weighted-mse" and options.keypoint_weights is None:
        raise TrainError("--loss weighted-mse needs --keypoint-weights")
    if options.loss not in losses.NAMES:
        raise TrainError(f"unknown loss '{options.loss}' (known: {', '.join(losses.NAMES)})")
    if options.time_limit is not None and not (options.time_limit > 0 and math.isfinite(options.time_limit)):
        raise TrainError(f"time limit {options.time_limit}: expected a positive number of minutes")
    n_train = info.split(options.train_split).num_records
    if n_train == 0:
        raise TrainError(f"{info.path}: split '{options.train_split}' has no records")
    val_split = _val_split(info, options.val_split)
    frames = None     # --image-size none: {(w, h): records} of the training split
    if info.image_size is None:
        if options.head != "heatmap":
            raise TrainError(f"{info.path}: the shards keep each image's own size (--image-size none); the "
                             f"{options.head} head needs one image size (the heatmap head takes any): shard "
                             f"again with one (kpconv shard --image-size WxH) or use --head heatmap")
        if not options.crop_size:
            raise TrainError(f"{info.path}: the shards keep each image's own size (--image-size none): training "
                             f"takes crops of one size (--crop-size N > 0)")
        from .pipeline import frame_sizes

        frames = frame_sizes(shard_dir, options.train_split)
    # the size the model is built for (the heatmap head takes any; pretrained weights' file names use it)
    height, width = ((info.image_height, info.image_width) if frames is None
                     else max(frames, key=lambda wh: (wh[0] * wh[1], wh))[::-1])

    from_run = is_run(options.weights)
    mcfg = kmodel.ModelConfig(num_keypoints=info.num_keypoints, image_size=(height, width),
                              backbone=options.backbone, alpha=options.alpha, head=options.head,
                              weights=options.weights, heatmap_stride=options.heatmap_stride,
                              input_scale=options.input_scale if options.head == "heatmap" else 1.0,
                              border=INFERENCE_BORDER if options.head == "heatmap" else 0,
                              bn_momentum=None if options.weights not in (None, "", "none") and not from_run
                              else 0.9)
    source = None
    if from_run and state is None:
        src_dir = run_dir_of(options.weights)
        src_cfg = read_config(src_dir)["model"]
        for key in ("backbone", "head", "alpha", "heatmap_stride", "input_scale"):
            if src_cfg.get(key, getattr(mcfg, key)) != getattr(mcfg, key):
                raise TrainError(f"--weights {options.weights}: that run has {key} {src_cfg.get(key)}, this one "
                                 f"{getattr(mcfg, key)} (the architecture must match to fine-tune from it)")
        source = kmodel.load_model(src_dir / MODEL_FILE if Path(options.weights).is_dir() else options.weights)
        weights = None
    else:
        weights = kmodel.resolve_weights(mcfg) if state is None and not from_run else None
    pretrained = options.weights not in (None, "", "none") and not from_run

    run.mkdir(parents=True, exist_ok=True)
    (run / CKPT_DIR).mkdir(exist_ok=True)
    if config is None:
        config = {
            "options": options.to_dict(),
            "model": mcfg.to_dict(),
            "dataset": {"shard_dir": str(shard_dir.resolve()), "sha256": dataset_sha256(shard_dir, info),
                        "keypoints": info.keypoint_names, "skeleton": [list(p) for p in info.skeleton],
                        "flip_pairs": [list(p) for p in info.flip_pairs],
                        # null: each frame at its own size (--image-size none); frame_sizes lists the training
                        # split's [width, height, records]
                        "image_size": [info.image_width, info.image_height] if frames is None else None,
                        **({} if frames is None else
                           {"frame_sizes": [[a, b, n] for (a, b), n in sorted(frames.items())]}),
                        "preprocessing": info.preprocessing(),
                        "splits": {n: s.num_records for n, s in info.splits.items()},
                        "train_split": options.train_split, "val_split": val_split},
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_config(run, config)

    keras.utils.set_random_seed(options.seed)
    policy = keras.mixed_precision.global_policy().name
    if options.mixed_precision:
        gpu = bool(tf.config.list_physical_devices("GPU"))
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    if options.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif options.strategy == "default":
        strategy = tf.distribute.get_strategy()
    else:
        raise TrainError(f"unknown strategy '{options.strategy}' (known: default, mirrored)")

    try:
        return _fit(run, shard_dir, info, options, mcfg, weights, pretrained, state, val_split, strategy,
                    list(callbacks), source, started)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _fit(run, shard_dir, info, options, mcfg, weights, pretrained, state, val_split, strategy, extra, source=None,
         started=None):
    import keras

    from . import losses, network as kmodel, pipeline
    from .callbacks import Checkpoint, History, NanGuard, TimeBudget, ValMetrics, epoch_cosine
    heat = options.head == "heatmap"
    bs = options.batch_size * strategy.num_replicas_in_sync
    timed = options.time_limit is not None
    steps = options.steps_per_epoch
    if timed and steps is None:  # epochs of at least 50 steps: the per-epoch work stays small
        steps = max(50, -(-info.split(options.train_split).num_records // bs))
    aug = _augment_config(options, info)
    # the heatmap loss's frames padded to a multiple of the stride (the grid the model outputs; crops are)
    pad = options.heatmap_stride if heat else None
    hold = _holdout(options, val_split)
    train_ds = pipeline.load(shard_dir, options.train_split, bs, augment=aug if aug else False, seed=options.seed,
                             shuffle=True, repeat=steps is not None, pad_multiple=None if aug else pad,
                             holdout=hold, prescale=options.input_scale if heat else None)
    val_ds = pipeline.load(shard_dir, val_split, bs, pad_multiple=pad) if val_split else None
    val_meta = pipeline.load(shard_dir, val_split, bs, include_meta=True) if val_split else None
    # the checkpoint (and early stopping) follow the validation pixel error (ValMetrics) when there is a
    # validation split: what eval reports, not the heatmap loss
    monitor = "val_px_error" if val_ds is not None else "loss"
    # the validation predictions as eval makes them by default for this run (inference.flip_permutation)
    flip_perm = (info.flip_permutation() if heat and info.flip_pairs and options.augment and options.augment_flip > 0
                 else None)

    def compile_(m, lr):
        if heat:
            loss = losses.HeatmapLoss(options.heatmap_stride, options.sigma, keypoint_weights=options.keypoint_weights)
        else:
            loss = losses.get(options.loss, options.keypoint_weights, options.huber_delta)
        # the heatmap head's step as a TensorFlow graph, not XLA: 102-107 against 125 ms per step on this
        # 2-core CPU (mirror-mouse crops of 128, batch 8, alternating runs, 2026-12-07), as at inference
        m.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, jit_compile=False if heat else "auto")

    unbounded = 10 ** 6
    if pretrained and options.fine_tune_epochs is None:   # a warm-up of the head, then the whole network
        phase1 = options.warmup_epochs if options.epochs is None else min(options.warmup_epochs, options.epochs - 1)
        phase2 = unbounded if options.epochs is None else options.epochs - phase1
    else:
        phase1 = options.epochs if options.epochs is not None else unbounded
        phase2 = (options.fine_tune_epochs or 0) if pretrained else 0
    ft_lr = options.fine_tune_learning_rate or options.learning_rate / 10
    start_epoch = state["epoch"] if state else 0
    start_phase = state["phase"] if state else 1
    # (a run checkpointed on another monitor, e.g. val_loss before val_px_error: its best value is not comparable)
    best = state.get("best") if state and state.get("monitor", monitor) == monitor else None
    if start_phase == 1 and start_epoch >= phase1:
        start_phase, loaded_phase = 2, 1
    else:
        loaded_phase = start_phase

    with strategy.scope():
        if state:
            model = kmodel.load_model(run / CKPT_DIR / LAST_FILE, compile=True)
        else:
            model = kmodel.build_model(mcfg, weights)
            if source is not None:
                copied, kept = transfer_weights(source, model)
                if not copied:
                    raise TrainError(f"--weights {options.weights}: no layer of that run fits this model")
            if pretrained:
                kmodel.set_backbone_trainable(model, False)
            compile_(model, options.learning_rate)
    budget = TimeBudget(options.time_limit * 60.0, started, options.learning_rate,
                        options.learning_rate * options.min_learning_rate_factor) if timed else None

    history_rows = 0
    epoch = start_epoch
    for phase in (1, 2):
        if phase < start_phase:
            continue
        if phase == 1:
            begin, end, lr0 = 0, phase1, options.learning_rate
        else:
            begin, end, lr0 = phase1, phase1 + phase2, ft_lr
            if end <= begin:
                break
            if budget is not None:  # the rest of the budget, on the fine-tuning learning rate's schedule
                left = max(1e-3, budget.seconds - (time.monotonic() - budget.started))
                budget = TimeBudget(left, time.monotonic(), ft_lr, ft_lr * options.min_learning_rate_factor)
            if loaded_phase != 2:
                with strategy.scope():
                    kmodel.set_backbone_trainable(model, True, options.fine_tune_from)
                    compile_(model, ft_lr)
                loaded_phase = 2
        if epoch >= end:
            continue
        nan = NanGuard()
        ckpt = Checkpoint(run, phase, monitor, best)
        if budget is not None:   # the schedule follows the clock; no early stop before the budget ends
            sched = [budget]
        else:
            sched = [epoch_cosine(lr0, lr0 * options.min_learning_rate_factor, begin, end - begin),
                     keras.callbacks.EarlyStopping(monitor=monitor, patience=options.patience, mode="min")]
        cbs = [nan, *([ValMetrics(val_meta, flip_perm)] if val_meta is not None else []),  # (before what reads its logs)
               *sched, History(run / HISTORY_FILE, epoch), ckpt, *extra]
        hist = model.fit(train_ds, validation_data=val_ds, epochs=end, initial_epoch=epoch,
                         steps_per_epoch=steps, callbacks=cbs, verbose=options.verbose, shuffle=False)
        if nan.where is not None:
            raise TrainError(f"loss became NaN at epoch {nan.where[0] + 1}, batch {nan.where[1] + 1}: training "
                             f"stopped (best model so far kept in {run / MODEL_FILE} if any; try a lower "
                             f"--learning-rate or check the shards with 'kpconv inspect')")
        ran = len(hist.history.get("loss", []))
        history_rows += ran
        epoch += ran
        best = ckpt.best
        if budget is not None and budget.spent:
            break
        if phase == 1 and epoch < end:  # stopped early: the fine-tuning phase starts at its own epoch
            epoch = phase1
    return TrainResult(run, history_rows, best, monitor, resumed_from=start_epoch, options=options,
                       shard_dir=Path(shard_dir), calibration_split=val_split or options.train_split,
                       calibration_holdout=hold,
                       final_state={"phase": 2 if phase2 else 1, "epoch": epoch, "best": best, "monitor": monitor,
                                    "finished": True})


def _holdout(options: TrainOptions, val_split: Optional[str]):
    """``(fraction, seed)`` of the training images held out of training to calibrate the heatmap head's
    confidence (no validation split), else None (see ``pipeline.load``'s ``holdout``)."""
    if options.head != "heatmap" or val_split or not options.calibration_holdout:
        return None
    return (float(options.calibration_holdout), int(options.seed))
