"""Video inference benchmark (issue 17): how close ``kpconv predict`` comes to the model's own speed.

On each video (default: ``../shared/datasets/mirror-mouse/videos/*.mp4`` and a synthetic 640x480 clip
made here with PyAV), all in one run with one trained run (``--run``, or a heatmap run trained here on
mirror-mouse at 320x240 for ``--minutes``):

* decode only: PyAV to RGB arrays (:func:`kpconv.model.video.frames`), frames/s;
* model only: :class:`kpconv.model.inference.Inference` (as predict runs it, batch ``--batch``) on prepared
  frames already in memory, frames/s; with ``--runtime tf`` also compiled by XLA (``jit_compile=True``);
* ``kpconv predict RUN VIDEO -o out.jsonl``, the whole command in a subprocess: frames/s over its wall
  time, and the same without its start-up;
* start-up: the same command on one frame (``--end 1``): command start to first frame predicted (and the
  process's exit); its parts in fresh processes (:func:`startup_parts`).

The exports (``kpconv export --format tflite, tflite-int8, onnx``), each in its own runtime (the TFLite
interpreter, onnxruntime) on the same batch of prepared frames as the model-only rate: frames/s, and
the largest keypoint distance from the model (pixels of the stored image; target <= 0.5).

And the JPEG round trip the shards store (``Predictor(run, jpeg=True)``) against predicting on the
decoded pixels (the default): mean error on mirror-mouse's labelled frames both ways, and the
largest difference between the two predictions.

Each with ``--runtime tf`` and ``--runtime onnx`` (when onnxruntime is installed), the model-only rate in
the same runtime. Whole frames are resized by the video decoder (swscale); the reader's rate that way
and with Pillow, and the keypoint distances between the two, are printed per video.

Targets: predict (without start-up) >= 0.8x model only; start-up < 5 s.

::

    python benchmarks/bench_predict.py [--run RUN] [--minutes 1] [--frames 600] [--batch 16] [--video V ...]
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# ../shared next to the checkout (or next to the folder of worktrees)
MIRROR = next((p / "shared" / "datasets" / "mirror-mouse" for p in (ROOT.parent, ROOT.parent.parent)
               if (p / "shared" / "datasets" / "mirror-mouse").is_dir()), ROOT.parent / "shared" / "datasets" / "mirror-mouse")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def kpconv(*args) -> float:
    """Run ``kpconv ARGS`` as a user does; returns its wall time in seconds."""
    cmd = [sys.executable, "-c", "from kpconv.cli import main; main()", "-q", *map(str, args)]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"kpconv {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-3000:]}")
    return took


def synthetic_video(path: Path, frames: int, size=(640, 480), fps=30) -> Path:
    """A moving bright disc on a textured background, H.264."""
    import av

    w, h = size
    rng = np.random.default_rng(0)
    background = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            cx, cy = w / 2 + w / 3 * np.cos(i / 20), h / 2 + h / 3 * np.sin(i / 15)
            arr = background.copy()
            arr[(xx - cx) ** 2 + (yy - cy) ** 2 < 30 ** 2] = 230
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def train_run(work: Path, minutes: float) -> Path:
    kpconv("ingest", MIRROR, "-o", work / "m.jsonl")   # (all 93 frames: a speed benchmark)
    kpconv("shard", work / "m.jsonl", "-o", work / "shards", "--image-size", "320x240", "--resize", "pad")
    kpconv("train", work / "shards", "-o", work / "run", "--weights", "none", "--time-limit", minutes)
    return work / "run"


def bench(run: Path, path: str, batch: int, work: Path, runtime: str = "tf") -> dict:
    from kpconv.model import video
    from kpconv.model.inference import Inference

    fps, count, size = video.info(path)
    t = time.perf_counter()
    n = sum(1 for _ in video.frames(path))
    decode = n / (time.perf_counter() - t)

    def model_rate(**how) -> float:
        inf = Inference.from_run(run, batch_size=batch, runtime=runtime, **how)
        first = next(video.frames(path))[2]
        prepared = np.stack([inf.prepare(first)[0]] * batch).astype(np.float32)
        inf(prepared)   # traced (compiled) once
        reps = max(3, min(50, n // batch))
        t = time.perf_counter()
        for _ in range(reps):
            inf(prepared)
        return reps * batch / (time.perf_counter() - t)

    model = model_rate()
    # the XLA way predict took before (Inference(jit_compile=True)), against the graph it runs now
    xla = model_rate(jit_compile=True) if runtime == "tf" else float("nan")

    startup = kpconv("predict", run, path, "--end", "1", "-o", work / "one.jsonl", "--runtime", runtime)
    whole = kpconv("predict", run, path, "-o", work / "all.jsonl", "--batch-size", batch, "--runtime", runtime)
    lines = sum(1 for _ in open(work / "all.jsonl"))
    assert lines == n, (lines, n)
    # (nan when the one-frame run took about as long as the whole one: a machine too loaded to tell)
    steady = n / (whole - startup) if whole > 1.1 * startup else float("nan")
    return {"video": Path(path).name, "runtime": runtime, "size": f"{size[0]}x{size[1]}", "frames": n, "decode": decode,
            "model": model, "xla": xla, "predict": n / whole, "predict_steady": steady, "ratio": steady / model,
            "startup": startup}


def resize_check(run: Path, path: str, n: int = 64) -> str:
    """The video reader's two ways to resize whole frames to the shards' size: FFmpeg's swscale as frames
    are converted to RGB (predict's default) against full-size RGB then Pillow (as images and the shards
    are resized): reader frames/s (decode + prepare, one thread) and the keypoint distance between the two
    predictions over the first ``n`` frames (original pixels)."""
    from kpconv.model import video
    from kpconv.model.predict import Predictor
    from kpconv.model.video import FrameSelection

    p = Predictor(run)
    inf = p.inference
    _, _, wh = video.info(path)
    scaled = inf.scaled_size(*wh)
    if scaled is None:
        return f"{Path(path).name}: frames are not resized (the shards' size)"
    rates = {}
    for way, size in (("swscale", scaled), ("Pillow", None)):
        t = time.perf_counter()
        k = sum(1 for _, _, a in video.frames(path, size=size) if inf.prepare(a, None, wh if size else None))
        rates[way] = k / (time.perf_counter() - t)
    out = {}
    for way in (True, False):
        p.decoder_resize = way
        out[way] = np.array([q.keypoints for q in p.predict(path, frames=FrameSelection(end=n))])
    d = np.hypot(*(out[True][..., :2] - out[False][..., :2]).reshape(-1, 2).T)
    sure = (np.minimum(out[True][..., 2], out[False][..., 2]) >= 0.5).reshape(-1)
    ds = d[sure] if sure.any() else np.zeros(1)
    return (f"{Path(path).name}: reader (decode + resize + pad) swscale {rates['swscale']:.0f} f/s, Pillow "
            f"{rates['Pillow']:.0f} f/s; keypoints swscale vs Pillow over {len(out[True])} frames: all {d.size}: "
            f"median {np.median(d):.3f} px, mean {d.mean():.3f}, max {d.max():.3f}, over 5 px {int((d > 5).sum())}; "
            f"confidence >= 0.5 in both ({int(sure.sum())}): median {np.median(ds):.3f}, p99 "
            f"{np.percentile(ds, 99):.3f}, max {ds.max():.3f}")


STARTUP = """
import os, resource, sys, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
mark = [(float(sys.argv[2]), 0.0)]   # (the parent's clock before it started this process, argv[2])
out = []
def lap(name):
    mark.append((time.time(), cpu()))
    out.append(f"{name} {mark[-1][0] - mark[-2][0]:.3f} {name}-cpu {mark[-1][1] - mark[-2][1]:.3f}")
import kpconv.cli
lap("python+cli")
from kpconv.model.run import import_keras_without_pandas
import_keras_without_pandas() if sys.argv[3] != "pandas" else __import__("keras")
lap("tensorflow+keras")
import numpy as np
from kpconv.model.inference import Inference
inf = Inference.from_run(sys.argv[1], jit_compile=sys.argv[4] == "xla")
lap("load")
from kpconv.model import video
wh = video.info(sys.argv[5])[2]
scaled = inf.scaled_size(*wh)
first = next(video.frames(sys.argv[5], size=scaled))[2]
lap("video")
inf(inf.prepare(first, None, wh if scaled else None)[0][None])
lap("first-call")
print(" ".join(out), time.time(), flush=True)
if sys.argv[6] == "freeze":
    import gc
    gc.freeze()
"""


def _startup_run(run: Path, path: str, pandas: str, way: str, exit_: str) -> dict:
    t = time.time()
    r = subprocess.run([sys.executable, "-c", STARTUP, str(run), str(t), pandas, way, path, exit_], env=ENV,
                       capture_output=True, text=True, check=True)
    gone = time.time()
    *parts, end = r.stdout.split()
    d = {parts[i]: float(parts[i + 1]) for i in range(0, len(parts), 2)}   # name value name-cpu value ...
    d["exit"] = gone - float(end)
    d["total"] = gone - t
    return d


def startup_parts(run: Path, path: str, repeat: int = 3) -> str:
    """Where a fresh process spends the start-up of ``kpconv predict`` (its steps in the same order, timed,
    each the median of ``repeat`` fresh processes): the interpreter and the CLI's import, TensorFlow and Keras
    (with Keras's optional pandas import kept out, as predict does, and with it), opening the run
    (``model.keras``), the video's first frame, the first model call (a TensorFlow graph: trace and first
    run; and compiled by XLA), the process's exit (with ``gc.freeze()`` as ``kpconv``'s main does, and
    without)."""
    ways = {"now": ("nopandas", "graph", "freeze"), "xla": ("nopandas", "xla", "freeze"),
            "pandas": ("pandas", "graph", "freeze"), "nofreeze": ("nopandas", "graph", "nofreeze")}
    runs = {k: [_startup_run(run, path, *v) for _ in range(repeat)] for k, v in ways.items()}
    med = {k: {part: float(np.median([r[part] for r in rs])) for part in rs[0]} for k, rs in runs.items()}
    now = med["now"]
    def both(d, k):
        return f"{d[k]:.2f}" + (f" (cpu {d[k + '-cpu']:.2f})" if k + "-cpu" in d else "")

    parts = ", ".join(f"{k} {both(now, k)}" for k in ("python+cli", "tensorflow+keras", "load", "video", "first-call",
                                                      "exit"))
    return (f"start-up parts (fresh process, wall seconds and the process's CPU seconds, median of {repeat}): {parts}; "
            f"total {now['total']:.2f}\n"
            f"  first call compiled by XLA {both(med['xla'], 'first-call')} (graph {both(now, 'first-call')}); "
            f"tensorflow+keras with pandas {both(med['pandas'], 'tensorflow+keras')} (without "
            f"{both(now, 'tensorflow+keras')}); exit without gc.freeze() {med['nofreeze']['exit']:.2f} (with "
            f"{now['exit']:.2f})")


EXPORTS = ("tflite", "tflite-int8", "onnx")


def bench_exports(run: Path, path: str, batch: int, work: Path, n: int = 64) -> list:
    """Each export of ``run`` in its own runtime on ``n`` prepared frames of ``path`` (every 10th): (format,
    bytes, frames/s, (mean, median, max distance from the model, max where the model's confidence >= 0.5)
    in stored-image pixels)."""
    import warnings

    from kpconv.model import video
    from kpconv.model.inference import Inference
    from kpconv.model.video import FrameSelection

    inf = Inference.from_run(run, batch_size=batch)
    arrays = []
    for _, _, frame in video.frames(path, FrameSelection(every=10)):
        arrays.append(inf.prepare(frame)[0])
        if len(arrays) == n:
            break
    x = np.stack(arrays).astype(np.float32)
    ref = inf(x)
    w, h = inf.options.size
    rows = []
    for fmt in EXPORTS:
        out = work / ("model.onnx" if fmt == "onnx" else f"model-{fmt}.tflite")
        kpconv("export", run, "--format", fmt, "-o", out, "--check", "0")
        if fmt == "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            call = lambda: session.run(["keypoints"], {"image": x})[0]  # noqa: E731
        else:
            import tensorflow as tf

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                interp = tf.lite.Interpreter(model_path=str(out), num_threads=os.cpu_count())
            inp = interp.get_input_details()[0]
            interp.resize_tensor_input(inp["index"], x.shape)
            interp.allocate_tensors()
            index = interp.get_output_details()[0]["index"]

            def call(interp=interp, inp=inp, index=index):
                interp.set_tensor(inp["index"], x)
                interp.invoke()
                return interp.get_tensor(index)
        try:
            got = call()
        except RuntimeError as e:   # a TFLite kernel refusing these frames (int8: a DIV by a zero quantized value)
            rows.append((fmt, out.stat().st_size, None, str(e).splitlines()[0]))
            continue
        reps = 2
        t = time.perf_counter()
        for _ in range(reps):
            call()
        rate = reps * len(x) / (time.perf_counter() - t)
        d = np.hypot((got[..., 0] - ref[..., 0]) * w, (got[..., 1] - ref[..., 1]) * h)
        sure = ref[..., 2] >= 0.5
        rows.append((fmt, out.stat().st_size, rate, (float(np.mean(d)), float(np.median(d)), float(np.max(d)),
                                                     float(np.max(d[sure])) if sure.any() else float("nan"))))
    return rows


def jpeg_check(run: Path, work: Path) -> str:
    """Mean error (original pixels) over mirror-mouse's labelled keypoints with and without the JPEG
    round trip, and the largest distance between the two predictions of one keypoint."""
    import json

    from kpconv.model.predict import Predictor

    manifest = work / "m.jsonl"
    if not manifest.exists():
        kpconv("ingest", MIRROR, "-o", manifest)
    lines = [json.loads(x) for x in open(manifest)][1:]
    paths = [str(MIRROR / r["image"]) for r in lines]
    true = np.array([[(x * r["width"], y * r["height"]) for x, y, v in r["keypoints"]] for r in lines])
    mask = np.array([[v > 0 for x, y, v in r["keypoints"]] for r in lines])
    out = {}
    for jpeg in (False, True):
        preds = list(Predictor(run, jpeg=jpeg).predict(paths))
        out[jpeg] = np.array([[k[:2] for k in p.keypoints] for p in preds])
    err = {j: float(np.hypot(*(out[j] - true)[mask].T).mean()) for j in out}
    diff = float(np.hypot(*(out[True] - out[False]).reshape(-1, 2).T).max())
    return (f"JPEG round trip: mean error {err[True]:.3f} px with, {err[False]:.3f} px without (decoded pixels); "
            f"largest difference between the two {diff:.3f} px ({int(mask.sum())} labelled keypoints, "
            f"{len(paths)} frames)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run (default: train one on mirror-mouse here)")
    ap.add_argument("--minutes", type=float, default=1.0, help="training time when no --run is given")
    ap.add_argument("--frames", type=int, default=600, help="frames of the synthetic 640x480 video")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--exports", type=int, default=64, help="frames the exports are compared on")
    ap.add_argument("--runtime", action="append", choices=["tf", "onnx"],
                    help="predict's --runtime, each measured against the model alone in the same runtime "
                         "(default: tf, and onnx when onnxruntime is installed)")
    ap.add_argument("--video", action="append", help="videos (default: mirror-mouse's and the synthetic one)")
    args = ap.parse_args()
    if not args.runtime:
        import importlib.util

        args.runtime = ["tf"] + (["onnx"] if importlib.util.find_spec("onnxruntime") and
                                 importlib.util.find_spec("tf2onnx") else [])
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        work = Path(tmp)
        run = Path(args.run) if args.run else train_run(work, args.minutes)
        videos = args.video or sorted(glob.glob(str(MIRROR / "videos" / "*.mp4")))
        if not args.video:
            videos.append(str(synthetic_video(work / "synthetic_640x480.mp4", args.frames)))
        print(f"run: {run if args.run else f'trained here for {args.minutes:g} min on mirror-mouse (320x240)'}; "
              f"batch {args.batch}; {os.cpu_count()} CPUs")
        print(f"{'video':<24} {'runtime':>7} {'size':>9} {'frames':>6} {'decode f/s':>10} {'model f/s':>9} "
              f"{'xla f/s':>7} {'predict f/s':>11} {'w/o start':>9} {'ratio':>6} {'start s':>7}")
        for v in videos:
            for runtime in args.runtime:
                r = bench(run, v, args.batch, work, runtime)
                print(f"{r['video']:<24} {runtime:>7} {r['size']:>9} {r['frames']:>6} {r['decode']:>10.0f} "
                      f"{r['model']:>9.0f} {r['xla']:>7.0f} {r['predict']:>11.0f} {r['predict_steady']:>9.0f} {r['ratio']:>6.2f} "
                      f"{r['startup']:>7.1f}", flush=True)
        print(f"exports on {args.exports} prepared frames of {Path(videos[0]).name} (every 10th), each in its own "
              f"runtime (model only above: Inference as predict runs it); distance from the model in stored-image pixels, "
              f"all keypoints and those the model gives confidence >= 0.5:")
        print(f"{'format':<12} {'bytes':>10} {'f/s':>6} {'mean px':>8} {'median px':>9} {'max px':>8} {'max conf>=0.5':>13}")
        for fmt, size, rate, diff in bench_exports(run, videos[0], args.batch, work, args.exports):
            if rate is None:
                print(f"{fmt:<12} {size:>10,} failed: {diff}", flush=True)
            else:
                print(f"{fmt:<12} {size:>10,} {rate:>6.0f} {diff[0]:>8.3f} {diff[1]:>9.3f} {diff[2]:>8.3f} {diff[3]:>13.3f}",
                      flush=True)
        print("whole frames resized by the video decoder (swscale, predict's default) or by Pillow:")
        for v in videos:
            print("  " + resize_check(run, v), flush=True)
        print(startup_parts(run, videos[0]), flush=True)
        print(jpeg_check(run, work))
        print("ratio: predict without start-up / model only (target >= 0.8); model f/s: the model alone as predict "
              "runs it (tf: a TensorFlow graph), xla f/s: the same compiled by XLA (Inference(jit_compile=True)); "
              "start s: command start to the first frame predicted, on one frame (target < 5)")


if __name__ == "__main__":
    main()
