"""``kpconv predict``: keypoints in original image pixels for new images and videos.

Each image (EXIF orientation applied), or each decoded video frame, goes through the same
preprocessing as the shards the run was trained on (recorded in ``config.json`` at train time from
``dataset_info.json``), done on the decoded array by :meth:`kpconv.inference.Inference.prepare`: the
crop (``none``, or ``bbox`` with the shard's padding around a box; without a box a ``bbox`` run uses
the whole image) and the resize (``stretch`` or ``pad``). The model's output is mapped back through
the same transform.

Every model call goes through :meth:`Predictor.infer` (:class:`kpconv.inference.Inference`: one
compiled function per input size), which returns the normalized coordinates and a confidence in
``[0, 1]`` per keypoint; everything downstream (the writers, the drawing) carries it.

Files are read, video frames decoded (:mod:`kpconv.video`) and prepared in a producer thread into a
bounded queue (four batches) while the model runs, so memory stays bounded whatever the video's
length. A file that cannot be read is reported (``on_error``) and skipped; the others are predicted.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .drawing import relative_name
from .errors import AnnotationError, ImageError, KpconvError, Location, VideoError
from .video import VIDEO_EXTS, FrameSelection, is_video

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FORMATS = ("jsonl", "csv", "dlc", "coco")
DEFAULT_MIN_CONFIDENCE = 0.5


@dataclass
class Prediction:
    """One instance in one image or video frame."""

    image: str                      # the file: an image, or the video the frame comes from
    width: int                      # original size (EXIF orientation applied)
    height: int
    keypoints: List[List[float]]    # K x [x, y, confidence]: original pixels, confidence in [0, 1]
    bbox: Optional[List[float]] = None   # the instance's box, x, y, w, h in original pixels (--bbox, --boxes)
    score: Optional[float] = None        # the box's score (--boxes)
    frame: Optional[int] = None          # video frames: index (0-based, in decoding order) and time in seconds
    time: Optional[float] = None
    instance: int = 0                    # the box's index within its image or frame
    pixels: Any = field(default=None, repr=False, compare=False)  # the decoded frame, RGB uint8 (keep_frames=True)

    @property
    def confidence(self) -> float:
        """The mean keypoint confidence."""
        return float(np.mean([k[2] for k in self.keypoints])) if self.keypoints else 0.0


@dataclass
class Failure:
    """A file (or a video from one frame on) that could not be predicted."""

    file: str
    reason: str
    message: str
    frame: Optional[int] = None

    def __str__(self) -> str:
        return f"{self.file}: " + (f"frame {self.frame}: " if self.frame is not None else "") + self.message

    def to_json(self) -> dict:
        return {"file": self.file, **({"frame": self.frame} if self.frame is not None else {}),
                "reason": self.reason, "message": self.message}


# ------------------------------------------------------------------------------------------- inputs
def expand_inputs(paths: Sequence[str]) -> List[str]:
    """Files as given; folders -> their images and videos (sorted, not recursive). No duplicates."""
    out = []
    for p in paths:
        q = Path(p)
        if q.is_dir():
            out += sorted(str(f) for f in q.iterdir()
                          if f.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS and f.is_file())
        else:
            out.append(str(q))
    return list(dict.fromkeys(out))


def common_root(paths: Sequence[str]) -> Path:
    """The deepest folder that holds every file of ``paths``."""
    if not paths:
        return Path(".")
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))


# -------------------------------------------------------------------------------------------- boxes
class Boxes:
    """Instance boxes per image or video frame, from COCO detection results or a CSV.

    COCO: a JSON list of ``{"image_id", "bbox": [x, y, w, h], "score"}`` (detector output), or a COCO
    dataset ``{"images": [...], "annotations": [...]}``; ``image_id`` is matched to the file through
    ``images[].file_name``, else it is the file's name (path relative to the inputs' common folder,
    or the file name alone), or for an integer the number in the image's file name (``000000397133.jpg``),
    or a frame index of a video given alone. CSV: ``image,x,y,w,h[,score]`` rows (a header row is
    allowed); for a video frame, ``image`` is ``VIDEO#FRAME`` (``clip.mp4#12``) or the frame index.
    Boxes are in original pixels."""

    def __init__(self, by_key: Dict[str, List[Tuple[List[float], Optional[float]]]], path: str):
        self.by_key = by_key
        self.path = path

    @classmethod
    def read(cls, path: str) -> "Boxes":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise AnnotationError(f"cannot read boxes file: {e}", Location(path)) from None
        if p.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
            return cls(_coco_boxes(text, path), path)
        return cls(_csv_boxes(text, path), path)

    def max_per_item(self) -> int:
        return max((len(v) for v in self.by_key.values()), default=0)

    def lookup(self, path: str, root: Path, frame: Optional[int] = None, single_video: bool = False):
        """The boxes of one image or video frame (a list, maybe empty)."""
        rel = relative_name(path, root)
        names = [path, rel, Path(path).name]
        if frame is None:
            stem = Path(path).stem
            keys = names + ([str(int(stem))] if stem.isdigit() else [])
        else:
            keys = [f"{n}#{frame}" for n in names] + ([str(frame)] if single_video else [])
        for k in keys:
            if k in self.by_key:
                return self.by_key[k]
        return []


def _box(values, where: Location, field_names=("x", "y", "w", "h")) -> List[float]:
    out = []
    for name, v in zip(field_names, values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise AnnotationError(f"expected a number, got {v!r}", where.with_field(name)) from None
        if not math.isfinite(f):
            raise AnnotationError(f"expected a finite number, got {v!r}", where.with_field(name))
        out.append(f)
    if out[2] <= 0 or out[3] <= 0:
        raise AnnotationError(f"expected a box with w, h > 0, got {out}", where.with_field("bbox"))
    return out


def _coco_boxes(text: str, path: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"invalid JSON: {e.msg}", Location(path, e.lineno)) from None
    names = {}
    if isinstance(data, dict):
        for i, im in enumerate(data.get("images") or []):
            if isinstance(im, dict) and "id" in im and "file_name" in im:
                names[str(im["id"])] = str(im["file_name"])
        data = data.get("annotations")
    if not isinstance(data, list):
        raise AnnotationError("expected a list of detections (COCO results) or a COCO dataset with "
                              "'annotations'", Location(path))
    out: Dict[str, list] = {}
    for i, d in enumerate(data):
        where = Location(path, record=str(i))
        if not isinstance(d, dict):
            raise AnnotationError(f"expected an object, got {type(d).__name__}", where)
        for k in ("image_id", "bbox"):
            if k not in d:
                raise AnnotationError("missing field", where.with_field(k))
        if not isinstance(d["bbox"], list) or len(d["bbox"]) != 4:
            raise AnnotationError(f"expected [x, y, w, h], got {d['bbox']!r}", where.with_field("bbox"))
        box = _box(d["bbox"], where)
        score = d.get("score")
        if score is not None and not isinstance(score, (int, float)):
            raise AnnotationError(f"expected a number, got {score!r}", where.with_field("score"))
        key = names.get(str(d["image_id"]), str(d["image_id"]))
        out.setdefault(key, []).append((box, None if score is None else float(score)))
    return out


def _csv_boxes(text: str, path: str):
    out: Dict[str, list] = {}
    for line, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or all(not c.strip() for c in row):
            continue
        where = Location(path, line)
        if len(row) not in (5, 6):
            raise AnnotationError(f"expected 5 or 6 columns (image,x,y,w,h[,score]), got {len(row)}", where)
        if line == 1 and row[1].strip().lower() == "x":
            continue   # header
        box = _box(row[1:5], where)
        score = None
        if len(row) == 6 and row[5].strip():
            score = _box([row[5], 0, 1, 1], where, ("score", "-", "-", "-"))[0]
        out.setdefault(row[0].strip(), []).append((box, score))
    return out


# -------------------------------------------------------------------------------------- predictor
def read_ahead(items: Iterable, maxsize: int) -> Iterator:
    """``items``, produced in a thread into a queue of ``maxsize`` while the caller works on the
    previous ones. An exception of the producer is raised here, where its item would have come;
    leaving the loop early stops the producer (and closes ``items``)."""
    q: queue.Queue = queue.Queue(maxsize)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        it = iter(items)
        try:
            for x in it:
                if not put((None, x)):
                    return
            put((done, None))
        except BaseException as e:   # handed to the consumer, raised there with its traceback
            put((e, None))
        finally:
            getattr(it, "close", lambda: None)()

    thread = threading.Thread(target=produce, name="kpconv-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            err, x = q.get()
            if err is done:
                return
            if err is not None:
                raise err
            yield x
    finally:
        stop.set()
        thread.join()


class Predictor:
    """A trained run, ready to predict::

        p = kpconv.Predictor("run/")
        for pred in p.predict("clip.mp4"):          # or an image, a folder, a list of them
            print(pred.frame, pred.keypoints)       # K x [x, y, confidence] in original pixels

    A thin wrapper on :class:`kpconv.inference.Inference` (``inference``) that reads files, boxes
    and videos. ``jpeg=True`` encodes each prepared image as JPEG and back, as the shards store it."""

    def __init__(self, run_dir, batch_size: int = 16, jpeg: bool = False):
        from .inference import Inference

        self.run_dir = Path(run_dir)
        self.inference = Inference.from_run(self.run_dir, batch_size=batch_size, jpeg=jpeg)
        self.config = self.inference.config
        self.names = list(self.config["dataset"]["keypoints"])
        self.skeleton = [tuple(p) for p in self.config["dataset"].get("skeleton") or []]
        self.flip_pairs = [tuple(p) for p in self.config["dataset"].get("flip_pairs") or []]
        self.options = self.inference.options

    @property
    def crops_to_box(self) -> bool:
        return self.options.crop == "bbox"

    def infer(self, batch) -> Tuple[np.ndarray, np.ndarray]:
        """The one place predict runs the model: ``batch`` (B, H, W, 3) pixels in [0, 255] -> ``xy``
        (B, K, 2) normalized to the stored image, ``confidence`` (B, K) in [0, 1]."""
        return self.inference.infer(batch)

    def predict(self, inputs, bbox: Optional[Sequence[float]] = None, boxes: Optional[Boxes] = None,
                batch_size: int = 16, frames: FrameSelection = FrameSelection(),
                on_error: Optional[Callable[[Failure], None]] = None, keep_frames: bool = False,
                root: Optional[Path] = None) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per instance: per image (or per box of ``boxes``) and per
        selected video frame, in input order.

        ``inputs`` is a path or a list of paths: images, videos, folders of them. ``bbox`` is one box
        (original pixels) for every input; ``boxes`` gives boxes per image or frame. A file that cannot
        be read raises its located error, or, with ``on_error``, is passed to it as a
        :class:`Failure` and skipped. ``keep_frames`` puts each decoded frame in ``pixels``."""
        from .metrics import to_original
        from .progress import progress

        paths = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
        root = root or common_root(paths)
        self.inference.batch_size = batch_size   # the model runs on the batches formed here
        single_video = sum(is_video(p) for p in paths) == 1
        batch: list = []
        size = self.options.size

        def flush():
            xy, conf = self.infer(np.stack([b["array"] for b in batch]))
            st = np.tile([[size[0], size[1]]], (len(batch), 1))
            px = to_original(xy, st, np.asarray([b["transform"] for b in batch]))
            for b, p, c in zip(batch, px, conf):
                yield Prediction(b["file"], b["size"][0], b["size"][1],
                                 [[float(v[0]), float(v[1]), float(ci)] for v, ci in zip(p, c)],
                                 b["bbox"], b["score"], b["frame"], b["time"], b["instance"], b["pixels"])
            batch.clear()

        def fail(e: KpconvError, file: str, frame=None):
            if on_error is None:
                raise e
            reason = getattr(e, "reason", "unreadable_image")
            message = getattr(e, "message", str(e))
            on_error(Failure(file, reason, message, frame))

        def items(path) -> Iterator[dict]:
            """The instances of one file, prepared (in the producer thread)."""
            from . import video

            if is_video(path):
                fps, count, _ = video.info(path)
                sources = progress(video.frames(path, frames), total=frames.expected(count, fps),
                                   desc=Path(path).name, unit="frame")
            else:
                sources = [(None, None, _read_image(path))]
            for frame, t, arr in sources:
                for box, score, instance in self._instances(path, root, frame, single_video, bbox, boxes):
                    stored, transform, wh = self.inference.prepare(arr, box)
                    yield dict(file=path, array=stored, transform=transform, size=wh, bbox=box, score=score,
                               frame=frame, time=None if t is None else round(t, 6), instance=instance,
                               pixels=arr if keep_frames else None)

        def produce():
            """Every file's items, then ("end", path); a file that fails gives ("failed", ...)."""
            for path in paths:
                last_frame = None
                try:
                    for item in items(path):
                        last_frame = item["frame"]
                        yield "item", item
                except (ImageError, VideoError) as e:
                    # a video that breaks after some frames keeps those; the failure names the frame
                    yield "failed", (e, path, getattr(e, "frame", None) if last_frame is None else
                                     getattr(e, "frame", last_frame + 1))
                yield "end", path

        images = [p for p in paths if not is_video(p)]
        bar = progress(total=len(images), unit="image", desc="images") if len(images) > 1 else None
        for kind, x in read_ahead(produce(), maxsize=4 * batch_size):
            if kind == "item":
                batch.append(x)
                if len(batch) >= batch_size:
                    yield from flush()
            elif kind == "failed":
                fail(*x)
            elif bar is not None and not is_video(x):
                bar.update(1)
        if batch:
            yield from flush()
        if bar is not None:
            bar.close()

    def _instances(self, path, root, frame, single_video, bbox, boxes):
        """(bbox in original pixels or None, score, index) of each instance of one image or frame."""
        if boxes is None:
            return [(list(bbox) if bbox is not None else None, None, 0)]
        return [(list(b), s, i) for i, (b, s) in enumerate(boxes.lookup(path, root, frame, single_video))]


def _read_image(path: str) -> np.ndarray:
    """An image file as an RGB uint8 array, EXIF orientation applied (kpconv.images' rules)."""
    from .images import SourceImage, to_rgb

    im, _ = SourceImage(path).load()
    return np.asarray(to_rgb(im), np.uint8)


def csv_cell(text: str) -> str:
    """A text cell that a spreadsheet shows as text, never runs as a formula (CSV injection): a leading
    ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a ``'`` in front (OWASP's advice)."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


# ---------------------------------------------------------------------------------------- writers
def _r(v: float) -> float:
    return round(float(v), 3)


class Writer:
    """Streams predictions to a text file in one of :data:`FORMATS`.

    - ``jsonl``: one object per instance: ``image`` (or ``video``, ``frame``, ``time``), ``width``,
      ``height``, ``keypoints: {name: [x, y, confidence]}``, ``bbox``, ``score`` and ``instance``
      with boxes.
    - ``csv``: one row per instance: ``file, frame, time, width, height``, with boxes ``instance,
      bbox_x, bbox_y, bbox_w, bbox_h, box_score``, then ``NAME_x, NAME_y, NAME_likelihood``.
    - ``dlc``: DeepLabCut's layout (header rows ``scorer``, [``individuals``,] ``bodyparts``,
      ``coords`` with ``x, y, likelihood``; one row per frame, indexed by the frame number for a
      video and by the path for images; with boxes one individual per box).
    - ``coco``: a COCO results list; ``score`` is the mean keypoint confidence (``instance_score``: the
      instance's score, as multi-instance runs give it) and each keypoint's
      visibility is 2 when its confidence is at least ``min_confidence``, else the keypoint is
      written as ``0, 0, 0``.
    """

    def __init__(self, out, fmt: str, names: Sequence[str], min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                 boxes: bool = False, individuals: int = 1, scorer: str = "kpconv", index: str = "path",
                 instance_score: bool = False):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")
        self.out, self.fmt, self.names, self.min_confidence = out, fmt, list(names), min_confidence
        self.boxes, self.individuals, self.index = boxes, max(1, individuals), index
        self.instance_score = instance_score     # coco: "score" is the instance's (multi-instance runs)
        self.count = 0
        self._group: List[Prediction] = []
        self._ids: Dict[Tuple[str, Optional[int]], int] = {}
        if fmt == "csv":
            self._csv = csv.writer(out, lineterminator="\n")
            self._csv.writerow(["file", "frame", "time", "width", "height",
                                *(["instance", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "box_score"] if boxes else []),
                                *[csv_cell(f"{n}_{c}") for n in self.names for c in ("x", "y", "likelihood")]])
        elif fmt == "dlc":
            self._csv = csv.writer(out, lineterminator="\n")
            per = len(self.names) * 3
            self._csv.writerow(["scorer", *[scorer] * (per * self.individuals)])
            if boxes:
                self._csv.writerow(["individuals", *[f"individual{i + 1}" for i in range(self.individuals)
                                                     for _ in range(per)]])
            self._csv.writerow(["bodyparts", *[csv_cell(n) for _ in range(self.individuals) for n in self.names
                                               for _ in range(3)]])
            self._csv.writerow(["coords", *["x", "y", "likelihood"] * (len(self.names) * self.individuals)])
        elif fmt == "coco":
            out.write("[")

    def write(self, p: Prediction) -> None:
        self.count += 1
        if self.fmt == "jsonl":
            where = {"image": p.image} if p.frame is None else {"video": p.image, "frame": p.frame, "time": p.time}
            obj = {**where, "width": p.width, "height": p.height,
                   "keypoints": {n: [_r(x), _r(y), _r(c)] for n, (x, y, c) in zip(self.names, p.keypoints)}}
            if p.bbox is not None:
                obj["bbox"] = [_r(v) for v in p.bbox]
            if self.boxes:
                obj.update(instance=p.instance, score=p.score)
            self.out.write(json.dumps(obj) + "\n")
        elif self.fmt == "csv":
            box = []
            if self.boxes:
                box = [p.instance, *[f"{v:.3f}" for v in p.bbox], "" if p.score is None else f"{p.score:.5g}"]
            self._csv.writerow([csv_cell(p.image), "" if p.frame is None else p.frame, "" if p.time is None else f"{p.time:.6g}",
                                p.width, p.height, *box,
                                *[s for x, y, c in p.keypoints for s in (f"{x:.3f}", f"{y:.3f}", f"{c:.4f}")]])
        elif self.fmt == "dlc":
            if self._group and (self._group[0].image, self._group[0].frame) != (p.image, p.frame):
                self._flush_dlc()
            self._group.append(p)
        else:
            key = (p.image, p.frame)
            image_id = self._ids.setdefault(key, len(self._ids) + 1)
            kps = []
            for x, y, c in p.keypoints:
                kps += [_r(x), _r(y), 2] if c >= self.min_confidence else [0, 0, 0]
            obj = {"image_id": image_id, "file_name": p.image,
                   **({"frame": p.frame, "time": p.time} if p.frame is not None else {}),
                   "category_id": 1, "keypoints": kps,
                   "score": round(p.score if self.instance_score and p.score is not None else p.confidence, 5)}
            if p.bbox is not None:
                obj["bbox"] = [_r(v) for v in p.bbox]
            if self.boxes:
                obj["box_score"] = p.score
            self.out.write(("," if self.count > 1 else "") + "\n" + json.dumps(obj))

    def _flush_dlc(self) -> None:
        first = self._group[0]
        cells = [first.frame if self.index == "frame" else csv_cell(first.image)]
        by_instance = {p.instance: p for p in self._group}
        for i in range(self.individuals):
            p = by_instance.get(i)
            if p is None:
                cells += [""] * (3 * len(self.names))
            else:
                cells += [s for x, y, c in p.keypoints for s in (f"{x:.3f}", f"{y:.3f}", f"{c:.4f}")]
        self._csv.writerow(cells)
        self._group = []

    def close(self) -> None:
        if self.fmt == "dlc" and self._group:
            self._flush_dlc()
        elif self.fmt == "coco":
            self.out.write("\n]\n")


# ------------------------------------------------------------------------------------------ command
@dataclass
class PredictResult:
    predicted: int = 0            # instances written
    images: int = 0               # images predicted
    frames: int = 0               # video frames predicted
    failures: List[Failure] = field(default_factory=list)
    drawn: List[str] = field(default_factory=list)


def run_predict(predictor: Predictor, paths: Sequence[str], output: str = "-", fmt: str = "jsonl",
                bbox=None, boxes: Optional[Boxes] = None, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                draw: Optional[str] = None, draw_names: bool = False, frames: FrameSelection = FrameSelection(),
                batch_size: int = 16, report_path: Optional[str] = None, root: Optional[Path] = None,
                on_failure: Optional[Callable[[Failure], None]] = None) -> PredictResult:
    """``kpconv predict``: predict ``paths``, stream the predictions to ``output`` (written atomically,
    ``-`` is stdout), draw them into ``draw``, and keep going past unreadable files: each one is
    passed to ``on_failure``, listed in ``report_path`` and in the result."""
    from .drawing import PredictionDrawer
    from .manifest import atomic_output

    root = root or common_root(paths)
    result = PredictResult()
    videos = [p for p in paths if is_video(p)]

    def failed(f: Failure):
        result.failures.append(f)
        if on_failure is not None:
            on_failure(f)

    drawer = None
    if draw:
        drawer = PredictionDrawer(draw, root, predictor.names, predictor.skeleton, predictor.flip_pairs,
                                  min_confidence, show_names=draw_names, every=frames.every)
    seen = set()
    group: List[Prediction] = []
    try:
        with atomic_output(output) as out:
            multi = hasattr(predictor, "max_individuals")     # a multi-instance run (kpconv.multi.MultiPredictor)
            writer = Writer(out, fmt, predictor.names, min_confidence=min_confidence, boxes=boxes is not None or multi,
                            instance_score=multi,
                            individuals=boxes.max_per_item() if boxes is not None else
                            getattr(predictor, "max_individuals", 1),
                            scorer=f"kpconv_{Path(predictor.run_dir).resolve().name}",
                            index="frame" if videos and len(paths) == 1 else "path")
            for p in predictor.predict(paths, bbox=bbox, boxes=boxes, batch_size=batch_size, frames=frames,
                                       on_error=failed, keep_frames=drawer is not None, root=root):
                writer.write(p)
                result.predicted += 1
                key = (p.image, p.frame)
                if key not in seen:
                    seen.add(key)
                    if p.frame is None:
                        result.images += 1
                    else:
                        result.frames += 1
                if drawer is not None:
                    if group and (group[0].image, group[0].frame) != key:
                        drawer.add(group)
                        group = []
                    group.append(p)
            writer.close()
        if drawer is not None:
            if group:
                drawer.add(group)
            result.drawn = drawer.close()
    except BaseException:
        if drawer is not None:
            drawer.abort()
        raise
    if report_path:
        with atomic_output(report_path) as f:
            for fl in result.failures:
                f.write(json.dumps(fl.to_json()) + "\n")
    return result
