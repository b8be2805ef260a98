"""Input pipeline benchmark: images per second of ``kpconv.model.pipeline.load`` (with augmentation)
against the tutorial pipeline (``from_tensor_slices`` of JPEG paths, ``read_file``, ``decode_jpeg``,
``resize``) on the same images, in one run, and against the CPU training step rate of MobileNetV2 at
the same size.

    python benchmarks/bench_pipeline.py [--images 2000] [--size 128] [--batch 32]

Targets: kpconv >= 3x the tutorial pipeline and >= 5x the training step rate. Each pipeline makes
``--passes`` passes over the images, all printed: kpconv's first pass is cold (decode, fill the
cache), later ones are what every later training epoch sees. The ratios compare kpconv's best warm
pass with the tutorial's best pass (the machine is shared: the best pass is the least disturbed).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402


def rate(ds, n_images):
    t = time.perf_counter()
    seen = 0
    for batch in ds:
        seen += int(batch[0].shape[0])
    dt = time.perf_counter() - t
    assert seen == n_images, (seen, n_images)
    return seen / dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width for the training step rate")
    ap.add_argument("--passes", type=int, default=3, help="passes over the images per pipeline (at least 2)")
    ap.add_argument("--work", help="working folder (default: a temporary one)")
    args = ap.parse_args(argv)

    import tensorflow as tf

    from kpconv.model import pipeline
    from kpconv.data.images import ImageOptions
    from kpconv.data.ingest import ingest
    from kpconv.model.network import ModelConfig, build_model
    from kpconv.data.shard import ShardOptions, shard
    from kpconv.model.losses import get as get_loss

    with tempfile.TemporaryDirectory(prefix="kpconv-bench-pipe-") as tmp:
        work = Path(args.work or tmp)
        t = time.time()
        ann = synth.make_coco(work / "synth", args.images, size=(640, 480), seed=1)
        ingest([str(ann)], output=str(work / "data.jsonl"), images=str(work / "synth" / "images"))
        shards = work / "shards"
        shard(str(work / "data.jsonl"), shards,
              ShardOptions(image=ImageOptions(size=(args.size, args.size)), split={"train": 1.0}, num_shards=8,
                           overwrite=True))
        print(f"data: {args.images} JPEG images 640x480 -> shards at {args.size}x{args.size} "
              f"in {time.time() - t:.0f}s", flush=True)
        n = args.images
        size = args.size

        # kpconv.model.pipeline with augmentation
        ds = pipeline.load(shards, "train", args.batch, augment=True, seed=0)
        k_rates = [rate(ds, n) for _ in range(args.passes)]
        plain = pipeline.load(shards, "train", args.batch, shuffle=True, seed=0)
        p_rates = [rate(plain, n) for _ in range(args.passes)]

        # the tutorial pipeline on the same JPEG files
        paths = sorted(str(p) for p in (work / "synth" / "images").glob("*.jpg"))
        targets = tf.zeros((len(paths), 17, 3))

        def load_image(path, target):
            img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
            img = tf.image.resize(img, (size, size))
            return img, target

        tut = (tf.data.Dataset.from_tensor_slices((paths, targets)).shuffle(1000, seed=0)
               .map(load_image, num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch).prefetch(tf.data.AUTOTUNE))
        t_rates = [rate(tut, n) for _ in range(args.passes)]

        # training step rate of MobileNetV2 at the same size (random weights, CPU)
        model = build_model(ModelConfig(17, (size, size), alpha=args.alpha, head="dense"))
        model.compile("adam", loss=get_loss("mse"))
        x = tf.random.uniform((args.batch, size, size, 3), 0, 255)
        y = tf.random.uniform((args.batch, 17, 3))
        model.train_on_batch(x, y)  # trace
        steps = 8
        t = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        train_rate = steps * args.batch / (time.perf_counter() - t)

    print(f"\n{n} images, {size}x{size}, batch {args.batch}, {os.cpu_count()} CPU(s)")
    k_warm, t_best = max(k_rates[1:]), max(t_rates)
    print(f"{'pipeline':<44} " + " ".join(f"{f'pass {i + 1} img/s':>13}" for i in range(args.passes)))
    print(f"{'kpconv.model.pipeline.load (augment, shards)':<44} " + " ".join(f"{v:>13.0f}" for v in k_rates))
    print(f"{'kpconv.model.pipeline.load (no augmentation)':<44} " + " ".join(f"{v:>13.0f}" for v in p_rates))
    print(f"{'tutorial (read_file, decode_jpeg, resize)':<44} " + " ".join(f"{v:>13.0f}" for v in t_rates))
    print(f"{f'MobileNetV2 alpha {args.alpha:g} training step (CPU)':<44} {train_rate:>13.0f}")
    print(f"kpconv (best warm pass) / tutorial (best pass): {k_warm / t_best:.1f}x (target >= 3x); "
          f"kpconv / training: {k_warm / train_rate:.1f}x (target >= 5x); "
          f"without augmentation / tutorial: {max(p_rates[1:]) / t_best:.1f}x")


if __name__ == "__main__":
    main()
