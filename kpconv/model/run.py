"""The run directory that ``kpconv train`` writes and every later command reads: its file names,
``config.json`` and ``state.json`` (written atomically), the model saved atomically, and opening a run.

Layout::

    config.json          every option, the model config, the dataset (sha256 of every file, keypoint
                         names, skeleton, the shard preprocessing), versions, the confidence calibration
    model.keras          the best model so far (lowest validation pixel error, or training loss without a
                         validation split)
    saved_model/         the best model exported as a TensorFlow SavedModel (at the end)
    model.tflite         with export=["tflite"]
    history.csv          one row per epoch (loss, metrics, validation metrics, learning rate)
    checkpoints/         last.keras (model and optimizer after the last finished epoch) and
                         state.json (phase, epoch, best value): what ``resume`` continues from
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Tuple

from ..errors import TrainError
from ..data.manifest import atomic_output

CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
CKPT_DIR = "checkpoints"
LAST_FILE = "last.keras"       # in CKPT_DIR
STATE_FILE = "state.json"      # in CKPT_DIR


def write_json(path: Path, obj) -> None:
    with atomic_output(str(path)) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_config(run_dir) -> dict:
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise TrainError(f"{run}: no {CONFIG_FILE} (not a directory written by 'kpconv train')")
    return json.loads((run / CONFIG_FILE).read_text(encoding="utf-8"))


def write_config(run_dir, config: dict) -> None:
    write_json(Path(run_dir) / CONFIG_FILE, config)


def state_path(run_dir) -> Path:
    return Path(run_dir) / CKPT_DIR / STATE_FILE


def read_state(run_dir) -> Optional[dict]:
    p = state_path(run_dir)
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def write_state(run_dir, **state) -> None:
    write_json(state_path(run_dir), state)


def save_model(model, path: Path) -> None:
    """``model.save`` to a temporary name renamed into place: a kill never leaves half a model."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(str(tmp))
    os.replace(tmp, path)


def is_run(weights: Optional[str]) -> bool:
    """``weights`` names a kpconv run (its directory or its ``model.keras``)."""
    if not weights or weights in ("none", "imagenet"):
        return False
    p = Path(weights)
    return (p.is_dir() and (p / CONFIG_FILE).is_file()) or (p.suffix == ".keras" and p.is_file())


def run_dir_of(weights: str) -> Path:
    p = Path(weights)
    return p if p.is_dir() else p.parent


def import_keras_without_pandas() -> None:
    """Import Keras (and TensorFlow) with pandas kept out of Keras, for a process that only runs a trained
    model (``kpconv predict``). Keras imports pandas when it can
    (``keras/src/trainers/data_adapters/array_slicing.py``: ``try: import pandas``) only to take DataFrames in
    ``fit``/``predict``, which kpconv never hands it; that import (pandas and pyarrow) was 0.3 s of CPU of
    predict's start-up of about 4 (docs/benchmarks.md, "Start-up"). pandas stays importable after (``--format
    dlc-h5`` imports it to write); when pandas or Keras is imported already, this is a plain import."""
    import sys

    if "keras" in sys.modules or "pandas" in sys.modules:
        import keras  # noqa: F401
        return
    sys.modules["pandas"] = None     # Keras's optional import then takes its ImportError branch
    try:
        import keras  # noqa: F401,F811
    finally:
        if "pandas" in sys.modules and sys.modules["pandas"] is None:
            del sys.modules["pandas"]


def open_run(run_dir) -> Tuple[dict, object]:
    """``(config, model as trained)`` of a run directory (``model.keras``). For inference, use
    :meth:`kpconv.model.inference.Inference.from_run`."""
    from . import network as kmodel

    config = read_config(run_dir)
    return config, kmodel.load_model(Path(run_dir) / MODEL_FILE)
