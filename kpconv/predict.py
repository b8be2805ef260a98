"""``kpconv predict``: keypoints in original image pixels for new images and videos.

Each image, or each decoded video frame, goes through the same preprocessing as the shards the run
was trained on (recorded in ``config.json`` at train time from ``dataset_info.json``): the crop
(``none``, or ``bbox`` with the shard's padding around a box; without a box a ``bbox`` run uses the
whole image), the resize (``stretch`` or ``pad``) and EXIF orientation, all by ``kpconv.images``
(the code ``kpconv shard`` uses). The model's output is mapped back through the same transform.

Every model call goes through :meth:`Predictor.infer`, which returns the normalized coordinates and a
confidence in ``[0, 1]`` per keypoint; everything downstream (the writers, the drawing) carries it.

Videos are decoded with PyAV (FFmpeg's libraries, shipped in its wheel) frame by frame and predicted
in batches, so memory stays bounded whatever the video's length. A file that cannot be read is
reported (``on_error``) and skipped; the others are predicted.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import AnnotationError, ImageError, KpconvError, Location, VideoError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
FORMATS = ("jsonl", "csv", "dlc", "coco")
DEFAULT_MIN_CONFIDENCE = 0.5


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


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
    pixels: Any = field(default=None, repr=False, compare=False)  # the decoded frame (keep_frames=True)

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


def relative_name(path: str, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX separators): what drawn outputs and box keys are named after."""
    return Path(os.path.relpath(os.path.abspath(path), root)).as_posix()


@dataclass(frozen=True)
class FrameSelection:
    """Which video frames to predict: every ``every``-th from ``start`` (inclusive) to ``end``
    (exclusive). ``start`` and ``end`` are frame indices (int) or times in seconds (float)."""

    every: int = 1
    start: Union[int, float, None] = None
    end: Union[int, float, None] = None

    def _pos(self, bound, index: int, time: float):
        return index if isinstance(bound, int) else time

    def before_start(self, index: int, time: float) -> bool:
        return self.start is not None and self._pos(self.start, index, time) < self.start

    def past_end(self, index: int, time: float) -> bool:
        return self.end is not None and self._pos(self.end, index, time) >= self.end

    def expected(self, count: int, fps: Optional[float]) -> Optional[int]:
        """About how many frames of a video of ``count`` frames are selected (for a progress bar)."""
        if not count:
            return None

        def frame(bound, default):
            if bound is None:
                return default
            return bound if isinstance(bound, int) else int(bound * (fps or 0)) if fps else default
        first, stop = frame(self.start, 0), min(count, frame(self.end, count))
        return max(0, -(-(stop - first) // self.every))


def parse_frame_bound(text: str) -> Union[int, float]:
    """``"120"`` -> frame 120; ``"4.5s"`` -> 4.5 seconds. Raises ValueError."""
    t = text.strip()
    if t.endswith("s"):
        v = float(t[:-1])
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"expected a time >= 0 in seconds, got '{text}'")
        return v
    try:
        v = int(t)
    except ValueError:
        raise ValueError(f"expected a frame index (e.g. 120) or a time in seconds (e.g. 4.5s), got '{text}'") from None
    if v < 0:
        raise ValueError(f"expected a frame index >= 0, got '{text}'")
    return v


def video_frames(path: str, selection: FrameSelection = FrameSelection()) -> Iterator[Tuple[int, float, Any]]:
    """Decode the selected frames of a video: ``(index, time in seconds, PIL RGB image)``, lazily.

    ``time`` counts from the first frame. Raises VideoError (located) when the file cannot be opened or
    a frame cannot be decoded."""
    import av

    container, stream, fps = _open_video(path)
    with container:
        stream.thread_type = "AUTO"
        index, t0, kept = -1, None, -1
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as e:
                err = VideoError("unreadable_video", f"cannot decode: {_av_message(e)}", Location(path))
                err.frame = index + 1
                raise err from None
            index += 1
            t = frame.time
            if t is None:
                t = index / fps if fps else float(index)
            if t0 is None:
                t0 = t
            t = float(t - t0)
            if selection.past_end(index, t):
                break
            if selection.before_start(index, t):
                continue
            kept += 1
            if kept % selection.every:
                continue
            yield index, t, frame.to_image()


def video_info(path: str) -> Tuple[Optional[float], int, Tuple[int, int]]:
    """(frames per second or None, frame count or 0 when the header does not say, (width, height))."""
    container, s, fps = _open_video(path)
    with container:
        return fps, int(s.frames or 0), (s.codec_context.width, s.codec_context.height)


def _open_video(path: str):
    """``(container, its first video stream, frames per second or None)``; VideoError when unreadable."""
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError("unreadable_video", f"cannot open video: {_av_message(e)}", Location(path)) from None
    if not container.streams.video:
        container.close()
        raise VideoError("unreadable_video", "no video stream in the file", Location(path))
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return container, stream, float(rate) if rate else None


def _av_message(e) -> str:
    return getattr(e, "strerror", None) or str(e)


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
def _image_options(config: dict):
    from .images import ImageOptions

    pre = config["dataset"].get("preprocessing") or {}
    size = pre.get("size") or config["dataset"]["image_size"]
    return ImageOptions(size=(int(size[0]), int(size[1])), resize=pre.get("resize") or "stretch",
                        crop=pre.get("crop") or "none", crop_pad=float(pre.get("crop_pad") or 0.0))


def prepare(source, opts, bbox_px: Optional[Sequence[float]] = None):
    """(stored image array (H, W, 3) uint8, stored_to_original transform, original (w, h)) for an image
    path or an opened :class:`kpconv.images.SourceImage`."""
    from .images import SourceImage, decode, render, to_rgb

    src = source if isinstance(source, SourceImage) else SourceImage(source)
    w, h = src.size
    if bbox_px is not None:
        bx, by, bw, bh = bbox_px
        bbox = [bx / w, by / h, bw / w, bh / h]
    else:
        bbox = [0.0, 0.0, 1.0, 1.0]
    stored = render(src, bbox, opts)
    arr = np.asarray(to_rgb(decode(stored.data)), np.uint8)
    if arr.shape[:2] != (opts.size[1], opts.size[0]):
        raise ImageError(f"stored image is {arr.shape[1]}x{arr.shape[0]}, expected {opts.size[0]}x{opts.size[1]}",
                         Location(src.path))
    return arr, stored.layout.transform, (w, h)


def _frame_source(name: str, im):
    """A decoded video frame as a :class:`SourceImage` (BMP bytes: lossless and cheap to write), so
    frames take exactly the images' path through ``kpconv.images.render``."""
    from .images import SourceImage

    buf = io.BytesIO()
    im.save(buf, "BMP")
    return SourceImage(name, data=buf.getvalue())


class Predictor:
    """A trained run, ready to predict::

        p = kpconv.Predictor("run/")
        for pred in p.predict("clip.mp4"):          # or an image, a folder, a list of them
            print(pred.frame, pred.keypoints)       # K x [x, y, confidence] in original pixels
    """

    def __init__(self, run_dir):
        from .train import open_run

        self.run_dir = Path(run_dir)
        # the model in its inference form: (B, K, 3) x, y normalized and a confidence (the heatmap
        # head's, calibrated; 1.0 for the regression heads)
        self.config, _, self.model = open_run(self.run_dir)
        self.names = list(self.config["dataset"]["keypoints"])
        self.skeleton = [tuple(p) for p in self.config["dataset"].get("skeleton") or []]
        self.flip_pairs = [tuple(p) for p in self.config["dataset"].get("flip_pairs") or []]
        self.options = _image_options(self.config)

    @property
    def crops_to_box(self) -> bool:
        return self.options.crop == "bbox"

    def infer(self, batch) -> Tuple[np.ndarray, np.ndarray]:
        """The one place the model runs: ``batch`` float32 (B, H, W, 3) pixels in [0, 255] as the model
        takes them -> ``xy`` (B, K, 2) normalized to the stored image, ``confidence`` (B, K) in [0, 1]."""
        from .model import infer

        return infer(self.model, batch)

    def predict(self, inputs, bbox: Optional[Sequence[float]] = None, boxes: Optional[Boxes] = None,
                batch_size: int = 16, frames: FrameSelection = FrameSelection(),
                on_error: Optional[Callable[[Failure], None]] = None, keep_frames: bool = False,
                root: Optional[Path] = None) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per instance: per image (or per box of ``boxes``) and per
        selected video frame, in input order.

        ``inputs`` is a path or a list of paths: images, videos, folders of them. ``bbox`` is one box
        (original pixels) for every input; ``boxes`` gives boxes per image or frame. A file that cannot
        be read raises its located error, or, with ``on_error``, is passed to it as a
        :class:`Failure` and skipped. ``keep_frames`` puts each decoded video frame in ``pixels``."""
        from .metrics import to_original
        from .progress import progress

        paths = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
        root = root or common_root(paths)
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
            """The instances of one file, prepared."""
            if is_video(path):
                fps, count, _ = video_info(path)
                decoded = progress(video_frames(path, frames), total=frames.expected(count, fps),
                                   desc=Path(path).name, unit="frame")
                sources = ((index, round(t, 6), _frame_source(f"{path}#{index}", im), im) for index, t, im in decoded)
            else:
                from .images import SourceImage

                sources = [(None, None, SourceImage(path), None)]
            for frame, t, src, im in sources:
                for box, score, instance in self._instances(path, root, frame, single_video, bbox, boxes):
                    arr, transform, wh = prepare(src, self.options, box)
                    yield dict(file=path, array=arr, transform=transform, size=wh, bbox=box, score=score,
                               frame=frame, time=t, instance=instance, pixels=im if keep_frames else None)

        images = [p for p in paths if not is_video(p)]
        bar = progress(total=len(images), unit="image", desc="images") if len(images) > 1 else None
        for path in paths:
            last_frame = None
            try:
                for item in items(path):
                    last_frame = item["frame"]
                    batch.append(item)
                    if len(batch) >= batch_size:
                        yield from flush()
            except (ImageError, VideoError) as e:
                # a video that breaks after some frames keeps those; the failure names the frame
                fail(e, path, getattr(e, "frame", None) if last_frame is None else
                     getattr(e, "frame", last_frame + 1))
            if bar is not None and not is_video(path):
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
