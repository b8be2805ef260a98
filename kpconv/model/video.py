"""Video files, read and written with PyAV (FFmpeg's libraries, shipped in its wheel): which files are
videos, their frame rate and size, the selected frames decoded to RGB arrays, and a video writer.

Frame indices count decoded frames from the first (0-based, in decoding order); times count seconds
from the first frame. A selection that starts later seeks (to the keyframe before the start, then
decodes forward to the exact frame) instead of decoding every earlier frame.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple, Union

from ..errors import Location, VideoError

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


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

    def start_time(self, fps: Optional[float]) -> Optional[float]:
        """The start in seconds (None: from the first frame, or a frame index without a frame rate)."""
        if not self.start:
            return None
        if isinstance(self.start, int):
            return self.start / fps if fps else None
        return float(self.start)

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


def open_video(path: str):
    """``(container, its first video stream, frames per second or None)``; VideoError when unreadable."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError("unreadable_video", f"cannot open video: {_av_message(e)}", Location(str(path))) from None
    if not container.streams.video:
        container.close()
        raise VideoError("unreadable_video", "no video stream in the file", Location(str(path)))
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return container, stream, float(rate) if rate else None


def info(path: str) -> Tuple[Optional[float], int, Tuple[int, int]]:
    """(frames per second or None, frame count or 0 when the header does not say, (width, height))."""
    container, s, fps = open_video(path)
    with container:
        return fps, int(s.frames or 0), (s.codec_context.width, s.codec_context.height)


# FFmpeg's swscale filter when frames are scaled as they are converted to RGB (``frames(size=...)``):
# bilinear, its support widened when shrinking (antialiased, as Pillow's BILINEAR resize)
SCALE_INTERPOLATION = "BILINEAR"


def frames(path: str, selection: FrameSelection = FrameSelection(),
           size: Optional[Tuple[int, int]] = None) -> Iterator[Tuple[int, float, Any]]:
    """Decode the selected frames of a video: ``(index, time in seconds, RGB uint8 array (H, W, 3))``,
    lazily. ``size`` (w, h): each frame scaled to it by FFmpeg's swscale in the same pass as the
    conversion to RGB (:data:`SCALE_INTERPOLATION`): on 640x480 frames halved, 600 frames/s against 164
    for full-size RGB then a Pillow resize (benchmarks/bench_predict.py). Raises VideoError (located,
    ``.frame`` the index of the frame that failed) when the file cannot be opened or a frame cannot be
    decoded."""
    try:
        yield from _decode(path, selection, seek=True, size=size)
    except _SeekMissed:   # raised before any frame was yielded
        yield from _decode(path, selection, seek=False, size=size)


class _SeekMissed(Exception):
    """The seek landed where the timestamps do not give the frame index, or after the start."""


def _decode(path: str, selection: FrameSelection, seek: bool, size: Optional[Tuple[int, int]] = None):
    import av

    scale = {} if size is None else {"width": int(size[0]), "height": int(size[1]),
                                     "interpolation": SCALE_INTERPOLATION}

    container, stream, fps = open_video(path)
    with container:
        stream.thread_type = "AUTO"
        tb = stream.time_base
        origin = stream.start_time if stream.start_time is not None else 0
        index, kept, t0 = -1, -1, None
        start_s = selection.start_time(fps) if seek and fps and tb else None
        if start_s is not None:
            # to the keyframe at or before the start; the index of the first frame decoded then comes
            # from its timestamp (exact on a constant frame rate; checked by _index_of)
            try:
                container.seek(origin + int(start_s / tb), stream=stream, backward=True, any_frame=False)
            except (av.error.FFmpegError, OSError):
                raise _SeekMissed() from None
        decoded = container.decode(stream)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as e:
                err = VideoError("unreadable_video", f"cannot decode: {_av_message(e)}", Location(str(path)))
                err.frame = index + 1
                raise err from None
            if start_s is not None and index < 0:
                first = _index_of(frame, origin, tb, fps)
                if first is None or first / fps > start_s + 1e-9:
                    raise _SeekMissed()
                index, t0 = first - 1, float(origin * tb)
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
            yield index, t, frame.to_ndarray(format="rgb24", **scale)


def _index_of(frame, origin, tb, fps) -> Optional[int]:
    """The frame's index from its timestamp, when the timestamp is on the constant-rate grid."""
    if frame.pts is None:
        return None
    exact = (frame.pts - origin) * tb * Fraction(fps).limit_denominator(1001)
    index = round(exact)
    return index if abs(float(exact) - index) < 0.01 and index >= 0 else None


def _av_message(e) -> str:
    return getattr(e, "strerror", None) or str(e)


class VideoWriter:
    """A video written frame by frame with PyAV into a temporary file, renamed into place by close()
    (H.264, VP9 for ``.webm``, MPEG-4 part 2 for the older containers)."""

    def __init__(self, path, fps: float, size: Tuple[int, int]):
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        codec = "libvpx-vp9" if self.path.suffix.lower() == ".webm" else \
            "mpeg4" if self.path.suffix.lower() in (".avi", ".wmv", ".flv", ".mpg", ".mpeg") else "libx264"
        self.container = av.open(str(self.tmp), "w")
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        # yuv420p needs even sizes: odd ones get one row/column of padding
        self.size = (size[0] + size[0] % 2, size[1] + size[1] % 2)
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"

    def write(self, im) -> None:
        """``im``: a PIL image or an RGB uint8 array."""
        import av
        import numpy as np

        arr = np.asarray(im, np.uint8)
        if (arr.shape[1], arr.shape[0]) != self.size:
            canvas = np.zeros((self.size[1], self.size[0], 3), np.uint8)
            canvas[:arr.shape[0], :arr.shape[1]] = arr
            arr = canvas
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()
