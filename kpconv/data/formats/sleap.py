"""SLEAP labels (``.slp``, HDF5), read and written through ``sleap-io`` (``pip install 'kpconv[sleap]'``): user
instances only, tracks as instance ids, labelled frames extracted once to PNG; docs/formats/sleap.md."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from ...errors import AnnotationError, Location
from . import register
from .base import DatasetMeta, RawInstance, ReadContext, Reader, ReadResult, from_continuous, is_hdf5, wanted_keypoints

HINT = "pip install 'kpconv[sleap]' (the sleap-io package)"
PIXEL_ORIGIN = "center"  # ingest adds 0.5, write_slp takes it off (evidence: docs/formats/sleap.md)
MARKER = ".kpconv-video.json"
# PNG zlib level of the extracted frames: 1 writes a 1024x1024 grayscale frame of two-flies in 17 ms
# (275 KB), the default 6 in 58 ms (216 KB), measured in the same run; shard re-encodes them anyway.
PNG_LEVEL = 1


def import_sleap_io():
    try:
        import sleap_io
    except ImportError:
        raise AnnotationError(f"reading SLEAP .slp files needs sleap-io: {HINT}") from None
    return sleap_io


def _is_slp(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(".slp") and is_hdf5(path)


def load_labels(path: Path):
    """The sleap-io ``Labels`` of ``path`` (videos not opened); AnnotationError when it is not a
    readable SLEAP file."""
    sio = import_sleap_io()
    if not _is_slp(path):
        raise AnnotationError("not a SLEAP labels file: expected an HDF5 file named *.slp", Location(str(path)))
    try:
        return sio.load_slp(str(path), open_videos=False)
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        # h5py: OSError for a truncated or damaged file; KeyError / ValueError / TypeError / IndexError
        # for a missing or malformed dataset (/metadata, /instances, /points, videos_json ...)
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        detail = lines[-1] if lines else type(e).__name__
        raise AnnotationError(f"cannot read as a SLEAP labels file ({type(e).__name__}: {detail}); expected "
                              "the HDF5 layout SLEAP writes (/metadata, /videos_json, /frames, /instances, "
                              "/points)", Location(str(path))) from None


@register
class SleapReader(Reader):
    name = "sleap"
    pixel_origin = PIXEL_ORIGIN
    expects = "a SLEAP labels file: HDF5 content, name ending in .slp"
    extracts_frames = True

    @classmethod
    def detect(cls, sources: Sequence[Path]) -> bool:
        return bool(sources) and all(_is_slp(Path(s)) for s in sources)

    def read(self, sources: Sequence[Path], ctx: ReadContext) -> ReadResult:
        for s in sources:
            if not Path(s).is_file():
                raise AnnotationError("expected a SLEAP .slp file, got a folder", Location(str(s)))
        loaded = [(Path(s), load_labels(Path(s))) for s in sources]
        first_path, first = loaded[0]
        skeleton = _skeleton(first_path, first)
        names = list(skeleton.node_names)
        for path, labels in loaded[1:]:
            other = _skeleton(path, labels)
            if list(other.node_names) != names:
                raise AnnotationError(f"skeleton nodes {other.node_names} differ from those of {first_path} "
                                      f"({names}): expected the same nodes in the same order", Location(str(path)))
        wanted = wanted_keypoints(ctx.options.keypoints, names, "skeleton's nodes", Location(str(first_path)))
        meta = DatasetMeta(keypoints=names, skeleton=sorted({tuple(e) for e in skeleton.edge_inds if e[0] != e[1]}),
                           flip_pairs=sorted(set(skeleton.symmetry_inds)),
                           flip_pairs_given=bool(skeleton.symmetries))
        if ctx.options.frames_dir is None:
            raise AnnotationError("SLEAP labels need a folder to extract video frames into (--frames-dir)",
                                  Location(str(first_path)))
        frames_dir = Path(os.path.abspath(ctx.options.frames_dir))
        # every video's frame folder and source checked before anything is read or written
        plans = _plan_videos(loaded, frames_dir)
        tracks = sorted({lf_inst.track.name for _, labels in loaded for lf in labels.labeled_frames
                         for lf_inst in lf.user_instances if lf_inst.track is not None})
        extra = {"tracks": tracks, "frames_dir": frames_dir.as_posix(),
                 "videos": [p.describe() for p in plans.values()]}
        # read (and frames extracted) here, in one pass over each video
        instances = list(_instances(loaded, plans, ctx, names, wanted))
        return ReadResult(meta, instances, [str(p) for p, _ in loaded], extra)


def _skeleton(path: Path, labels):
    used = {id(inst.skeleton): inst.skeleton for lf in labels.labeled_frames for inst in lf.user_instances}
    if len(used) > 1:
        raise AnnotationError(f"user instances use {len(used)} skeletons; kpconv reads one skeleton per dataset",
                              Location(str(path)))
    if used:
        return next(iter(used.values()))
    if not labels.skeletons:
        raise AnnotationError("no skeleton in the file", Location(str(path)))
    return labels.skeletons[0]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class _VideoPlan:
    """Where one video's labelled frames come from (a media file, image files, or images embedded in
    the .slp) and go (``<frames dir>/<folder>/frame_NNNNNN.png``)."""

    def __init__(self, slp: Path, index: int, video, folder: str, frames_dir: Path):
        self.slp, self.index, self.video, self.folder = slp, index, video, folder
        self.out = frames_dir / folder
        self.embedded = _is_embedded(video)
        self.source = self._locate()
        self.opened = False

    @property
    def location(self) -> Location:
        return Location(str(self.slp), record=f"video {self.index}")

    def describe(self) -> dict:
        stored = self.video.filename
        return {"file": str(self.slp), "video": self.index,
                "source": stored if isinstance(stored, str) else [str(f) for f in stored],
                "folder": self.folder, **({"embedded": True} if self.embedded else {})}

    def _locate(self):
        """The video's file (or image files), resolved: as stored, relative to the .slp's folder, or
        beside the .slp by name. AnnotationError when not found."""
        stored = self.video.filename
        if self.embedded:
            return str(self.slp)
        if isinstance(stored, (list, tuple)):
            files = [self._find(str(f)) for f in stored]
            missing = [str(f) for f, found in zip(stored, files) if found is None]
            if missing:
                raise AnnotationError(f"{len(missing)} image file(s) of this image-sequence video not found, "
                                      f"first {missing[0]!r} (looked as stored, relative to the .slp's folder "
                                      "and beside it)", self.location)
            return files
        found = self._find(str(stored))
        if found is None:
            raise AnnotationError(f"video file {stored!r} not found (looked as stored, relative to the .slp's "
                                  f"folder and beside the .slp); put the video there, or fix its path in SLEAP",
                                  self.location)
        return found

    def _find(self, stored: str) -> Optional[str]:
        p = Path(stored.replace("\\", "/"))
        base = self.slp.parent
        for c in ([p] if p.is_absolute() else [base / p, p]) + [base / p.name]:
            if c.is_file():
                return os.path.abspath(c)
        return None

    def fingerprint(self) -> dict:
        files = self.source if isinstance(self.source, list) else [self.source]
        stats = [os.stat(f) for f in files[:1] + files[-1:]]
        return {"source": self.source if isinstance(self.source, str) else files[0],
                "dataset": self.video.backend_metadata.get("dataset") if self.embedded else None,
                "count": len(files), "size": [s.st_size for s in stats], "mtime_ns": [s.st_mtime_ns for s in stats]}

    def prepare_folder(self) -> None:
        """Create the folder and its marker; AnnotationError when it holds another video's frames."""
        marker = self.out / MARKER
        want = self.fingerprint()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            if marker.is_file():
                try:
                    have = json.loads(marker.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    have = None
                if have != want:
                    raise AnnotationError(
                        f"frame folder {self.out} holds frames of another video (or of this video before it "
                        f"changed), per {MARKER}; remove the folder or choose another --frames-dir", self.location)
            else:
                if any(self.out.glob("frame_*.png")):
                    raise AnnotationError(f"frame folder {self.out} already holds frame_*.png files not written "
                                          "by kpconv; remove them or choose another --frames-dir", self.location)
                tmp = marker.with_name(f"{MARKER}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(want, sort_keys=True), encoding="utf-8")
                os.replace(tmp, marker)
        except OSError as e:
            raise AnnotationError(f"cannot write extracted frames: {e.strerror or e}",
                                  Location(str(e.filename or self.out))) from None
        self.opened = True

    def frame(self, frame_idx: int) -> str:
        """The PNG of frame ``frame_idx`` (written when not there yet): its path relative to the frames dir."""
        name = f"frame_{frame_idx:06d}.png"
        target = self.out / name
        if not target.is_file():
            self._write(frame_idx, target)
        return f"{self.folder}/{name}"

    def _write(self, frame_idx: int, target: Path) -> None:
        from PIL import Image
        import numpy as np

        if self.video.backend is None:
            self._open()
        where = Location(str(self.slp), record=f"video {self.index} frame {frame_idx}")
        try:
            pixels = self.video[frame_idx]
        except (IndexError, ValueError, OSError, KeyError, EOFError, RuntimeError) as e:
            n = _frame_count(self.video)
            raise AnnotationError(f"cannot read frame {frame_idx} of {self.describe()['source']!r}"
                                  f"{f' ({n} frames)' if n else ''}: {type(e).__name__}: {e}", where) from None
        pixels = np.asarray(pixels)
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
            raise AnnotationError(f"frame {frame_idx}: expected 8-bit grayscale or RGB pixels, got {pixels.dtype} "
                                  f"{pixels.shape}", where)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            Image.fromarray(pixels).save(tmp, format="PNG", compress_level=PNG_LEVEL)
            os.replace(tmp, target)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise AnnotationError(f"cannot write extracted frame: {e.strerror or e}", Location(str(target))) from None

    def _open(self) -> None:
        try:
            if self.embedded:
                self.video.open()
            elif isinstance(self.source, list) or Path(self.source).suffix.lower() in (".h5", ".hdf5", ".slp"):
                self.video.open(filename=self.source)       # image files, an HDF5 video
            else:
                self.video.open(filename=self.source, plugin="pyav")    # a media file: PyAV, 6 ms a frame
                # of two-flies against 200 ms with sleap-io's default imageio-ffmpeg (same run)
        except (OSError, ValueError, KeyError, IndexError, RuntimeError) as e:
            raise AnnotationError(f"cannot open video {self.describe()['source']!r}: {type(e).__name__}: {e}",
                                  self.location) from None

    def close(self) -> None:
        if self.video.backend is not None:
            self.video.close()


def _is_embedded(video) -> bool:
    from sleap_io.io.video_reading import HDF5Video

    meta = video.backend_metadata or {}
    return isinstance(video.backend, HDF5Video) or (bool(meta.get("dataset")) and "filenames" not in meta
                                                   and str(video.filename).lower().endswith(".slp"))


def _frame_count(video) -> int:
    try:
        return int(video.shape[0]) if video.shape is not None else 0
    except (TypeError, ValueError, OSError, IndexError):
        return 0


def _plan_videos(loaded, frames_dir: Path) -> Dict[Tuple[int, int], _VideoPlan]:
    """Per (source index, video index) with a user instance, its plan; folder names made unique."""
    plans: Dict[Tuple[int, int], _VideoPlan] = {}
    taken: set = set()
    for si, (path, labels) in enumerate(loaded):
        used = {id(lf.video) for lf in labels.labeled_frames if lf.user_instances}
        for vi, video in enumerate(labels.videos):
            if id(video) not in used:
                continue
            folder = _unique(_folder_name(video, vi), taken)
            plans[(si, vi)] = _VideoPlan(path, vi, video, folder, frames_dir)
    return plans


def _folder_name(video, index: int) -> str:
    meta = video.backend_metadata or {}
    if _is_embedded(video):
        src = getattr(video, "source_video", None)
        stored = src.filename if src is not None and isinstance(src.filename, str) else None
    elif isinstance(video.filename, (list, tuple)) or "filenames" in meta:
        files = video.filename if isinstance(video.filename, (list, tuple)) else meta["filenames"]
        stored = str(Path(str(files[0]).replace("\\", "/")).parent) if files else None
    else:
        stored = str(video.filename)
    stem = Path(stored.replace("\\", "/")).stem if stored else ""
    if stored and isinstance(video.filename, (list, tuple)):
        stem = Path(stored.replace("\\", "/")).name
    stem = _UNSAFE.sub("_", stem).strip("._")
    return stem or f"video{index}"


def _unique(name: str, taken: set) -> str:
    out, n = name, 1
    while out.lower() in taken:
        out, n = f"{name}-{n}", n + 1
    taken.add(out.lower())
    return out


def _instances(loaded, plans: Dict[Tuple[int, int], _VideoPlan], ctx: ReadContext, names: List[str],
               wanted: Optional[set]) -> Iterator[RawInstance]:
    import numpy as np

    report = ctx.report
    frames_dir = Path(os.path.abspath(ctx.options.frames_dir))
    root = Path(ctx.images_root)
    prefix = os.path.relpath(frames_dir, root).replace(os.sep, "/")
    prefix = "" if prefix == "." else prefix + "/"
    keep = np.array([wanted is None or n in wanted for n in names])
    try:
        for si, (path, labels) in enumerate(loaded):
            index = {id(v): i for i, v in enumerate(labels.videos)}
            frames = sorted(labels.labeled_frames, key=lambda lf: (index[id(lf.video)], lf.frame_idx))
            for lf in frames:
                vi = index[id(lf.video)]
                where = f"video {vi} frame {lf.frame_idx}"
                user = [(j, inst) for j, inst in enumerate(lf.instances) if not _is_predicted(inst)]
                for j, inst in enumerate(lf.instances):
                    if _is_predicted(inst):
                        report.add("predicted", "predicted instance skipped (kpconv reads user-labelled instances)",
                                   Location(str(path), record=f"{where} instance {j}"))
                if not user:
                    continue
                plan = plans[(si, vi)]
                if not plan.opened:
                    plan.prepare_folder()
                image = prefix + plan.frame(int(lf.frame_idx))
                track_names = {inst.track.name for _, inst in user if inst.track is not None}
                n = 0
                for j, inst in user:
                    loc = Location(str(path), record=f"{where} instance {j}")
                    if inst.track is not None:
                        instance = inst.track.name
                    else:
                        while str(n) in track_names:
                            n += 1
                        instance, n = str(n), n + 1
                    pts = inst.points
                    xy = np.asarray(pts["xy"], dtype=np.float64)
                    visible = np.asarray(pts["visible"], dtype=bool)
                    finite = np.isfinite(xy).all(1)
                    hidden = finite & ~visible & keep
                    if hidden.any():
                        report.add("not_visible", "point(s) marked not visible in SLEAP taken as not labelled: "
                                   + ", ".join(n_ for n_, h in zip(names, hidden) if h), loc)
                    take = finite & visible & keep
                    points = {names[k]: (float(xy[k, 0]), float(xy[k, 1]), 2) for k in np.flatnonzero(take)}
                    yield RawInstance(image=image, keypoints=points, location=loc, instance=instance,
                                      group=plan.folder)
    finally:
        for plan in plans.values():
            plan.close()


def _is_predicted(inst) -> bool:
    from sleap_io import PredictedInstance

    return isinstance(inst, PredictedInstance)


# ------------------------------------------------------------------------------------------ writing
@dataclass
class SlpPrediction:
    """One predicted instance to write to a ``.slp`` (see :func:`write_slp`)."""

    source: str                         # the video file, or the image file
    keypoints: Sequence[Sequence[float]]   # K x (x, y, confidence): original pixels, kpconv's convention
    frame: Optional[int] = None         # the frame index in the video (0-based); None for an image
    score: Optional[float] = None       # the instance's score; None: the mean keypoint confidence
    track: Optional[str] = None         # track name (e.g. str(id) from kpconv.model.tracking); None: no track
    size: Optional[Tuple[int, int]] = None   # (width, height) of an image: images of one size share a SLEAP video


def write_slp(path: str, predictions: Iterable[SlpPrediction], keypoints: Sequence[str],
              skeleton: Sequence[Tuple[int, int]] = (), flip_pairs: Sequence[Tuple[int, int]] = (),
              min_confidence: Optional[float] = None) -> int:
    """Write ``predictions`` as a SLEAP labels file for proofreading, atomically (``-``: stdout); returns how many.
    Videos by absolute path, images as image-sequence videos (one per ``size``); each prediction a
    ``PredictedInstance`` (tracks shared by name; a NaN point or one under ``min_confidence`` missing), in SLEAP's
    pixel convention (docs/sleap.md). Raises AnnotationError (a video or image that cannot be opened),
    ValueError (a prediction without ``len(keypoints)`` keypoints), OutputError."""
    import shutil
    import tempfile

    import numpy as np

    from ..manifest import atomic_output

    sio = import_sleap_io()
    names = list(keypoints)
    sk = sio.Skeleton(nodes=list(names), edges=[(names[a], names[b]) for a, b in skeleton],
                      symmetries=[(names[a], names[b]) for a, b in flip_pairs])
    tracks: Dict[str, object] = {}
    videos: Dict[str, object] = {}                  # video file -> Video
    image_groups: Dict[Optional[Tuple[int, int]], List[str]] = {}   # size -> image files, in order
    image_slot: Dict[str, Tuple[Optional[Tuple[int, int]], int]] = {}
    frames: Dict[Tuple[str, object, int], List] = {}                  # (kind, video key, frame) -> instances
    count = 0
    for n, p in enumerate(predictions):
        kp = np.asarray(p.keypoints, dtype=np.float64)
        if kp.shape != (len(names), 3):
            raise ValueError(f"prediction {n} ({p.source}): expected {len(names)} x (x, y, confidence) keypoints, "
                             f"got shape {kp.shape}")
        xy = from_continuous(kp[:, :2], PIXEL_ORIGIN)
        conf = kp[:, 2]
        missing = ~np.isfinite(xy).all(1) | ~np.isfinite(conf)
        if min_confidence is not None:
            missing |= conf < min_confidence
        xy[missing] = np.nan
        conf = np.nan_to_num(conf, nan=0.0, posinf=0.0, neginf=0.0)
        score = float(conf.mean()) if p.score is None else float(p.score)
        track = None if p.track is None else tracks.setdefault(str(p.track), sio.Track(str(p.track)))
        inst = sio.PredictedInstance.from_numpy(xy, skeleton=sk, point_scores=conf, score=score, track=track)
        source = os.path.abspath(p.source)
        if p.frame is not None:
            if source not in videos:
                videos[source] = _open_for_writing(sio, source)
            key = ("video", source, int(p.frame))
        else:
            size = tuple(p.size) if p.size is not None else None
            if source not in image_slot:
                group = image_groups.setdefault(size, [])
                image_slot[source] = (size, len(group))
                group.append(source)
            size, idx = image_slot[source]
            key = ("images", size, idx)
        frames.setdefault(key, []).append(inst)
        count += 1
    image_videos = {size: _open_for_writing(sio, files) for size, files in image_groups.items()}
    labeled = []
    for (kind, vkey, idx), insts in frames.items():
        video = videos[vkey] if kind == "video" else image_videos[vkey]
        labeled.append(sio.LabeledFrame(video=video, frame_idx=idx, instances=insts))
    labels = sio.Labels(labeled_frames=labeled, videos=[*videos.values(), *image_videos.values()],
                        skeletons=[sk], tracks=list(tracks.values()))
    labels.provenance["software"] = "kpconv"
    try:
        with tempfile.TemporaryDirectory(prefix="kpconv-slp-") as tmp:
            written = os.path.join(tmp, "predictions.slp")
            sio.save_slp(labels, written, verbose=False)
            with atomic_output(path, "wb") as out, open(written, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    finally:
        for v in labels.videos:
            if v.backend is not None:
                v.close()
    return count


def _open_for_writing(sio, source):
    """A sleap-io Video of a video file or a list of image files, opened to record its shape."""
    files = [source] if isinstance(source, str) else list(source)
    for f in files:
        if not os.path.isfile(f):
            raise AnnotationError("no such file (predictions written to a .slp name their video or image files)",
                                  Location(f))
    shown = files[0]
    try:
        return sio.Video.from_filename(source)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError) as e:
        raise AnnotationError(f"cannot open for the .slp's video list: {type(e).__name__}: {e}",
                              Location(str(shown))) from None
