"""The image probe (format, displayed size, EXIF orientation, completeness, without decoding) and the typed
image problems (:class:`BadImage` with a ``reason``).

Plain JPEG and PNG files are read by the short header parsers below; anything they do not fully understand
goes to Pillow, which decides (the tests compare every probe with ``ImageOps.exif_transpose(Image.open(p))``).
The parsers earn their place (``benchmarks/bench_probe.py``, same run): ``ingest()`` of 20,000 images 2.59 s
against 7.03 s through Pillow (2.7x), and ``kpconv shard`` stores a plain JPEG as it is from its header."""
from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple, Union

from ..errors import ImageError, Location

# reason -> meaning (skipped.jsonl, the problem report and the docs)
REASONS = {
    "missing_image": "image file does not exist",
    "unreadable_image": "not an image, or a format/mode that cannot be decoded",
    "truncated_image": "image data ends early",
    "decompression_bomb": "image has more pixels than the limit (Pillow's MAX_IMAGE_PIXELS)",
    "size_mismatch": "image size differs from the manifest (the image changed since ingest)",
    "path_outside_root": "image path resolves (symlinks followed) outside the images root",
    "degenerate_crop": "--crop bbox on an instance whose box is under a pixel wide or high",
}
EXIF_ORIENTATION = 0x0112
TRANSPOSED = frozenset((5, 6, 7, 8))        # orientations that turn the image by 90 degrees
UNIDENTIFIED = "cannot read image: not an image file Pillow can identify"
_HEAD = 1 << 16                             # first read of a file: the whole header of nearly every image
_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)   # PIL.Image.MAX_IMAGE_PIXELS default
MAX_IMAGE_BYTES = 256 * 1024 * 1024         # an image file larger than this is refused (bounded memory)

Size = Tuple[int, int]


class BadImage(ImageError):
    """An image that cannot be used; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str, location: Optional[Location] = None):
        self.reason = reason
        super().__init__(message, location)

    def __reduce__(self):       # (pickled by worker processes)
        return BadImage, (self.reason, self.message, self.location)


@dataclass(frozen=True)
class Probe:
    format: str                 # Pillow's name: "JPEG", "PNG", "GIF", ...
    width: int                  # as displayed (EXIF orientation applied)
    height: int
    orientation: int            # EXIF orientation, 1 when absent
    components: Optional[int]   # JPEG colour components (1 grey, 3 colour, 4 CMYK); None otherwise
    complete: Optional[bool]    # JPEG/PNG: ends with its end marker; None when not looked at
    parsed_by: str              # "header" (the parsers here) or "pillow"

    @property
    def size(self) -> Size:
        return self.width, self.height


# ------------------------------------------------------------------------------------------ public
def probe(data: bytes, name: str = "<image>", max_pixels: Optional[int] = None) -> Probe:
    """Probe image bytes. Raises BadImage (unreadable_image, decompression_bomb)."""
    return _probe(_Src(None, data), name, max_pixels)


def probe_file(path: str, max_pixels: Optional[int] = None, root: Optional[str] = None) -> Probe:
    """Probe an image file, reading its header only. Raises BadImage (missing_image, unreadable_image,
    decompression_bomb, and those of :func:`open_image`)."""
    with file_problems(path), open_image(path, root) as f:
        return _probe(_Src(f, f.read(_HEAD)), path, max_pixels)


def open_image(path: str, root: Optional[str] = None, max_bytes: Optional[int] = None):
    """The image file ``path`` opened unbuffered: the one place kpconv opens an image path. BadImage
    ``unreadable_image`` for what is not a regular file (a FIFO is not blocked on, a device never read) or is
    over ``max_bytes`` (also while read); ``path_outside_root`` when ``root`` is given and the opened file's real
    path is not inside it (``root=None``: any path, ``--allow-outside-root``)."""
    loc = Location(path)
    max_bytes = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    if "\x00" in str(path):
        raise BadImage("unreadable_image", "image path holds a NUL byte", loc)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
            raise BadImage("unreadable_image", f"expected a regular image file, found {kind}", loc)
        if root is not None:
            real = _fd_path(fd, path)
            base = real_root(root)
            if real != base and not real.startswith(base.rstrip("/") + "/"):
                raise BadImage("path_outside_root", f"image path resolves to {real}, outside the images root "
                               f"{base} (use --allow-outside-root to accept it)", loc)
        if max_bytes and st.st_size > max_bytes:
            raise BadImage("unreadable_image", f"image file is {st.st_size} bytes, more than the cap of "
                           f"{max_bytes}", loc)
        os.set_blocking(fd, True)
        return _CappedFile(fd, max_bytes, str(path))
    except BaseException:
        os.close(fd)
        raise


class RealRoot(str):
    """An images root already resolved (:func:`real_root`), for callers that open many images."""


def real_root(root: Optional[str]) -> Optional[str]:
    """``root`` with every symlink resolved, once, so :func:`open_image` need not resolve it per image (0.35 of the
    2.4 s of ``ingest()`` on 20,000 images)."""
    return root if root is None or root.__class__ is RealRoot else RealRoot(os.path.realpath(root))


def _fd_path(fd: int, path: str) -> str:
    """The real path of an open file (Linux: the kernel's, so no symlink can be swapped in between)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


class _CappedFile(io.FileIO):
    """An unbuffered file that refuses to return more than ``cap`` bytes in all (a file that grows after
    the size check cannot make a read unbounded)."""

    def __init__(self, fd: int, cap: int, path: str):
        super().__init__(fd, "rb", closefd=True)
        self._cap = cap
        self._path = path

    def read(self, size: int = -1) -> bytes:
        if not self._cap:
            return super().read(size)
        if size is not None and size >= 0:
            data = super().read(min(size, self._cap + 1 - self.tell()))
        else:   # to the end: a read of the size left (+ 1, to see growth), not a cap-sized buffer (256 MiB per
            parts = []      # image, 48 of the 96 ms of reading 2,000 35 KB JPEGs)
            while True:
                want = min(self._cap + 1 - self.tell(), max(os.fstat(self.fileno()).st_size - self.tell(), 0) + 1)
                parts.append(super().read(want))
                if len(parts[-1]) < want or self.tell() > self._cap:
                    break
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        if self.tell() > self._cap:
            raise BadImage("unreadable_image", f"image file grew past the cap of {self._cap} bytes",
                           Location(self._path))
        return data

    def readall(self) -> bytes:
        return self.read(-1)


@contextmanager
def file_problems(path: str):
    """Turns an OSError of opening or reading the image file ``path`` into its BadImage."""
    try:
        yield
    except ValueError as e:       # an embedded NUL byte, a path too strange for the OS
        raise BadImage("unreadable_image", f"cannot open image path: {e}", Location(path)) from None
    except FileNotFoundError:
        raise BadImage("missing_image", "image file does not exist", Location(path)) from None
    except IsADirectoryError:
        raise BadImage("unreadable_image", "expected an image file, found a directory", Location(path)) from None
    except OSError as e:
        raise BadImage("unreadable_image", f"cannot read image: {e.strerror or e}", Location(path)) from None


def read_size(path: str, root: Optional[str] = None) -> Size:
    """(width, height) of the image file as displayed. Raises BadImage."""
    return probe_file(path, root=root).size


def ends_complete(data: bytes, fmt: str) -> bool:
    """A JPEG that ends with its EOI marker (trailing zero bytes allowed), a PNG with its IEND chunk."""
    if fmt == "JPEG":
        if data[-1:] != b"\x00":                 # (rstrip copies the whole image: only when needed)
            return data[-2:] == b"\xff\xd9"
        return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"
    return fmt == "PNG" and data.endswith(b"\x00\x00\x00\x00IEND\xaeB`\x82")


def max_pixels() -> int:
    """Pillow's decompression bomb limit (its default while Pillow is not imported)."""
    import sys

    pil = sys.modules.get("PIL.Image")
    limit = getattr(pil, "MAX_IMAGE_PIXELS", _DEFAULT_MAX_PIXELS) if pil is not None else _DEFAULT_MAX_PIXELS
    return limit or 0


def read_sizes(paths: Iterable[str], root: Optional[str] = None) -> Dict[str, Union[Size, BadImage]]:
    """Sizes of many images; problems are returned (as :class:`BadImage`), not raised. ``root``: the
    images root each image must resolve into (:func:`open_image`); None accepts any path."""
    root = real_root(root)
    return {p: _one(p, root) for p in dict.fromkeys(paths)}


def _one(path: str, root: Optional[str] = None) -> Union[Size, BadImage]:
    try:
        return read_size(path, root)
    except BadImage as e:
        return e


# ------------------------------------------------------------------------------------------ probe
class _Src:
    """Random access to an image: the bytes read so far (``head``), and past them the file, if any."""

    __slots__ = ("f", "head")

    def __init__(self, f, head: bytes):
        self.f = f
        self.head = head

    def get(self, off: int, size: int) -> bytes:
        if off + size <= len(self.head) or self.f is None or len(self.head) < _HEAD:
            return self.head[off:off + size]
        self.f.seek(off)
        return self.f.read(size)


def _probe(src: _Src, name: str, limit: Optional[int]) -> Probe:
    head = src.head
    parsed = None
    try:
        if head.startswith(b"\xff\xd8\xff"):
            parsed = _jpeg(src)
        elif head.startswith(b"\x89PNG\r\n\x1a\n"):
            parsed = _png(src)
    except (struct.error, IndexError):      # a field cut short: Pillow reports it
        parsed = None
    limit = max_pixels() if limit is None else limit
    if parsed is not None:
        fmt, w, h, orientation, components = parsed
        if w > 0 and h > 0 and not (limit and w * h > limit):
            complete = ends_complete(head, fmt) if src.f is None else None
            return Probe(fmt, *displayed_size(w, h, orientation), orientation, components, complete, "header")
    return _pillow(src, name, limit)


def _pillow(src: _Src, name: str, limit: int) -> Probe:
    """The reference: what ``ImageOps.exif_transpose(Image.open(...)).size`` gives."""
    from PIL import Image

    if src.f is not None:
        src.f.seek(0)
    loc = Location(name)
    with pillow_problems(loc), Image.open(src.f if src.f is not None else io.BytesIO(src.head)) as im:
        check_pixels(im.size, limit, loc)
        fmt = im.format
        if fmt not in ("JPEG", "MPO"):
            # loading can change the answer: a PNG may keep its eXIf chunk after the pixel data;
            # Pillow turns a TIFF upright while loading. (A JPEG's metadata comes first.)
            im.load()
        w, h = im.size
        orientation = pillow_orientation(im)
        components = len(im.getbands()) if fmt == "JPEG" else None
    if w <= 0 or h <= 0:
        raise BadImage("unreadable_image", f"cannot read image: it is {w}x{h} pixels", loc)
    complete = ends_complete(src.head, fmt) if src.f is None and fmt in ("JPEG", "PNG") else None
    return Probe(fmt, *displayed_size(w, h, orientation), orientation, components, complete, "pillow")


# ------------------------------------------------------------------ Pillow: shared with images.SourceImage
@contextmanager
def pillow_problems(loc: Location):
    """Pillow opening or reading an image, its errors as BadImage (decompression_bomb, unreadable_image)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("decompression_bomb", str(e), loc) from None
    except UnidentifiedImageError:  # (its text names a BytesIO by its address: not reproducible)
        raise BadImage("unreadable_image", UNIDENTIFIED, loc) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, zlib.error) as e:
        raise BadImage("unreadable_image", f"cannot read image: {e}", loc) from None


def check_pixels(size: Size, limit: Optional[int], loc: Location) -> None:
    """BadImage decompression_bomb when ``size`` has more than ``limit`` pixels (0 or None: no limit)."""
    w, h = size
    if limit and w * h > limit:
        raise BadImage("decompression_bomb", f"image has {w * h} pixels, more than the limit of {limit}", loc)


def pillow_orientation(im) -> int:
    """The EXIF orientation of an image opened by Pillow, 1 when absent: the one place kpconv reads it through
    Pillow (the header parsers read it with :func:`_exif_orientation`). A broken EXIF block gives 1: it does
    not make the image unreadable."""
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError):
        return 1


def displayed_size(width: int, height: int, orientation: int) -> Size:
    """``(width, height)`` as displayed: swapped by the orientations that turn the image by 90 degrees."""
    return (height, width) if orientation in TRANSPOSED else (width, height)


def _exif_orientation(tiff: bytes) -> Tuple[Optional[int], bool]:
    """(orientation, 1 when absent; whether IFD0 has the tag) from a TIFF-structured EXIF block, as
    Pillow reads it; orientation None when unsure (a malformed block, an orientation that is not one
    SHORT)."""
    e = {b"II*\x00": "<", b"MM\x00*": ">"}.get(tiff[:4])
    if e is None:
        return None, False
    (ifd,) = struct.unpack_from(e + "I", tiff, 4)
    if ifd < 8 or ifd + 2 > len(tiff):
        return None, False
    (count,) = struct.unpack_from(e + "H", tiff, ifd)
    if ifd + 2 + 12 * count + 4 > len(tiff):
        return None, False
    found = None
    for i in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, typ, n = struct.unpack_from(e + "HHI", tiff, i)
        if tag == EXIF_ORIENTATION:
            if found is not None or typ != 3 or n != 1:
                return None, True
            (found,) = struct.unpack_from(e + "H", tiff, i + 8)
    return (1 if found is None else found), found is not None


# JPEG: the segments a plain file has before its scan; any other marker goes to Pillow
_SOF = frozenset([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
_JPEG_PLAIN = frozenset([0xC4, 0xDB, 0xDD, 0xFE, 0xE0, *range(0xE3, 0xED), 0xEF])   # DHT DQT DRI COM APPn


def _jpeg(src: _Src):
    pos, size, components, exif, xmp = 2, None, None, None, False
    while True:
        b = src.get(pos, 4)
        if len(b) < 4 or b[0] != 0xFF:
            return None
        marker, length = b[1], b[2] << 8 | b[3]
        if marker == 0xDA:
            break
        if length < 2:
            return None
        body = src.get(pos + 4, length - 2)
        if len(body) != length - 2:
            return None                                   # the segment runs past the end
        if marker in _SOF:
            if len(body) < 6 or body[0] != 8 or body[5] not in (1, 3, 4):
                return None
            size, components = (body[3] << 8 | body[4], body[1] << 8 | body[2]), body[5]
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00") and exif is None:
            exif = body[6:]
        elif marker == 0xE1 and body.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            xmp = True
        elif marker == 0xE2 and body.startswith(b"ICC_PROFILE\x00") and len(body) >= 14:
            pass
        elif marker not in _JPEG_PLAIN or (marker == 0xE0 and body.startswith(b"JFIF") and len(body) < 7):
            return None                                   # (a second Exif block, MPF, Photoshop, ...)
        pos += 2 + length
    if size is None:
        return None
    orientation, tagged = 1, False
    if exif:
        orientation, tagged = _exif_orientation(exif)
        if orientation is None:
            return None
    if xmp and not tagged:
        return None                                       # Pillow then reads tiff:Orientation from the XMP
    return "JPEG", size[0], size[1], orientation, components


# PNG: the chunks Pillow reads as a plain image; text chunks that may hold XMP or EXIF go to Pillow
_PNG_PLAIN = frozenset([b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"tEXt",
                        b"iTXt", b"eXIf", b"tIME", b"bKGD", b"sBIT", b"hIST", b"sPLT"])
_PNG_MODES = frozenset([(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (2, 3), (4, 3),
                        (8, 3), (8, 4), (16, 4), (8, 6), (16, 6)])
_PNG_METADATA_KEYS = (b"XML:com.adobe.xmp\x00", b"Raw profile type exif\x00")


def _png(src: _Src):
    ihdr = src.get(8, 25)
    if len(ihdr) < 25 or ihdr[:8] != b"\x00\x00\x00\x0dIHDR" or zlib.crc32(ihdr[4:21]) != int.from_bytes(ihdr[21:], "big"):
        return None
    w, h, depth, ctype, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", ihdr, 8)
    if (depth, ctype) not in _PNG_MODES or compression or filtering or interlace > 1:
        return None
    pos, exif, data_seen = 33, None, False
    while True:
        hdr = src.get(pos, 8)
        if len(hdr) < 8:
            return None                                   # cut short before IEND
        length, cid = struct.unpack(">I4s", hdr)
        if cid == b"IEND":
            break
        if cid not in _PNG_PLAIN and not cid[0] & 0x20:
            return None                                   # a critical chunk Pillow may handle (APNG's ...)
        if cid in (b"tEXt", b"iTXt", b"zTXt") and src.get(pos + 8, 22).startswith(_PNG_METADATA_KEYS):
            return None
        if cid == b"zTXt" and not data_seen:
            return None                                   # Pillow decompresses it while opening
        if cid == b"eXIf":
            if exif is not None:
                return None
            exif = src.get(pos + 8, length)
        if not data_seen and cid != b"IDAT":              # Pillow checks the CRCs before the pixel data
            chunk = src.get(pos + 4, length + 8)
            if len(chunk) != length + 8 or zlib.crc32(chunk[:-4]) != int.from_bytes(chunk[-4:], "big"):
                return None
        data_seen = data_seen or cid == b"IDAT"
        pos += 12 + length
    orientation = 1
    if exif is not None:
        orientation = None if exif.startswith(b"Exif\x00\x00") else _exif_orientation(exif)[0]
        if orientation is None:
            return None                                   # (Pillow's handling of the prefix varies)
    return ("PNG", w, h, orientation, None) if data_seen else None
