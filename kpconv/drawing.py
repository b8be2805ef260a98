"""Keypoints drawn on images, one style for ``kpconv inspect --grid`` and ``kpconv predict --draw`` (docs/predict.md):
left keypoints and limbs red, right blue (by the flip pairs), others yellow; with ``by_instance`` a colour per
instance or track."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

LEFT, RIGHT, MIDDLE = (235, 64, 52), (52, 120, 235), (245, 215, 40)
BOX = (255, 255, 255)
# one colour per instance or track (Tableau 10, the default colour cycle of matplotlib and SLEAP's GUI)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def instance_colour(p) -> Tuple[int, int, int]:
    """The colour of a prediction drawn among others: its track's (``--track``), else its index's."""
    return PALETTE[(p.track if p.track is not None and p.track >= 0 else p.instance) % len(PALETTE)]


def relative_name(path: str, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX separators): what drawn outputs and box keys are named after."""
    return Path(os.path.relpath(os.path.abspath(path), root)).as_posix()


def side_colours(num_keypoints: int, flip_pairs: Sequence[Sequence[int]]) -> List[Tuple[int, int, int]]:
    """The colour of each keypoint: the first of each flip pair is left (red), the second right (blue)."""
    colours = [MIDDLE] * num_keypoints
    for a, b in flip_pairs:
        if a < num_keypoints and b < num_keypoints:
            colours[a], colours[b] = LEFT, RIGHT
    return colours


def draw_keypoints(d, points: Sequence[Tuple[float, float, int]], names: Optional[Sequence[str]],
                   skeleton: Sequence[Sequence[int]], colours: Sequence[Tuple[int, int, int]],
                   radius: float = 3, width: int = 2) -> None:
    """Draw one instance on a ``PIL.ImageDraw``: ``points`` are ``(x, y, state)`` in the image's
    pixels, state 0 hidden, 1 an outline (occluded), 2 a filled dot; ``names`` None draws no names."""
    for a, b in skeleton:
        if a < len(points) and b < len(points) and points[a][2] and points[b][2]:
            colour = colours[a] if colours[a] == colours[b] else MIDDLE
            d.line([points[a][:2], points[b][:2]], fill=colour, width=width)
    for i, (x, y, state) in enumerate(points):
        if not state:
            continue
        colour = colours[i]
        d.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour if state == 2 else None,
                  outline=colour)
        if names is not None:
            d.text((x + radius + 1, y - radius - 2), names[i], fill=colour)


class PredictionDrawer:
    """Draws :class:`kpconv.model.predict.Prediction` groups (all instances of one image or frame).

    ``target`` is a folder, or for a single video input a video file name (``out.mp4``)."""

    def __init__(self, target: str, root: Path, names, skeleton, flip_pairs, min_confidence: float,
                 show_names: bool = False, every: int = 1, by_instance: bool = False):
        self.target, self.root = Path(target), root
        self.names, self.skeleton = list(names), [tuple(p) for p in skeleton]
        self.colours = side_colours(len(self.names), flip_pairs)
        self.min_confidence, self.show_names, self.every = min_confidence, show_names, every
        self.by_instance = by_instance
        self.video = None   # a kpconv.model.video.VideoWriter
        self.video_source: Optional[str] = None
        self.written: List[str] = []

    def _out_path(self, source: str) -> Path:
        from .model.video import is_video

        if is_video(self.target):
            return self.target
        return self.target / relative_name(source, self.root)

    def add(self, group) -> None:
        from PIL import Image, ImageDraw

        first = group[0]
        if first.frame is None:
            from .data.images import SourceImage, to_rgb

            im, _ = SourceImage(first.image).load()
            im = to_rgb(im).copy()
        else:
            im = Image.fromarray(first.pixels)
        d = ImageDraw.Draw(im)
        radius = max(2.0, max(im.size) / 150)
        for p in group:
            colours = [instance_colour(p)] * len(self.names) if self.by_instance else self.colours
            if p.bbox is not None:
                x, y, w, h = p.bbox
                d.rectangle([x, y, x + w, y + h], outline=colours[0] if self.by_instance else BOX, width=1)
            pts = [(x, y, 2 if c >= self.min_confidence else 0) for x, y, c in p.keypoints]
            draw_keypoints(d, pts, self.names if self.show_names else None, self.skeleton, colours,
                           radius=radius, width=max(1, int(radius / 2)))
        if first.frame is None:
            self._save_image(im, self._out_path(first.image))
        else:
            if self.video_source != first.image:
                self._close_video()
                from .model import video

                fps = video.info(first.image)[0] or 25.0
                self.video = video.VideoWriter(self._out_path(first.image), fps / self.every, im.size)
                self.video_source = first.image
            self.video.write(im)

    def _save_image(self, im, out: Path) -> None:
        from PIL import Image

        from .data.manifest import atomic_output

        fmt = Image.registered_extensions().get(out.suffix.lower(), "PNG")
        buf = io.BytesIO()
        im.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        with atomic_output(str(out), "wb") as f:
            f.write(buf.getvalue())
        self.written.append(str(out))

    def _close_video(self) -> None:
        if self.video is not None:
            self.video.close()
            self.written.append(str(self.video.path))
            self.video = None

    def close(self) -> List[str]:
        self._close_video()
        return self.written

    def abort(self) -> None:
        if self.video is not None:
            self.video.abort()
            self.video = None
