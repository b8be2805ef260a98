"""Peers side by side: kpconv, Ultralytics YOLO-pose and SLEAP's sleap-nn, each trained from random
initialization on the same images under the same time budget on this machine, one at a time, and
scored by kpconv's own metric code in original pixels.

* **Data**: a DeepLabCut project (default ``../shared/datasets/mirror-mouse``) ingested and sharded
  exactly as ``bench_accuracy.py`` does (320x240, ``--resize pad``, split by image with the seed;
  ``--split`` e.g. ``train=0.5,test=0.5`` for the published-anchor comparison). The peers get the
  very images of the shards' train and test splits (read back from the shards' records, so the split
  is kpconv's), at their original size, with the same labelled keypoints.
* **kpconv**: ``kpconv train --weights none --time-limit M --seed S`` (the small-data recipe), as in
  ``bench_accuracy.py``.
* **Ultralytics YOLO-pose**: ``YOLO("yolov8n-pose.yaml").train(pretrained=False, time=M/60, ...)`` at
  ``--yolo-imgsz`` (320: the stride-32 size nearest kpconv's 320x240 input), its default recipe
  otherwise. Labels: one row per instance, ``0 cx cy w h`` then ``x y v`` per keypoint, normalized;
  the box is the labelled keypoints' box grown by ``--box-margin`` of its longer side on each side,
  clipped to the image. ``flip_idx`` from the keypoints' flip pairs; without pairs it is left out and
  Ultralytics turns its flips off, as kpconv does. It validates on the train images (the test images
  never reach training) and the last weights predict (``conf=0.001``; the most confident box).
* **sleap-nn**: ``ConfigGenerator.from_slp(train.slp).auto()`` (the configuration ``sleap-nn config
  --auto`` writes), single instance (forced, with a note, if auto recommends another pipeline);
  the budget is Lightning's ``max_time`` (sleap-nn has only epochs, at least
  ``min_train_steps_per_epoch`` = 200 steps each). Predict: ``run_inference`` with no peak threshold,
  so every keypoint gets a prediction, as with kpconv.

Pixel conventions (kpconv's manifests and records: continuous, pixel ``i``'s centre at ``i + 0.5``):

* **Ultralytics**: continuous too, so no shift. Evidence in its code (8.4): labels are normalized by
  the image size (``x / w``); the horizontal flip is ``x -> w - x`` (``Instances.fliplr``: a flip
  about the image's edge, which is exact only when pixel ``i`` spans ``[i, i + 1]``); the letterbox
  resizes with ``cv2.resize`` (half-pixel centres) and scales points by the same ratio, and
  ``ops.scale_coords`` maps predictions back by dividing by it, again exact only in the continuous
  convention. ``YOLO_OFFSET`` = 0.
* **SLEAP**: pixel ``i``'s centre at ``i`` (``kpconv.data.formats.sleap.PIXEL_ORIGIN`` = ``center``, an offset of 0.5, with its
  evidence: sleap-io's "center of pixel is (0, 0)" and sleap-nn's confidence maps sampling pixel
  ``i`` at coordinate ``i``, ``make_grid_vectors``). Labels go to sleap-nn as ``x - 0.5``, its
  predictions come back as ``x + 0.5``.

All three are scored on the same arrays: the test split's records read back by
``kpconv.model.evaluate.collect`` (targets mapped to original pixels, PCK's reference length, the mask),
the peers' predictions (original pixels, converted to kpconv's convention) matched by image; then
``kpconv.model.metrics.summary``. Printed: mean and median error in original pixels, PCK@0.1, the fraction
within 5 px, and kpconv's mean error divided by each peer's (target: at most 0.5, i.e. kpconv at
least 2x lower). A peer that cannot finish (no epoch done in the budget, an error) is printed as such.

::

    python benchmarks/bench_peers.py [--minutes 15] [--seed 0] [--split train=0.95,test=0.05]
        [--peers yolo,sleap] [--peers-python PATH] [--real PROJECT_DIR] [--yolo-imgsz 320]
        [--box-margin 0.1] [--work DIR]

Runs from kpconv's environment; the peers run in subprocesses with ``--peers-python`` (default: the
``KPCONV_PEERS_PYTHON`` environment variable), a Python with ``pip install 'kpconv[peers]'``
(ultralytics, sleap-nn; they pull PyTorch, so keep them in an environment of their own). Without
one, the peers are skipped with a message and only kpconv runs. The same file is the peers' worker
(``--worker yolo|sleap``, run by that Python; it imports neither kpconv nor TensorFlow).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the shared datasets folder beside the checkout (or beside the folder of worktrees)
DEFAULT_REAL = next((p / "shared" / "datasets" / "mirror-mouse" for p in HERE.parents
                     if (p / "shared" / "datasets" / "mirror-mouse").is_dir()),
                    HERE.parent.parent / "shared" / "datasets" / "mirror-mouse")
PEERS = ("yolo", "sleap")
PEER_NAMES = {"yolo": "Ultralytics YOLOv8n-pose", "sleap": "sleap-nn single-instance UNet"}

# x_peer = x_kpconv - offset (and back: x_kpconv = x_peer + offset); see the module docstring.
YOLO_OFFSET = 0.0
SLEAP_OFFSET = 0.5      # kpconv.data.formats.sleap.PIXEL_ORIGIN's offset (checked in main(); the worker cannot import kpconv)
OFFSETS = {"yolo": YOLO_OFFSET, "sleap": SLEAP_OFFSET}
# sleap-nn NaNs a point whose peak value is below peak_threshold (0.2 by default; 0 still drops the
# negative peaks of a barely trained model): this takes every keypoint's maximum, as kpconv does (a
# finite number: its predictions file stores the value and refuses -inf)
NO_PEAK_THRESHOLD = -1e9


# --------------------------------------------------------------------------- label conversion (pure Python)

def to_peer(points, offset: float):
    """kpconv points ``[[x, y, v], ...]`` (original pixels, continuous) -> the peer's convention;
    unlabelled points (v = 0) become None."""
    return [None if v <= 0 else [x - offset, y - offset, v] for x, y, v in points]


def from_peer(points, offset: float):
    """The peer's ``[[x, y, score], ...]`` (None or NaN for no prediction) -> kpconv's convention."""
    out = []
    for p in points:
        if p is None or p[0] is None or p[1] is None or math.isnan(p[0]) or math.isnan(p[1]):
            out.append(None)
        else:
            out.append([p[0] + offset, p[1] + offset, *p[2:]])
    return out


def keypoint_box(points, width: int, height: int, margin: float):
    """``[x0, y0, x1, y1]``: the labelled points' box grown by ``margin`` times its longer side on each
    side, clipped to the image (``width`` x ``height``, continuous pixels). None without a labelled point."""
    xy = [(x, y) for x, y, v in points if v > 0]
    if not xy:
        return None
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    grow = margin * max(max(xs) - min(xs), max(ys) - min(ys))
    return [max(0.0, min(xs) - grow), max(0.0, min(ys) - grow), min(float(width), max(xs) + grow),
            min(float(height), max(ys) + grow)]


def yolo_label_line(points, width: int, height: int, margin: float) -> str:
    """One YOLO-pose label row for an instance with kpconv ``points`` (original pixels): ``0 cx cy w h``
    then ``x y v`` per keypoint, normalized to the image; an unlabelled keypoint is ``0 0 0``."""
    box = keypoint_box(points, width, height, margin)
    if box is None:
        raise ValueError("an instance with no labelled keypoint has no box")
    x0, y0, x1, y1 = box
    vals = [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
    row = ["0"] + [f"{v:.6f}" for v in vals]
    for p in to_peer(points, YOLO_OFFSET):
        row += ["0", "0", "0"] if p is None else [f"{p[0] / width:.6f}", f"{p[1] / height:.6f}", str(int(p[2]))]
    return " ".join(row)


def yolo_data_yaml(root: Path, num_keypoints: int, flip_permutation) -> str:
    """``data.yaml`` (JSON is YAML): train on ``images/train``, validate on the train images too (the
    test images never reach training); ``flip_idx`` only when it swaps something."""
    data = {"path": str(root), "train": "images/train", "val": "images/train", "names": {0: "animal"},
            "kpt_shape": [num_keypoints, 3]}
    if list(flip_permutation) != list(range(num_keypoints)):
        data["flip_idx"] = list(flip_permutation)
    return json.dumps(data, indent=1) + "\n"


def link_name(source_path: str) -> str:
    """A flat, unique file name for an image of the manifest (``a/b.png`` -> ``a__b.png``)."""
    return source_path.replace("\\", "/").replace("/", "__")


# --------------------------------------------------------------------------- kpconv side

def split_images(manifest: Path, shards: Path, split: str) -> list:
    """The images of ``split``, read back from the shards' records (no TensorFlow): ``source_path``,
    absolute ``path``, original ``width``/``height`` and ``points`` (K x [x, y, v], original pixels,
    kpconv's convention). Exits when an image holds more than one instance (the peers here are single
    instance)."""
    import numpy as np

    from kpconv.model import metrics
    from kpconv.data.dataset_info import read_dataset_info
    from kpconv.data.manifest import open_manifest
    from kpconv.data.records import decode_record
    from kpconv.data.tfrecord import read_records

    header, _ = open_manifest(str(manifest))
    root = (manifest.parent / header.images_root).resolve()
    info = read_dataset_info(shards)
    k = info.num_keypoints
    out = {}
    for f in info.files(split):
        for data in read_records(f, info.compression):
            r = decode_record(data, k)
            src = r["image/source_path"]
            if src in out:
                sys.exit(f"{src}: more than one instance in the image; the peers here are single-instance")
            w, h = r["image/width"], r["image/height"]
            norm = np.stack([r["keypoints/x"], r["keypoints/y"]], -1)[None]
            px = metrics.to_original(norm, [[w, h]], [r["transform/stored_to_original"]])[0]
            vis = r["keypoints/visibility"]
            out[src] = {"source_path": src, "path": str(root / src), "width": r["image/original_width"],
                        "height": r["image/original_height"],
                        "points": [[float(x), float(y), int(v)] if v > 0 else [0.0, 0.0, 0]
                                   for (x, y), v in zip(px, vis)]}
    return [out[s] for s in sorted(out)]


def export_yolo(root: Path, splits: dict, num_keypoints: int, flip_permutation, margin: float) -> Path:
    """The YOLO-pose dataset: ``images/<split>/`` (links to the originals), ``labels/<split>/``, ``data.yaml``."""
    for split, images in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for im in images:
            name = link_name(im["source_path"])
            link = root / "images" / split / name
            if not link.exists():
                link.symlink_to(im["path"])
            (root / "labels" / split / Path(name).with_suffix(".txt").name).write_text(
                yolo_label_line(im["points"], im["width"], im["height"], margin) + "\n")
    (root / "data.yaml").write_text(yolo_data_yaml(root, num_keypoints, flip_permutation))
    return root / "data.yaml"


def run_peer(peer: str, python: str, job: dict, work: Path, minutes: float) -> dict:
    """Run the worker for ``peer`` in the peers' Python; its result (or the reason it has none)."""
    jpath, rpath, log = work / f"{peer}_job.json", work / f"{peer}_result.json", work / f"{peer}.log"
    jpath.write_text(json.dumps(job))
    if rpath.exists():
        rpath.unlink()
    cmd = [python, str(Path(__file__).resolve()), "--worker", peer, "--job", str(jpath), "--out", str(rpath)]
    print(f"  $ {' '.join(cmd)}  (log: {log})", flush=True)
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # the budget, plus set-up, the peer's own end-of-training steps and prediction
    limit = minutes * 60 * 3 + 900
    t = time.time()
    try:
        with open(log, "w") as lf:
            p = subprocess.run(cmd, cwd=work, env=env, stdout=lf, stderr=subprocess.STDOUT, timeout=limit)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc = None
    wall = time.time() - t
    if rpath.exists():
        res = json.loads(rpath.read_text())
    else:
        tail = log.read_text()[-2000:] if log.exists() else ""
        why = f"killed after {limit:.0f} s" if rc is None else f"exit code {rc}"
        res = {"status": "failed", "message": f"the worker gave no result ({why}); log tail:\n{tail}"}
    res["wall_s"] = round(wall)
    return res


def kpconv_run(work: Path, shards: Path, seed: int, minutes: float):
    """``kpconv train`` (small-data recipe) and ``kpconv eval``, through bench_accuracy's helpers."""
    sys.path.insert(0, str(HERE))
    import bench_accuracy

    row = bench_accuracy.train_eval(work, shards, "heatmap", seed, minutes)
    return work / f"run_heatmap_{seed}", row


def score(run: Path, shards: Path, preds: dict) -> dict:
    """kpconv's test predictions and each peer's, against the same targets (``collect`` over the test
    records); ``preds``: {peer: {source_path: K x [x, y, ...] or None, kpconv's convention}}. A missing
    prediction (none for the image, or a NaN point) counts as a miss for PCK and within-5-px and is left
    out of the mean and median error; ``missing`` counts them."""
    import numpy as np

    from kpconv.model import metrics, pipeline
    from kpconv.model.evaluate import collect
    from kpconv.model.inference import Inference

    batches = list(pipeline.load(shards, "test", 16, include_meta=True))
    order = [s.decode() for _, _, meta in batches for s in meta["source_path"].numpy()]
    a = collect(Inference.from_run(run), batches)
    labelled = a["mask"] > 0

    def row(pred_px):
        found = ~np.isnan(pred_px[..., 0])
        pred = np.where(found[..., None], pred_px, -1e9)        # a missing point: never within any distance
        err = metrics.errors(pred, a["true_px"])
        s = metrics.summary(pred, a["true_px"], labelled & found, a["norm"])["overall"]
        return {"mean_px": s["mean_error_px"], "median_px": s["median_error_px"],
                "pck@0.1": metrics.pck(err, labelled, a["norm"], 0.1), "within5": float((err[labelled] <= 5.0).mean()),
                "keypoints": int(labelled.sum()), "missing": int((labelled & ~found).sum())}

    rows = {"kpconv": row(a["pred_px"])}
    for peer, by_image in preds.items():
        pred = np.full_like(a["true_px"], np.nan)
        for i, src in enumerate(order):
            for j, p in enumerate(by_image.get(src) or []):
                if p is not None:
                    pred[i, j] = p[:2]
        rows[peer] = row(pred)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="training time budget of each model")
    ap.add_argument("--seed", type=int, default=0, help="split and training seed")
    ap.add_argument("--split", default="train=0.95,test=0.05", help="kpconv shard --split (needs train and test)")
    ap.add_argument("--peers", default=",".join(PEERS), help="which peers (yolo, sleap)")
    ap.add_argument("--peers-python", default=os.environ.get("KPCONV_PEERS_PYTHON"),
                    help="a Python with kpconv[peers] installed (default: $KPCONV_PEERS_PYTHON)")
    ap.add_argument("--real", default=str(DEFAULT_REAL), help="a DeepLabCut project folder")
    ap.add_argument("--yolo-imgsz", type=int, default=320)
    ap.add_argument("--box-margin", type=float, default=0.1, help="YOLO boxes: keypoint box grown by this x its side")
    ap.add_argument("--work", help="working folder, kept (default: a temporary one)")
    ap.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, Path(args.job), Path(args.out))

    from kpconv.data.formats.base import continuous_offset
    from kpconv.data.formats.sleap import PIXEL_ORIGIN
    assert continuous_offset(PIXEL_ORIGIN) == SLEAP_OFFSET, "kpconv's SLEAP convention changed: update SLEAP_OFFSET"
    names = {part.split("=")[0].strip() for part in args.split.split(",")}
    if not {"train", "test"} <= names:
        ap.error(f"--split {args.split}: needs a train and a test split (e.g. train=0.95,test=0.05)")
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            ap.error(f"--peers: unknown peer {p!r} (choose from {', '.join(PEERS)})")
    skipped = None
    if not args.peers_python:
        skipped = "no --peers-python and no KPCONV_PEERS_PYTHON: the peers are skipped (pip install 'kpconv[peers]' " \
                  "into a separate environment and point --peers-python at its python)"
    elif not Path(args.peers_python).exists():
        skipped = f"--peers-python {args.peers_python}: no such file: the peers are skipped"
    if skipped:
        print(skipped, flush=True)
        peers = []
    sys.path.insert(0, str(HERE))
    from bench_accuracy import kpconv

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="kpconv-bench-peers-") as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        manifest, shards = work / "m.jsonl", work / f"s{args.seed}"
        kpconv("ingest", args.real, "-o", manifest)
        if shards.exists():
            shutil.rmtree(shards)
        kpconv("shard", manifest, "-o", shards, "--image-size", "320x240", "--resize", "pad", "--split", args.split,
               "--split-by", "image", "--seed", args.seed)
        from kpconv.data.dataset_info import read_dataset_info

        info = read_dataset_info(shards)
        splits = {s: split_images(manifest, shards, s) for s in ("train", "test")}
        print(f"  split: {len(splits['train'])} train, {len(splits['test'])} test images; "
              f"{info.num_keypoints} keypoints", flush=True)

        print(f"kpconv (--time-limit {args.minutes:g})", flush=True)
        t = time.time()
        run, krow = kpconv_run(work, shards, args.seed, args.minutes)
        kpconv_wall = round(time.time() - t)

        results = {}
        for peer in peers:
            print(f"{PEER_NAMES[peer]} (budget {args.minutes:g} min)", flush=True)
            job = {"minutes": args.minutes, "seed": args.seed, "keypoints": info.keypoint_names,
                   "work": str(work / peer)}
            if peer == "yolo":
                job["data"] = str(export_yolo(work / "yolo_data", splits, info.num_keypoints,
                                              info.flip_permutation(), args.box_margin))
                job["imgsz"] = args.yolo_imgsz
                job["test"] = [{"source_path": im["source_path"],
                                "path": str(work / "yolo_data" / "images" / "test" / link_name(im["source_path"]))}
                               for im in splits["test"]]
            else:
                job["splits"] = {s: [{**im, "points": to_peer(im["points"], SLEAP_OFFSET)} for im in ims]
                                 for s, ims in splits.items()}
            res = run_peer(peer, args.peers_python, job, work, args.minutes)
            results[peer] = res
            print(f"  {peer}: {res['status']}" + (f": {res['message']}" if res.get("message") else ""), flush=True)

        preds = {p: {src: from_peer(pts, OFFSETS[p]) if pts is not None else None
                     for src, pts in r["predictions"].items()}
                 for p, r in results.items() if r["status"] == "ok"}
        rows = score(run, shards, preds)
    total = time.time() - t0

    print(f"\npeers side by side: {args.real}, split {args.split} by image, seed {args.seed}; random initialization; "
          f"CPU ({os.cpu_count()} cores), training budget {args.minutes:g} min each, one at a time; total {total:.0f}s")
    print("scored by kpconv.model.metrics on the same test targets, original pixels, kpconv's pixel convention "
          "(SLEAP's points shifted by +0.5)")
    print(f"{'model':<32} {'train s':>7} {'epochs':>6} {'mean px':>8} {'median px':>9} {'PCK@0.1':>8} {'<=5 px':>7} "
          f"{'missing':>7}")

    def line(name, train_s, epochs, r):
        print(f"{name:<32} {train_s:>7} {epochs:>6} {r['mean_px']:>8.2f} {r['median_px']:>9.2f} {r['pck@0.1']:>8.3f} "
              f"{r['within5']:>7.3f} {r['missing']:>7}")

    line("kpconv (heatmap, --weights none)", krow["train_s"], krow["epochs"], rows["kpconv"])
    if abs(rows["kpconv"]["mean_px"] - krow["mean_px"]) > 1e-6:
        print(f"  note: kpconv eval's mean error {krow['mean_px']:.4f} differs from this scoring's")
    for peer in peers:
        r = results[peer]
        if r["status"] != "ok":
            print(f"{PEER_NAMES[peer]:<32} did not finish: {r['message'].splitlines()[0] if r.get('message') else ''}")
            continue
        line(PEER_NAMES[peer], r.get("train_s", "?"), r.get("epochs", "?"), rows[peer])
        for note in r.get("notes", []):
            print(f"  {peer}: {note}")
    for peer in peers:
        if peer in rows:
            ratio = rows["kpconv"]["mean_px"] / rows[peer]["mean_px"]
            print(f"kpconv / {PEER_NAMES[peer]} mean error: {ratio:.2f} ({1 / ratio:.1f}x lower; target: at least 2x)")
        elif peer in results:
            print(f"kpconv / {PEER_NAMES[peer]}: no ratio ({peer} did not finish)")
    if skipped:
        print(skipped)


# --------------------------------------------------------------------------- workers (the peers' Python)

def worker(peer: str, job_path: Path, out: Path) -> None:
    """Train and predict one peer; writes ``out`` (JSON): status, message, train_s, epochs, notes,
    predictions {source_path: K x [x, y, score] in the peer's convention, or None}."""
    job = json.loads(job_path.read_text())
    Path(job["work"]).mkdir(parents=True, exist_ok=True)
    try:
        res = (yolo_worker if peer == "yolo" else sleap_worker)(job)
    except Exception as e:  # the peer's own failure: reported in the benchmark's output, with the log's traceback
        import traceback

        traceback.print_exc()
        res = {"status": "failed", "message": f"{type(e).__name__}: {e}"}
    out.write_text(json.dumps(res))


def yolo_worker(job: dict) -> dict:
    from ultralytics import YOLO

    work = Path(job["work"])
    model = YOLO("yolov8n-pose.yaml")
    t = time.time()
    model.train(data=job["data"], pretrained=False, time=job["minutes"] / 60, epochs=100000, imgsz=job["imgsz"],
                device="cpu", val=False, plots=False, seed=job["seed"], project=str(work), name="train",
                exist_ok=True, verbose=False)
    train_s = time.time() - t
    last = work / "train" / "weights" / "last.pt"
    if not last.exists():
        return {"status": "failed", "message": f"no weights after {train_s:.0f} s ({last} missing)"}
    epochs = None
    results_csv = work / "train" / "results.csv"
    if results_csv.exists():
        epochs = max(0, len(results_csv.read_text().strip().splitlines()) - 1)
    net = YOLO(str(last))
    preds = {}
    for im in job["test"]:
        r = net.predict(im["path"], imgsz=job["imgsz"], conf=0.001, max_det=20, device="cpu", verbose=False)[0]
        if r.boxes is None or len(r.boxes) == 0:
            preds[im["source_path"]] = None
            continue
        i = int(r.boxes.conf.argmax())
        preds[im["source_path"]] = [[float(v) for v in p] for p in r.keypoints.data[i].tolist()]
    return {"status": "ok", "train_s": round(train_s), "epochs": epochs, "predictions": preds,
            "notes": [f"imgsz {job['imgsz']}, {epochs} epochs in the budget"]}


def sleap_worker(job: dict) -> dict:
    import datetime

    import lightning
    import numpy as np
    from lightning.pytorch.callbacks import Timer
    import sleap_io as sio
    from sleap_nn.config_generator.generator import ConfigGenerator
    from sleap_nn.legacy_predict import run_inference
    from sleap_nn.training.model_trainer import ModelTrainer

    work = Path(job["work"])
    skeleton = sio.Skeleton(job["keypoints"])

    def labels(images):
        frames = []
        for im in images:
            pts = np.array([[np.nan, np.nan] if p is None else p[:2] for p in im["points"]], np.float64)
            video = sio.Video.from_filename(im["path"])
            frames.append(sio.LabeledFrame(video=video, frame_idx=0,
                                           instances=[sio.Instance.from_numpy(pts, skeleton=skeleton)]))
        return sio.Labels(labeled_frames=frames, skeletons=[skeleton])

    train_slp, test_slp = work / "train.slp", work / "test.slp"
    sio.save_slp(labels(job["splits"]["train"]), str(train_slp), embed=False)
    sio.save_slp(labels(job["splits"]["test"]), str(test_slp), embed=False)
    gen = ConfigGenerator.from_slp(str(train_slp)).auto()
    notes = []
    if gen._pipeline != "single_instance":
        notes.append(f"auto recommended {gen._pipeline}; single_instance forced")
        gen.pipeline("single_instance")
    cfg = gen.build()
    cfg.trainer_config.ckpt_dir = str(work)
    cfg.trainer_config.run_name = "train"
    cfg.trainer_config.seed = job["seed"]
    cfg.trainer_config.trainer_accelerator = "cpu"
    cfg.trainer_config.enable_progress_bar = False
    pre = cfg.data_config.preprocessing
    notes.append(f"backbone {gen._backbone}, input scale {pre.scale}, batch {cfg.trainer_config.train_data_loader.batch_size}, "
                 f"{cfg.trainer_config.min_train_steps_per_epoch} steps/epoch minimum, max_epochs "
                 f"{cfg.trainer_config.max_epochs}, early stopping patience "
                 f"{cfg.trainer_config.early_stopping.patience}, validation fraction {cfg.data_config.validation_fraction}")

    # the time budget: Lightning's max_time, given to the Trainer sleap-nn builds. ModelTrainer is what
    # sleap_nn.train.run_training runs; run_training then also predicts and scores its train and
    # validation splits, minutes of CPU that play no part here.
    budget = datetime.timedelta(seconds=job["minutes"] * 60)
    init = lightning.Trainer.__init__

    def with_budget(self, *a, **kw):
        kw["max_time"] = budget
        init(self, *a, **kw)

    lightning.Trainer.__init__ = with_budget
    t = time.time()
    try:
        model_trainer = ModelTrainer.get_model_trainer_from_config(cfg)
        model_trainer.train()
    finally:
        lightning.Trainer.__init__ = init
    train_s = time.time() - t
    trainer = model_trainer.trainer
    steps = trainer.global_step
    per_epoch = trainer.num_training_batches
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    fit_s = timer.time_elapsed("train") if timer is not None else float("nan")
    epochs = steps // per_epoch if per_epoch else None
    run = work / "train"
    ckpt = run / "best.ckpt"
    notes.append(f"{steps} steps of batch {cfg.trainer_config.train_data_loader.batch_size} ({epochs} whole epochs of "
                 f"{per_epoch} steps; a cut epoch still validates and saves); fit {fit_s:.0f} s of the "
                 f"{job['minutes'] * 60:.0f} s budget (max_time is checked after each step), {train_s:.0f} s "
                 f"with sleap-nn's set-up")
    if not ckpt.exists():
        return {"status": "failed", "train_s": round(train_s), "epochs": epochs, "notes": notes,
                "message": f"no checkpoint after {steps} steps ({epochs} whole epochs of {per_epoch} steps) in "
                           f"{job['minutes']:g} min"}
    pred = run_inference(data_path=str(test_slp), model_paths=[str(run)], device="cpu", only_labeled_frames=True,
                         peak_threshold=NO_PEAK_THRESHOLD, output_path=str(work / "test.predictions.slp"))
    by_path = {im["path"]: im["source_path"] for im in job["splits"]["test"]}
    preds = {im["source_path"]: None for im in job["splits"]["test"]}
    for lf in pred.labeled_frames:
        name = lf.video.filename     # an image "video": the file's name, or a list of one
        src = by_path[str(name[0] if isinstance(name, (list, tuple)) else name)]
        if lf.instances:
            inst = max(lf.instances, key=lambda i: getattr(i, "score", 0.0) or 0.0)
            preds[src] = [[float(v) for v in p] for p in inst.numpy(scores=True).tolist()]
    return {"status": "ok", "train_s": round(train_s), "epochs": epochs, "predictions": preds, "notes": notes}


if __name__ == "__main__":
    main()
