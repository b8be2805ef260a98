"""Image sizes from file headers (no full decode), with EXIF orientation applied, in parallel."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, Tuple, Union

from .errors import ImageError, Location

# EXIF orientations 5..8 rotate by 90 degrees: the displayed width is the stored height.
_TRANSPOSED = {5, 6, 7, 8}
EXIF_ORIENTATION = 0x0112


def read_size(path: str) -> Tuple[int, int]:
    """(width, height) of the image as displayed (EXIF orientation applied). Raises ImageError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = 1
            if im.format in ("JPEG", "TIFF", "WEBP", "PNG", "MPO"):
                try:
                    orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                except Exception:  # a broken EXIF block does not make the image unreadable
                    orientation = 1
    except FileNotFoundError:
        raise ImageError("image file does not exist", Location(path)) from None
    except IsADirectoryError:
        raise ImageError("expected an image file, found a directory", Location(path)) from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read image: {e}", Location(path)) from None
    return (h, w) if orientation in _TRANSPOSED else (w, h)


def read_sizes(paths: Iterable[str], workers: int = 0) -> Dict[str, Union[Tuple[int, int], ImageError]]:
    """Sizes of many images, read in parallel threads; failures are returned, not raised."""
    paths = list(dict.fromkeys(paths))
    if not workers:
        workers = min(16, 4 * (os.cpu_count() or 1))

    def one(p):
        try:
            return read_size(p)
        except ImageError as e:
            return e

    if workers <= 1 or len(paths) < 8:
        return {p: one(p) for p in paths}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(paths, pool.map(one, paths, chunksize=32)))
