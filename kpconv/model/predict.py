"""``kpconv predict``: keypoints in original image pixels, with a confidence, for new images and videos.

Each image (EXIF orientation applied) or decoded video frame gets the preprocessing of the run's shards
and its model call from :class:`kpconv.model.inference.Inference`; the points are mapped back through the
same transform. Files are read and frames decoded in a producer thread (:func:`read_ahead`, a bounded
queue), so memory stays bounded whatever the video's length. A file that cannot be read is reported
(``on_error``) and skipped. The output formats: :class:`Writer` and docs/predict.md.
"""
from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..drawing import relative_name
from ..data.formats import coco as _coco_format, dlc as _dlc_format
from ..data.formats.base import from_continuous
from ..errors import AnnotationError, ImageError, Location, MissingDependency, OutputError, VideoError
from .video import VIDEO_EXTS, FrameSelection, is_video

# Formats written in a tool's own pixel convention (the readers' PIXEL_ORIGIN: DeepLabCut and COCO put
# pixel centres at integer coordinates), so that a file read back by ingest gives the same points;
# jsonl and csv keep kpconv's continuous convention, .slp converts in its writer.
_TOOL_ORIGIN = {"dlc": _dlc_format.PIXEL_ORIGIN, "dlc-h5": _dlc_format.PIXEL_ORIGIN, "coco": _coco_format.PIXEL_ORIGIN}

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FORMATS = ("jsonl", "csv", "dlc", "dlc-h5", "coco", "slp")
# formats written whole at the end, by a writer given the output's path; those that need a file (not
# stdout); the formats an output's suffix names when --format is not given
PATH_FORMATS = ("dlc-h5", "slp")
FILE_FORMATS = ("dlc-h5",)
SUFFIX_FORMATS = {".h5": "dlc-h5", ".hdf5": "dlc-h5", ".slp": "slp"}
H5_HINT = "pip install 'kpconv[h5]' (pandas and PyTables)"
DEFAULT_MIN_CONFIDENCE = 0.5   # --draw leaves out keypoints below it; no output format applies it


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
    track: Optional[int] = None          # --track: the instance's track id in its video (-1: left untracked)

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
    """Instance boxes (original pixels) per image or video frame, from COCO detection results (or a COCO
    dataset) or a CSV ``image,x,y,w,h[,score]``; how a box names its image or frame: :meth:`lookup` and
    docs/predict.md ("Many instances")."""

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
def each_file(paths, items):
    """``("item", item)`` for each of ``items(path)``'s items, then ``("end", path)``, file after file; a file
    that fails gives ``("failed", (error, path, frame))`` after the frames it gave (a video that breaks
    after some frames keeps those; the failure names the frame)."""
    for path in paths:
        last_frame = None
        try:
            for item in items(path):
                last_frame = item["frame"]
                yield "item", item
        except (ImageError, VideoError) as e:
            yield "failed", (e, path, getattr(e, "frame", None) if last_frame is None else
                             getattr(e, "frame", last_frame + 1))
        yield "end", path


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


class FilePredictor:
    """What :class:`Predictor` and :class:`kpconv.model.multi.MultiPredictor` share: :meth:`predict` reads
    the files in a producer thread (:func:`read_ahead`), batches their items by array shape and yields the
    predictions of each batch. A subclass gives a file's items (``_items``) and a batch's predictions
    (``_flush``)."""

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
        from ..progress import progress

        paths = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
        root = root or common_root(paths)
        single_video = sum(is_video(p) for p in paths) == 1
        self._start(batch_size)

        def boxes_of(path, frame) -> Optional[List[Tuple[List[float], Optional[float]]]]:
            """(box, score) of each given instance of one image or frame; None when no box is given."""
            if boxes is not None:
                return [(list(b), s) for b, s in boxes.lookup(path, root, frame, single_video)]
            return None if bbox is None else [(list(bbox), None)]

        def items(path):
            return self._items(path, frames, keep_frames, boxes_of)

        images = [p for p in paths if not is_video(p)]
        bar = progress(total=len(images), unit="image", desc="images") if len(images) > 1 else None
        # each batch runs on the model in a worker thread while the caller writes the batch before it:
        # the model does not wait for the writer (docs/benchmarks.md, "Video inference")
        pool = ThreadPoolExecutor(1, thread_name_prefix="kpconv-infer")
        pending: list = []    # the batches on the model, oldest first

        def send(batch):
            pending.append(pool.submit(lambda: list(self._flush(batch))))
            while len(pending) > 1:
                yield from pending.pop(0).result()

        def drain():
            while pending:
                yield from pending.pop(0).result()

        batch: list = []
        full = self.first_batch or batch_size
        try:
            for kind, x in read_ahead(each_file(paths, items), maxsize=4 * batch_size):
                if kind == "item":
                    if batch and batch[0]["array"].shape != x["array"].shape:   # frames at their own sizes
                        yield from send(batch)
                        batch = []
                    batch.append(x)
                    if len(batch) >= full:
                        yield from send(batch)
                        batch, full = [], batch_size
                elif kind == "failed":
                    if batch:
                        yield from send(batch)
                        batch = []
                    yield from drain()
                    e, file, frame = x
                    if on_error is None:
                        raise e
                    on_error(Failure(file, getattr(e, "reason", "unreadable_image"), getattr(e, "message", str(e)), frame))
                elif bar is not None and not is_video(x):
                    bar.update(1)
            if batch:
                yield from send(batch)
            yield from drain()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()

    first_batch: Optional[int] = None   # the first batch's size (None: batch_size)

    def _start(self, batch_size: int) -> None:
        pass


class Predictor(FilePredictor):
    """A trained run, ready to predict::

        p = kpconv.Predictor("run/")
        for pred in p.predict("clip.mp4"):          # or an image, a folder, a list of them
            print(pred.frame, pred.keypoints)       # K x [x, y, confidence] in original pixels

    A thin wrapper on :class:`kpconv.model.inference.Inference` (``inference``) that reads files, boxes
    and videos. ``jpeg=True`` encodes each prepared image as JPEG and back, as the shards store it;
    ``runtime``: ``"tf"`` or ``"onnx"`` (:data:`kpconv.model.inference.RUNTIMES`). ``decoder_resize``: whole video
    frames are resized by the video decoder (FFmpeg's swscale) instead of Pillow (False: Pillow, as
    images and ``kpconv shard`` do)."""

    decoder_resize = True

    def __init__(self, run_dir, batch_size: int = 16, jpeg: bool = False, flip_test: Optional[bool] = None,
                 runtime: str = "tf"):
        from .inference import Inference

        self.run_dir = Path(run_dir)
        self.inference = Inference.from_run(self.run_dir, batch_size=batch_size, jpeg=jpeg, flip_test=flip_test,
                                            runtime=runtime)
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

    # the first batch is one item: the first prediction comes out without waiting for a whole batch
    # (start-up; the model's graph takes any batch size, docs/benchmarks.md "Start-up")
    first_batch = 1

    def _start(self, batch_size: int) -> None:
        self.inference.batch_size = batch_size   # the model runs on the batches formed here

    def _items(self, path, frames, keep_frames, boxes_of) -> Iterator[dict]:
        """The instances of one file, prepared (in the producer thread)."""
        from . import video
        from ..progress import progress

        original = None
        if is_video(path):
            fps, count, wh = video.info(path)
            # whole frames resized in the decoder (swscale, as they are converted to RGB) unless the
            # frames themselves are kept or cut to boxes: docs/predict.md, "Videos"
            scaled = (self.inference.scaled_size(*wh) if self.decoder_resize and not keep_frames
                      and boxes_of(path, None) is None else None)
            original = wh if scaled is not None else None
            sources = progress(video.frames(path, frames, size=scaled), total=frames.expected(count, fps),
                               desc=Path(path).name, unit="frame")
        else:
            sources = [(None, None, read_image(path))]
        for frame, t, arr in sources:
            given = boxes_of(path, frame)
            for instance, (box, score) in enumerate([(None, None)] if given is None else given):
                stored, transform, wh = self.inference.prepare(arr, box, original)
                yield dict(file=path, array=stored, transform=transform, size=wh, bbox=box, score=score,
                           frame=frame, time=None if t is None else round(t, 6), instance=instance,
                           pixels=arr if keep_frames else None)

    def _flush(self, batch) -> Iterator[Prediction]:
        from .metrics import to_original

        xy, conf = self.infer(np.stack([b["array"] for b in batch]))
        h, w = batch[0]["array"].shape[:2]    # (size None, --image-size none: the frames' own, one per batch)
        size = self.options.size
        st = np.tile([[size[0], size[1]] if size else [w, h]], (len(batch), 1))
        px = to_original(xy, st, np.asarray([b["transform"] for b in batch]))
        for b, p, c in zip(batch, px, conf):
            yield Prediction(b["file"], b["size"][0], b["size"][1],
                             [[float(v[0]), float(v[1]), float(ci)] for v, ci in zip(p, c)],
                             b["bbox"], b["score"], b["frame"], b["time"], b["instance"], b["pixels"])


def read_image(path: str) -> np.ndarray:
    """An image file as an RGB uint8 array, EXIF orientation applied (kpconv.data.images' rules)."""
    from ..data.images import SourceImage, to_rgb

    im, _ = SourceImage(path).load()
    return np.asarray(to_rgb(im), np.uint8)


def csv_cell(text: str) -> str:
    """A text cell that a spreadsheet shows as text, never runs as a formula (CSV injection): a leading
    ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a ``'`` in front (OWASP's advice)."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


# ---------------------------------------------------------------------------------------- writers
def _r(v: float) -> float:
    return round(float(v), 3)


def output_format(output: str, fmt: Optional[str] = None) -> str:
    """The format of ``kpconv predict``'s output: ``fmt`` when given, else the one ``-o``'s suffix
    names (:data:`SUFFIX_FORMATS`: ``.h5`` is DeepLabCut's table), else ``jsonl``."""
    if fmt:
        return fmt
    return SUFFIX_FORMATS.get(Path(output).suffix.lower(), "jsonl") if output != "-" else "jsonl"


def require_format(fmt: str) -> None:
    """Raise :class:`MissingDependency` (exit 2) unless the packages ``--format fmt`` needs can be imported."""
    from ..data.formats.sleap import HINT as SLEAP_HINT

    needs = {"dlc-h5": (("pandas", "tables"), "--format dlc-h5 (DeepLabCut's .h5) needs pandas and PyTables", H5_HINT),
             "slp": (("sleap_io",), "--format slp (SLEAP's .slp) needs sleap-io", SLEAP_HINT)}
    modules, what, hint = needs.get(fmt, ((), "", ""))
    try:
        for m in modules:
            importlib.import_module(m)
    except ImportError as e:
        raise MissingDependency(f"{what} ({e}): {hint}") from None


def track_name(track: int) -> str:
    """A track's name in the outputs that name tracks (DeepLabCut's individuals, SLEAP's tracks):
    ``track_0``, ``track_1``, ... as SLEAP names the tracks its tracker makes."""
    return f"track_{track}"


def dlc_individual(p: Prediction) -> str:
    """The DeepLabCut individual a prediction is written under: its track's name when it has one
    (:func:`track_name`), else ``individual1``, ``individual2``, ... by its index in the image or
    frame, the names DeepLabCut gives a new multi-animal project's individuals (``create_project/new.py``)."""
    if p.track is not None and p.track >= 0:
        return track_name(p.track)
    return f"individual{p.instance + 1}"


def _individual_order(name: str):
    """Tracks by id, then individual1, individual2, ..."""
    kind, _, number = name.rpartition("_") if name.startswith("track_") else ("individual", "", name[10:])
    return (kind != "track", int(number))


class _DlcTable:
    """DeepLabCut's prediction table, one row per image or video frame: the index (the frame number
    for a video, the image's path for images) and the columns ``scorer / [individuals /] bodyparts /
    coords`` (``x, y, likelihood``), an individual absent from a row left empty (NaN): the layout of
    DeepLabCut's own writer (``create_df_from_prediction`` in
    ``deeplabcut/pose_estimation_pytorch/apis/videos.py``; the ``individuals`` level only for multi-animal
    projects; ``to_hdf(key="df_with_missing", format="table")`` and ``to_csv`` for its CSV twin)."""

    def __init__(self, names: Sequence[str], scorer: str, multi: bool, index: str):
        self.names, self.scorer, self.multi, self.index = list(names), scorer, multi, index
        self.rows: List[Tuple[Any, Dict[str, List[List[float]]]]] = []

    def row(self, group: Sequence[Prediction]) -> Tuple[Any, Dict[str, List[List[float]]]]:
        """(index, {individual: keypoints}) of one image or frame's predictions."""
        first = group[0]
        if not self.multi and len(group) > 1:
            raise ValueError(f"{first.image}: {len(group)} instances in one image or frame: DeepLabCut's "
                             "single-animal layout holds one (a Writer with multi=True)")
        return (first.frame if self.index == "frame" else first.image,
                {dlc_individual(p) if self.multi else "individual1": p.keypoints for p in group})

    def individuals(self, rows) -> List[str]:
        """Every individual of ``rows``, in order of their index."""
        return sorted({name for _, by in rows for name in by}, key=_individual_order)

    def header(self, individuals: Sequence[str]) -> List[List[str]]:
        per = len(self.names) * 3
        rows = [["scorer", *[self.scorer] * (per * len(individuals))]]
        if self.multi:
            rows.append(["individuals", *[csv_cell(i) for i in individuals for _ in range(per)]])
        rows.append(["bodyparts", *[csv_cell(n) for _ in individuals for n in self.names for _ in range(3)]])
        rows.append(["coords", *["x", "y", "likelihood"] * (len(self.names) * len(individuals))])
        return rows

    def csv_row(self, row, individuals: Sequence[str]) -> list:
        key, by = row
        unknown = sorted(set(by) - set(individuals))
        if unknown:   # a bug of the caller (individuals given too few, multi not set): never drop a prediction
            raise ValueError(f"{key}: individual(s) {', '.join(unknown)} beyond the table's {len(individuals)}")
        cells = [key if self.index == "frame" else csv_cell(key)]
        for name in individuals:
            kps = by.get(name)
            if kps is None:
                cells += [""] * (3 * len(self.names))
            else:
                cells += [s for x, y, c in kps for s in (f"{x:.3f}", f"{y:.3f}", f"{c:.4f}")]
        return cells

    def dataframe(self, rows, individuals: Sequence[str]):
        """The rows as DeepLabCut's pandas DataFrame (float64, NaN where an individual is absent)."""
        import pandas as pd

        levels = [[self.scorer], *([list(individuals)] if self.multi else []), self.names, ["x", "y", "likelihood"]]
        columns = pd.MultiIndex.from_product(levels, names=["scorer", *(["individuals"] if self.multi else []),
                                                            "bodyparts", "coords"])
        data = np.full((len(rows), len(columns)), np.nan)
        per = len(self.names) * 3
        for r, (_, by) in enumerate(rows):
            for i, name in enumerate(individuals):
                if name in by:
                    data[r, i * per:(i + 1) * per] = np.asarray(by[name], np.float64).reshape(-1)
        index = [key for key, _ in rows]
        return pd.DataFrame(data, columns=columns, index=pd.Index(index, dtype="int64" if self.index == "frame"
                                                                 else object))


class Writer:
    """Streams predictions to ``out`` in one of :data:`FORMATS` (the layouts: docs/predict.md's table; for
    ``dlc-h5`` and ``slp``, :data:`PATH_FORMATS`, ``out`` is the file's path and :meth:`close` writes it whole).
    Every format writes the x, y and confidence of every keypoint; no threshold drops or zeroes any.

    ``multi``: several instances per image or frame: an ``instance`` field or column, and DeepLabCut's
    multi-animal layout (an ``individuals`` level); default with ``boxes``.
    ``individuals``: how many individuals each DeepLabCut row has, when known before the first
    prediction (the CSV is then streamed); ``None`` keeps the rows until :meth:`close`.
    ``tracks``: the predictions carry track ids (``--track``), written in every format.
    ``instance_score``: the predictions' own ``score`` is the instance's (a run that finds the instances).
    """

    def __init__(self, out, fmt: str, names: Sequence[str], boxes: bool = False,
                 individuals: Optional[int] = 1, scorer: str = "kpconv", index: str = "path",
                 multi: Optional[bool] = None, tracks: bool = False, skeleton: Sequence[Sequence[int]] = (),
                 flip_pairs: Sequence[Sequence[int]] = (), instance_score: bool = False):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")
        require_format(fmt)
        self.out, self.fmt, self.names = out, fmt, list(names)
        self.boxes, self.index = boxes, index
        self.multi = boxes if multi is None else multi
        self.tracks, self.instance_score = tracks, instance_score
        # a run that finds the instances itself scores each one: jsonl's "score", csv's "score" column
        self._instance_scores = instance_score and not boxes
        self.skeleton, self.flip_pairs = [tuple(e) for e in skeleton], [tuple(e) for e in flip_pairs]
        self.count = 0
        self._group: List[Prediction] = []
        self._ids: Dict[Tuple[str, Optional[int]], int] = {}
        self._dlc = _DlcTable(self.names, scorer, self.multi, index)
        # the DeepLabCut CSV streams its rows when the individuals are known from the start
        self._individuals = None
        if fmt == "dlc" and individuals is not None and not tracks:
            self._individuals = [f"individual{i + 1}" for i in range(max(1, individuals))]
        if fmt in ("csv", "dlc"):
            self._csv = csv.writer(out, lineterminator="\n")
        if fmt == "csv":
            self._csv.writerow(["file", "frame", "time", "width", "height",
                                *(["instance"] if self.multi else []), *(["track"] if tracks else []),
                                *(["score"] if self._instance_scores else []),
                                *(["bbox_x", "bbox_y", "bbox_w", "bbox_h", "box_score"] if boxes else []),
                                *[csv_cell(f"{n}_{c}") for n in self.names for c in ("x", "y", "likelihood")]])
        elif fmt == "dlc" and self._individuals is not None:
            self._csv.writerows(self._dlc.header(self._individuals))
        elif fmt == "coco":
            out.write("[")

    def write(self, p: Prediction) -> None:
        self.count += 1
        if self.fmt in _TOOL_ORIGIN:   # that tool's own pixel convention (kpconv's is continuous)
            shift = from_continuous(0.0, _TOOL_ORIGIN[self.fmt])
            p = replace(p, keypoints=[[x + shift, y + shift, c] for x, y, c in p.keypoints])
        if self.fmt == "jsonl":
            where = {"image": p.image} if p.frame is None else {"video": p.image, "frame": p.frame, "time": p.time}
            obj = {**where, "width": p.width, "height": p.height,
                   "keypoints": {n: [_r(x), _r(y), _r(c)] for n, (x, y, c) in zip(self.names, p.keypoints)}}
            if p.bbox is not None:
                obj["bbox"] = [_r(v) for v in p.bbox]
            if self.multi:
                obj["instance"] = p.instance
            if self.tracks:
                obj["track"] = p.track
            if self.boxes or self._instance_scores:
                obj["score"] = p.score
            self.out.write(json.dumps(obj) + "\n")
        elif self.fmt == "csv":
            box = [p.instance] if self.multi else []
            if self.tracks:
                box.append("" if p.track is None else p.track)
            if self._instance_scores:
                box.append("" if p.score is None else f"{p.score:.5g}")
            if self.boxes:
                box += [*[f"{v:.3f}" for v in p.bbox], "" if p.score is None else f"{p.score:.5g}"]
            self._csv.writerow([csv_cell(p.image), "" if p.frame is None else p.frame, "" if p.time is None else f"{p.time:.6g}",
                                p.width, p.height, *box,
                                *[s for x, y, c in p.keypoints for s in (f"{x:.3f}", f"{y:.3f}", f"{c:.4f}")]])
        elif self.fmt in ("dlc", "dlc-h5"):
            if self._group and (self._group[0].image, self._group[0].frame) != (p.image, p.frame):
                self._flush_dlc()
            self._group.append(p)
        elif self.fmt == "slp":
            from ..data.formats.sleap import SlpPrediction

            self._group.append(SlpPrediction(p.image, p.keypoints, p.frame, p.confidence,
                                             track_name(p.track) if p.track is not None and p.track >= 0 else None,
                                             (p.width, p.height)))
        else:
            key = (p.image, p.frame)
            image_id = self._ids.setdefault(key, len(self._ids) + 1)
            # x, y of every keypoint and its confidence as the third value: a results file is scored
            # by OKS on x and y alone (pycocotools' COCOeval.computeOks reads d[0::3], d[1::3]), so a
            # keypoint written 0, 0 would count as a guess at the image's corner
            kps = [v for x, y, c in p.keypoints for v in (_r(x), _r(y), round(float(c), 5))]
            obj = {"image_id": image_id, "file_name": p.image,
                   **({"frame": p.frame, "time": p.time} if p.frame is not None else {}),
                   "category_id": 1, "keypoints": kps,
                   "score": round(p.score if self.instance_score and p.score is not None else p.confidence, 5)}
            if p.bbox is not None:
                obj["bbox"] = [_r(v) for v in p.bbox]
            if self.boxes:
                obj["box_score"] = p.score
            if self.tracks:
                obj["track_id"] = p.track
            self.out.write(("," if self.count > 1 else "") + "\n" + json.dumps(obj))

    def _flush_dlc(self) -> None:
        row = self._dlc.row(self._group)
        self._group = []
        if self.fmt == "dlc" and self._individuals is not None:
            self._csv.writerow(self._dlc.csv_row(row, self._individuals))
        else:
            self._dlc.rows.append(row)

    def close(self) -> None:
        if self.fmt in ("dlc", "dlc-h5") and self._group:
            self._flush_dlc()
        if self.fmt == "dlc" and self._individuals is None:
            individuals = self._dlc.individuals(self._dlc.rows) or ["individual1"]
            self._csv.writerows(self._dlc.header(individuals))
            self._csv.writerows(self._dlc.csv_row(r, individuals) for r in self._dlc.rows)
        elif self.fmt == "dlc-h5":
            individuals = self._dlc.individuals(self._dlc.rows) or ["individual1"]
            write_h5(self._dlc.dataframe(self._dlc.rows, individuals), self.out)
        elif self.fmt == "slp":
            from ..data.formats.sleap import write_slp

            # no min_confidence: every point keeps its x, y and its score
            write_slp(self.out, self._group, self.names, self.skeleton, self.flip_pairs)
        elif self.fmt == "coco":
            self.out.write("\n]\n")


def write_h5(df, path: str) -> None:
    """``df`` to ``path`` as DeepLabCut writes its tables (key ``df_with_missing``, PyTables' table
    format), into a temporary file beside it renamed into place: never half a file."""
    import tables

    target = Path(path)
    if target.is_dir():
        raise OutputError("is a directory: expected a file path", Location(str(path)))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        df.to_hdf(tmp, key="df_with_missing", format="table", mode="w")
        os.replace(tmp, target)
    except (OSError, tables.HDF5ExtError) as e:
        raise OutputError(f"cannot write: {getattr(e, 'strerror', None) or e}", Location(str(path))) from None
    finally:
        if tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------------------------ command
@dataclass
class PredictResult:
    predicted: int = 0            # instances written
    images: int = 0               # images predicted
    frames: int = 0               # video frames predicted
    failures: List[Failure] = field(default_factory=list)
    drawn: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrackOptions:
    """``--track``: link each video's instances from frame to frame (:class:`kpconv.model.tracking.Tracker`).
    ``max_distance`` in original pixels (None: a tenth of the frame's longer side); ``memory``: frames
    a vanished instance keeps its track; ``max_tracks``: at most this many tracks per video."""

    max_distance: Optional[float] = None
    memory: int = 5
    max_tracks: Optional[int] = None


class _FrameTracker:
    """Track ids for the predictions of each video frame, one :class:`kpconv.model.tracking.Tracker` per video;
    a selected frame that gave no instance (``every`` apart) still ages the tracks."""

    def __init__(self, options: TrackOptions, every: int):
        self.options, self.every = options, every
        self.video: Optional[str] = None
        self.tracker = None
        self.last: Optional[int] = None

    def assign(self, group: Sequence[Prediction]) -> None:
        from .tracking import Tracker

        first = group[0]
        if first.frame is None:       # images are not a sequence: no track
            return
        if first.image != self.video:
            o = self.options
            distance = o.max_distance or max(first.width, first.height) / 10
            self.tracker = Tracker(max_distance=distance, memory=o.memory, max_tracks=o.max_tracks)
            self.video, self.last = first.image, None
        if self.last is not None:
            for _ in range(max(0, (first.frame - self.last) // self.every - 1)):
                self.tracker.step([])
        self.last = first.frame
        ids = self.tracker.step([np.asarray(p.keypoints, np.float64) for p in group])
        for p, track in zip(group, ids):
            p.track = int(track)


def run_predict(predictor: Predictor, paths: Sequence[str], output: str = "-", fmt: str = "jsonl",
                bbox=None, boxes: Optional[Boxes] = None, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                draw: Optional[str] = None, draw_names: bool = False, frames: FrameSelection = FrameSelection(),
                batch_size: int = 16, report_path: Optional[str] = None, root: Optional[Path] = None,
                on_failure: Optional[Callable[[Failure], None]] = None,
                track: Optional[TrackOptions] = None) -> PredictResult:
    """``kpconv predict``: predict ``paths``, stream the predictions to ``output`` (written atomically,
    ``-`` is stdout), draw them into ``draw``, and keep going past unreadable files: each one is
    passed to ``on_failure``, listed in ``report_path`` and in the result. ``track`` gives each video
    instance a track id (written in every format, and the drawing's colours)."""
    from ..drawing import PredictionDrawer
    from ..data.manifest import atomic_output

    root = root or common_root(paths)
    result = PredictResult()
    videos = [p for p in paths if is_video(p)]
    multi_run = hasattr(predictor, "max_individuals")     # a run that finds every instance by itself
    multi = boxes is not None or track is not None or multi_run
    tracker = _FrameTracker(track, frames.every) if track is not None else None

    def failed(f: Failure):
        result.failures.append(f)
        if on_failure is not None:
            on_failure(f)

    drawer = None
    if draw:
        drawer = PredictionDrawer(draw, root, predictor.names, predictor.skeleton, predictor.flip_pairs,
                                  min_confidence, show_names=draw_names, every=frames.every, by_instance=multi)

    def emit(group: List[Prediction], writer: "Writer") -> None:
        """One image's or frame's predictions: tracked, written, counted, drawn."""
        if tracker is not None:
            tracker.assign(group)
        for p in group:
            writer.write(p)
        result.predicted += len(group)
        if group[0].frame is None:
            result.images += 1
        else:
            result.frames += 1
        if drawer is not None:
            drawer.add(group)

    try:
        if fmt in FILE_FORMATS and output == "-":
            raise OutputError(f"--format {fmt} is written to a file, not to stdout: give -o FILE", Location("-"))
        # the text formats stream into atomic_output; the others write their file (atomically) at close
        with (nullcontext(output) if fmt in PATH_FORMATS else atomic_output(output)) as out:
            writer = Writer(out, fmt, predictor.names, boxes=boxes is not None, multi=multi, tracks=track is not None,
                            individuals=boxes.max_per_item() if boxes is not None else
                            getattr(predictor, "max_individuals", 1), instance_score=multi_run,
                            scorer=f"kpconv_{Path(predictor.run_dir).resolve().name}",
                            index="frame" if videos and len(paths) == 1 else "path",
                            skeleton=predictor.skeleton, flip_pairs=predictor.flip_pairs)
            predictions = predictor.predict(paths, bbox=bbox, boxes=boxes, batch_size=batch_size, frames=frames,
                                            on_error=failed, keep_frames=drawer is not None, root=root)
            for _, group in groupby(predictions, key=lambda p: (p.image, p.frame)):   # one image or frame
                emit(list(group), writer)
            writer.close()
        if drawer is not None:
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
