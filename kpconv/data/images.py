"""Images for ``kpconv shard``: load, convert to 8-bit RGB, crop, resize, encode, and move the keypoints
exactly with the pixels (docs/shard.md, *Images*: mode conversion, passthrough, draft decoding).

Geometry, in the continuous pixel convention (pixel ``i`` covers ``[i, i + 1)``), after EXIF orientation
(the manifest's coordinates are those of the displayed image): ``crop="bbox"`` grows the box by ``crop_pad``
times its size, rounds it out to whole pixels and clips it: ``[x0, x1) x [y0, y1)``; ``size=None`` keeps the
crop's size, ``resize="stretch"`` scales it to ``size``, ``resize="pad"`` scales it with its aspect ratio to
``(rw, rh)`` placed at ``(ox, oy)`` on a ``size`` canvas of ``BACKGROUND``. A stored pixel ``(xs, ys)`` maps
back as ``x = a*xs + c, y = e*ys + f`` with ``a = cw/rw, c = x0 - ox*a, e = ch/rh, f = y0 - oy*e``
(:attr:`Layout.transform`); keypoints outside the placed content become ``v = 0, x = y = 0``.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..errors import Location
from .imageinfo import UNIDENTIFIED, BadImage, check_pixels, displayed_size, ends_complete, file_problems, \
    max_pixels as pillow_limit, open_image, pillow_orientation, pillow_problems, probe

BACKGROUND = (128, 128, 128)  # fills padding and replaces transparency


@dataclass(frozen=True)
class ImageOptions:
    size: Optional[Tuple[int, int]] = None   # (width, height) of the stored image; None: keep
    resize: str = "stretch"                   # "stretch" or "pad"
    crop: str = "none"                        # "none" or "bbox"
    crop_pad: float = 0.2
    quality: int = 95                         # JPEG quality of re-encoded images
    max_pixels: Optional[int] = None          # None: Pillow's Image.MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class Layout:
    """Where the crop ``[x0, x1) x [y0, y1)`` of the original lands in the stored image."""

    crop: Tuple[int, int, int, int]      # x0, y0, x1, y1 in original pixels
    out: Tuple[int, int]                 # stored (width, height)
    placed: Tuple[int, int, int, int]    # ox, oy, rw, rh: the content's position and size in the stored image

    @property
    def transform(self) -> List[float]:
        x0, y0, x1, y1 = self.crop
        ox, oy, rw, rh = self.placed
        a, e = (x1 - x0) / rw, (y1 - y0) / rh
        return [a, 0.0, x0 - ox * a, 0.0, e, y0 - oy * e]

    @property
    def identity_pixels(self) -> bool:
        x0, y0, x1, y1 = self.crop
        return self.placed == (0, 0, x1 - x0, y1 - y0) and self.out == (x1 - x0, y1 - y0)


def layout(width: int, height: int, bbox_px: Sequence[float], opts: ImageOptions) -> Layout:
    """The crop and placement for an image of ``width`` x ``height`` (pure arithmetic)."""
    if opts.crop == "bbox":
        bx, by, bw, bh = bbox_px
        dx, dy = opts.crop_pad * bw / 2, opts.crop_pad * bh / 2
        x0, x1 = _span(bx - dx, bx + bw + dx, width)
        y0, y1 = _span(by - dy, by + bh + dy, height)
    else:
        x0, y0, x1, y1 = 0, 0, width, height
    cw, ch = x1 - x0, y1 - y0
    if opts.size is None:
        return Layout((x0, y0, x1, y1), (cw, ch), (0, 0, cw, ch))
    tw, th = opts.size
    if opts.resize == "stretch":
        return Layout((x0, y0, x1, y1), (tw, th), (0, 0, tw, th))
    s = min(tw / cw, th / ch)
    rw, rh = min(tw, max(1, round(cw * s))), min(th, max(1, round(ch * s)))
    return Layout((x0, y0, x1, y1), (tw, th), ((tw - rw) // 2, (th - rh) // 2, rw, rh))


def _span(lo: float, hi: float, limit: int) -> Tuple[int, int]:
    a = min(max(0, math.floor(lo + 1e-9)), limit - 1)
    b = max(min(limit, math.ceil(hi - 1e-9)), a + 1)
    return a, b


def map_keypoints(keypoints: Sequence[Sequence[float]], width: int, height: int,
                  lay: Layout) -> List[Tuple[float, float, int]]:
    """Manifest keypoints (normalized to the original image) -> normalized to the stored image.

    Keypoints outside the placed content become ``(0, 0, 0)``."""
    a, _, c, _, e, f = lay.transform
    ow, oh = lay.out
    ox, oy, rw, rh = lay.placed
    out = []
    for x, y, v in keypoints:
        if v == 0:
            out.append((0.0, 0.0, 0))
            continue
        xs, ys = (x * width - c) / a, (y * height - f) / e
        if ox <= xs <= ox + rw and oy <= ys <= oy + rh:
            out.append((xs / ow, ys / oh, int(v)))
        else:
            out.append((0.0, 0.0, 0))
    return out


def map_bbox(bbox: Sequence[float], width: int, height: int, lay: Layout) -> List[float]:
    """Manifest bbox (normalized to the original) -> normalized to the stored image, clipped to the content."""
    a, _, c, _, e, f = lay.transform
    ow, oh = lay.out
    ox, oy, rw, rh = lay.placed
    bx, by, bw, bh = bbox
    x0, x1 = (min(max((x * width - c) / a, ox), ox + rw) for x in (bx, bx + bw))
    y0, y1 = (min(max((y * height - f) / e, oy), oy + rh) for y in (by, by + bh))
    return [x0 / ow, y0 / oh, (x1 - x0) / ow, (y1 - y0) / oh]


# ------------------------------------------------------------------------------------------ pixels
@dataclass
class Stored:
    data: bytes                 # encoded image
    format: str                 # "jpeg" or "png"
    layout: Layout


def read_image_bytes(path: str, opener=None) -> bytes:
    """The bytes of an image file. Raises BadImage (missing_image, unreadable_image and those of
    :func:`kpconv.data.imageinfo.open_image`, the default opener: any path, a regular file, size-capped)."""
    with file_problems(path), (opener or open_image)(path) as f:
        return f.read()


def passthrough_size(data: bytes, max_pixels: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of a JPEG that :func:`render` would store as is without changing its size
    (grey or colour, EXIF orientation 1, complete: ends with its EOI marker, within the pixel limits),
    known from its header alone (:func:`kpconv.data.imageinfo.probe`, no Pillow); None when anything is
    unusual or unsure: the caller then opens it with :class:`SourceImage`, which decides."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    limits = [n for n in (max_pixels, pillow_limit()) if n]
    try:
        p = probe(data, max_pixels=min(limits) if limits else 0)
    except BadImage:
        return None
    if p.parsed_by != "header" or p.orientation != 1 or p.components not in (1, 3) or not p.complete:
        return None
    return p.size


class SourceImage:
    """An opened image file: its bytes, its displayed size and how to decode it. Raises BadImage.

    ``opener(path)`` opens the file for reading (default: ``open(path, "rb")``; the Beam runner passes one
    that reads ``gs://``, ``s3://``... and raises FileNotFoundError for a missing file)."""

    def __init__(self, path: str, max_pixels: Optional[int] = None, opener=None, data: Optional[bytes] = None):
        from PIL import Image

        self.path = path
        self.loc = Location(path)
        self.data = read_image_bytes(path, opener) if data is None else data
        with pillow_problems(self.loc):
            self.im = Image.open(io.BytesIO(self.data))
        check_pixels(self.im.size, Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels, self.loc)
        self.orientation = pillow_orientation(self.im)
        self.size = displayed_size(*self.im.size, self.orientation)

    def load(self, draft_size: Optional[Tuple[int, int]] = None):
        """Decode (at a reduced JPEG scale when ``draft_size`` allows); returns (image, scale)."""
        from PIL import Image, ImageOps

        im = self.im
        scale = 1
        if draft_size and im.format == "JPEG" and self.orientation == 1:
            im.draft("RGB", draft_size)
            w, h = self.size
            dw, dh = im.size
            for s in (8, 4, 2, 1):
                if (w + s - 1) // s == dw and (h + s - 1) // s == dh:
                    scale = s
                    break
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                im.load()
            except OSError as e:    # a file without its end marker was cut short; else it is damaged
                complete = ends_complete(self.data, im.format) or im.format not in ("JPEG", "PNG")
                raise BadImage("unreadable_image" if complete else "truncated_image", f"cannot decode image: {e}",
                               self.loc) from None
            except (SyntaxError, ValueError, EOFError) as e:
                raise BadImage("unreadable_image", f"cannot decode image: {e}", self.loc) from None
        if self.orientation != 1:
            im = ImageOps.exif_transpose(im)
        return im, scale


def to_rgb(im, background=BACKGROUND):
    """Any Pillow image -> 8-bit RGB (see the module docstring for the rules)."""
    from PIL import Image
    import numpy as np

    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" or mode == "L" and "transparency" in im.info:
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) * 255 + 32767) // 65535
        im = Image.fromarray(arr.astype(np.uint8), "L")
        mode = "L"
    elif mode == "F":
        arr = np.clip(np.asarray(im), 0, 255)
        im = Image.fromarray(np.rint(arr).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")


def render(src: SourceImage, bbox: Sequence[float], opts: ImageOptions) -> Stored:
    """The stored image for one instance: passthrough of the original bytes when nothing changes,
    else decode, convert, crop, resize and encode as JPEG. ``bbox`` is normalized to the original."""
    from PIL import Image

    w, h = src.size
    lay = layout(w, h, [bbox[0] * w, bbox[1] * h, bbox[2] * w, bbox[3] * h], opts)
    fmt = src.im.format
    if (lay.identity_pixels and lay.crop == (0, 0, w, h) and fmt in ("JPEG", "PNG") and src.orientation == 1
            and src.im.mode in ("RGB", "L") and "transparency" not in src.im.info):
        # passthrough: the header has been parsed; a file that ends with its end marker is taken as
        # complete, any other is decoded (JPEG at 1/8 scale, which still reads all the data) to find out
        if not ends_complete(src.data, fmt):
            src.load(draft_size=((w + 7) // 8, (h + 7) // 8) if fmt == "JPEG" else None)
        return Stored(src.data, "jpeg" if fmt == "JPEG" else "png", lay)
    x0, y0, x1, y1 = lay.crop
    ox, oy, rw, rh = lay.placed
    draft = None
    if rw < x1 - x0 and rh < y1 - y0:
        draft = (max(1, math.ceil(w * rw / (x1 - x0))), max(1, math.ceil(h * rh / (y1 - y0))))
    im, s = src.load(draft_size=draft)
    im = to_rgb(im)
    if im.size != (math.ceil(w / s), math.ceil(h / s)):
        raise BadImage("unreadable_image", f"decoded size {im.size} is not the expected {(w, h)}", src.loc)
    if (rw, rh) == (x1 - x0, y1 - y0) and s == 1:
        content = im.crop((x0, y0, x1, y1)) if (x0, y0, x1, y1) != (0, 0, w, h) else im
    else:
        content = im.resize((rw, rh), Image.Resampling.BILINEAR, box=(x0 / s, y0 / s, x1 / s, y1 / s))
    if lay.placed != (0, 0) + lay.out:
        canvas = Image.new("RGB", lay.out, BACKGROUND)
        canvas.paste(content, (ox, oy))
        content = canvas
    buf = io.BytesIO()
    content.save(buf, "JPEG", quality=opts.quality)
    return Stored(buf.getvalue(), "jpeg", lay)


def decode(data: bytes):
    """Decode stored image bytes fully (RGB). Raises BadImage."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except UnidentifiedImageError:
        raise BadImage("unreadable_image", UNIDENTIFIED) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage("unreadable_image", f"cannot decode image: {e}") from None
    return im
