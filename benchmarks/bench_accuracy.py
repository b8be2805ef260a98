"""Accuracy benchmark: train each head from random initialization on the CPU and report PCK@0.05,
PCK@0.1 and the mean pixel error (original image pixels) on the held-out test split.

Data: ``benchmarks/synth.py`` stick figures (17 COCO keypoints), ingested with ``kpconv.ingest`` and
sharded with ``kpconv.shard`` (crop to the box, pad to a square, split by image 80/10/10).

    python benchmarks/bench_accuracy.py [--images 2400] [--size 96] [--minutes 6.5] [--heads spatial,dense]

Each head gets the same time budget (``--minutes``): as many epochs as fit (the learning-rate
schedule is laid out over ``--epochs``; training stops at the budget and keeps the best model).
Target: PCK@0.1 >= 0.90 for the default head.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402


def prepare(work: Path, n_images: int, size: int, seed: int = 0) -> Path:
    from kpconv.images import ImageOptions
    from kpconv.ingest import ingest
    from kpconv.shard import ShardOptions, shard

    t = time.time()
    ann = work / "synth" / "annotations.json"
    if not ann.exists():  # --work reuses the images of an earlier run
        ann = synth.make_coco(work / "synth", n_images, size=(256, 192), seed=seed)
    ingest([str(ann)], output=str(work / "data.jsonl"), images=str(work / "synth" / "images"))
    out = work / "shards"
    if (out / "dataset_info.json").exists():
        return out
    shard(str(work / "data.jsonl"), out, ShardOptions(image=ImageOptions(size=(size, size), resize="pad",
                                                                         crop="bbox", crop_pad=0.2),
                                                      num_shards=4, seed=seed))
    print(f"data: {n_images} images -> {out} in {time.time() - t:.0f}s", flush=True)
    return out


def run_head(shards: Path, work: Path, head: str, epochs: int, minutes: float, alpha: float, batch: int):
    import keras

    from kpconv.evaluate import evaluate
    from kpconv.train import TrainOptions, train

    class Budget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            if time.time() - self.start > minutes * 60:
                self.model.stop_training = True

    run = work / f"run_{head}"
    if run.exists():
        shutil.rmtree(run)
    t = time.time()
    res = train(shards, run, TrainOptions(epochs=epochs, batch_size=batch, learning_rate=2e-3, alpha=alpha,
                                          head=head, weights="none", patience=epochs, verbose=2, seed=0),
                callbacks=[Budget()])
    train_s = time.time() - t
    ev = evaluate(run, shards, split="test")
    o = ev["overall"]
    return {"head": head, "epochs": res.epochs_run, "train_s": round(train_s), "test_instances": ev["instances"],
            "pck@0.05": o["pck@0.05"], "pck@0.1": o["pck@0.1"], "mean_error_px": o["mean_error_px"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2400)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=6.5, help="training time budget per head")
    ap.add_argument("--heads", default="spatial,dense")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="kpconv-bench-acc-") as tmp:
        work = Path(args.work or tmp)
        shards = prepare(work, args.images, args.size)
        rows = []
        for head in args.heads.split(","):
            rows.append(run_head(shards, work, head, args.epochs, args.minutes, args.alpha, args.batch))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nMobileNetV2 alpha {args.alpha:g}, {args.size}x{args.size} px, random init, CPU, "
          f"{args.images} synthetic images (test split held out by image); total {time.time() - t0:.0f}s")
    print(f"{'head':<8} {'epochs':>6} {'train s':>8} {'PCK@0.05':>9} {'PCK@0.1':>8} {'mean px':>8}")
    for r in rows:
        print(f"{r['head']:<8} {r['epochs']:>6} {r['train_s']:>8} {r['pck@0.05']:>9.3f} {r['pck@0.1']:>8.3f} "
              f"{r['mean_error_px']:>8.2f}")


if __name__ == "__main__":
    main()
