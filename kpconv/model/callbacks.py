"""The training callbacks. Keras's own where they do the job (``LearningRateScheduler``, which also
logs ``learning_rate``; ``EarlyStopping``; ``CSVLogger`` for ``history.csv``); a custom one only where
the reason is written next to it."""
from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import List, Optional

import keras

from . import run as krun
from ..data.manifest import atomic_output


def cosine(lr0: float, floor: float, t: float) -> float:
    """The learning rate at the fraction ``t`` of a cosine schedule from ``lr0`` down to ``floor``."""
    return float(floor + 0.5 * (lr0 - floor) * (1 + math.cos(math.pi * t)))


def epoch_cosine(lr0: float, floor: float, start: int, n: int):
    def schedule(epoch, lr=None):
        return cosine(lr0, floor, min(max(epoch - start, 0), max(n - 1, 1)) / max(n - 1, 1))
    return keras.callbacks.LearningRateScheduler(schedule)


class Checkpoint(keras.callbacks.Callback):
    """After every epoch: the best model (model.keras), the last one and the state to resume.

    Not ``ModelCheckpoint`` + ``BackupAndRestore``: ModelCheckpoint writes ``model.keras`` in place
    (a kill mid-write leaves no usable best model; here every file is written to a temporary name and
    renamed), and BackupAndRestore deletes its backup at the end of each ``fit`` (one per phase) and
    knows neither the phase (frozen or fine-tuned backbone, a different compile) nor the best value,
    which ``state.json`` carries across processes for ``--resume``."""

    def __init__(self, run_dir: Path, phase: int, monitor: str, best: Optional[float]):
        super().__init__()
        self.run_dir, self.phase, self.monitor, self.best = Path(run_dir), phase, monitor, best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(float(value)):
            return
        if self.best is None or float(value) < self.best:
            self.best = float(value)
            krun.save_model(self.model, self.run_dir / krun.MODEL_FILE)
        krun.save_model(self.model, self.run_dir / krun.CKPT_DIR / krun.LAST_FILE)
        krun.write_state(self.run_dir, phase=self.phase, epoch=epoch + 1, best=self.best, monitor=self.monitor,
                         finished=False)


class NanGuard(keras.callbacks.Callback):
    """Stops at the first NaN or infinite loss and remembers where (``TerminateOnNaN`` stops without
    saying where; the error names the epoch and batch)."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.where = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = (self.epoch, batch)
            self.model.stop_training = True


class TimeBudget(keras.callbacks.Callback):
    """``time_limit``: the cosine learning rate follows the fraction of the budget spent (set before
    every batch; Keras's schedulers follow steps or epochs, not the clock), training stops when it is
    spent, and each epoch's line shows the minutes left and the learning rate."""

    def __init__(self, seconds: float, started: float, lr0: float, floor: float):
        super().__init__()
        self.seconds, self.started, self.lr0, self.floor = seconds, started, lr0, floor
        self.spent = False

    def fraction(self) -> float:
        return min(1.0, (time.monotonic() - self.started) / self.seconds)

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = cosine(self.lr0, self.floor, self.fraction())

    def on_train_batch_end(self, batch, logs=None):
        if self.fraction() >= 1.0:
            self.spent = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["time_left_min"] = round((1.0 - self.fraction()) * self.seconds / 60.0, 2)
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ValMetrics(keras.callbacks.Callback):
    """After every epoch, the validation split's ``val_px_error`` (mean error in original pixels) and
    ``val_pck@0.05`` / ``val_pck@0.1`` (box-normalized), computed exactly as ``kpconv eval`` computes
    ``mean_error_px`` and ``pck@T`` (through :class:`kpconv.model.inference.Inference`). No Keras metric
    does this: it needs each record's transform back to original pixels."""

    def __init__(self, dataset, flip_permutation=None):
        super().__init__()
        self.dataset = dataset
        self.flip_permutation = flip_permutation    # test-time flip, as eval does it by default for the run
        self.inference = None

    def on_epoch_end(self, epoch, logs=None):
        from .evaluate import evaluate_dataset
        from .inference import Inference

        if logs is None:
            return
        if self.inference is None:   # holds the model's variables: later epochs' weights are used
            self.inference = Inference(self.model, flip_test=self.flip_permutation)
        o = evaluate_dataset(self.inference, self.dataset)["overall"]
        logs["val_px_error"] = o["mean_error_px"]
        logs["val_pck@0.05"] = o["pck@0.05"]
        logs["val_pck@0.1"] = o["pck@0.1"]


class History(keras.callbacks.CSVLogger):
    """``history.csv``: Keras's ``CSVLogger`` (appending on resume), after dropping the rows of epochs
    from ``start`` on (written before an interruption that the checkpoint missed), so a resumed run
    has each epoch once. Its columns are set here: CSVLogger (Keras 3.15) adds an empty ``val_`` twin
    of every column when the first epoch has no validation metrics, and a resumed run keeps the
    file's columns."""

    def __init__(self, path: Path, start: int):
        columns = _trim_history(path, start)
        super().__init__(str(path), append=True)
        self.columns = columns[1:] if columns else None   # (the file's first column is the epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:   # (on_train_begin resets them)
            self.keys = self.columns or sorted(logs or {})
        super().on_epoch_end(epoch, logs)


def _trim_history(path: Path, start: int) -> Optional[List[str]]:
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return None
    kept = [r for r in rows[1:] if r and int(float(r[0])) < start]
    if len(kept) != len(rows) - 1:
        with atomic_output(str(path)) as f:
            csv.writer(f, lineterminator="\n").writerows([rows[0], *kept])
    return rows[0]
