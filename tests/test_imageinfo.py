"""The image probe (kpconv.data.imageinfo) agrees with Pillow on many generated files.

The reference is ``ImageOps.exif_transpose(Image.open(p)).size``; every plain JPEG and PNG is also
checked to be read by the header parsers (``Probe.parsed_by == "header"``), so that a fallback to Pillow
cannot hide a parser bug, and every unusual one to be left to Pillow.
"""
from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, ImageOps

from kpconv.data import imageinfo
from kpconv.data.imageinfo import BadImage

ORIENTATIONS = range(1, 9)


def pil_size(path):
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


def fast_size(path):
    """The size the header parsers give: None when they hand the file to Pillow."""
    p = imageinfo.probe_file(str(path))
    return p.size if p.parsed_by == "header" else None


def exif_bytes(orientation, endian="<", extra_tags=True):
    """A TIFF-structured EXIF block in either byte order (Pillow writes little-endian only)."""
    tags = [(0x010F, 2, 4, b"cam\x00")] if extra_tags else []          # Make, ASCII, inline
    tags.append((0x0112, 3, 1, struct.pack(endian + "H", orientation) + b"\x00\x00"))
    if extra_tags:
        tags.append((0x0131, 2, 12, None))                             # Software, stored after the IFD
    head = (b"II*\x00" if endian == "<" else b"MM\x00*") + struct.pack(endian + "I", 8)
    ifd_len = 2 + 12 * len(tags) + 4
    out, tail = [], b""
    for tag, typ, n, inline in tags:
        if inline is None:
            value = struct.pack(endian + "I", 8 + ifd_len + len(tail))
            tail += b"kpconv test\x00"
        else:
            value = inline
        out.append(struct.pack(endian + "HHI", tag, typ, n) + value)
    return head + struct.pack(endian + "H", len(tags)) + b"".join(out) + b"\x00\x00\x00\x00" + tail


def pil_exif(orientation):
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "kpconv"
    return ex.tobytes()


def rgb(w=37, h=21, mode="RGB"):
    im = Image.new("RGB", (w, h), (10, 200, 30))
    im.putpixel((0, 0), (255, 0, 0))
    return im.convert(mode)


def make_cases(d):
    """[(name, path)] of valid images the fast path must handle exactly like Pillow."""
    cases = []

    def save(name, im, **kw):
        p = d / name
        im.save(p, **kw)
        cases.append((name, p))

    for o in ORIENTATIONS:
        save(f"o{o}.jpg", rgb(), exif=pil_exif(o))
        save(f"o{o}_prog.jpg", rgb(41, 17), exif=pil_exif(o), progressive=True)
        save(f"o{o}.png", rgb(13, 29), exif=pil_exif(o))
        save(f"o{o}.webp", rgb(23, 11), exif=pil_exif(o))
        for endian in "<>":
            name = f"o{o}_{'le' if endian == '<' else 'be'}"
            raw = exif_bytes(o, endian)
            save(name + ".jpg", rgb(30, 12), exif=b"Exif\x00\x00" + raw)
            save(name + ".png", rgb(30, 12), exif=raw)
            save(name + ".webp", rgb(30, 12), exif=raw, lossless=True)
    save("plain.jpg", rgb(640, 480))
    save("gray.jpg", rgb(33, 9, "L"))
    save("cmyk.jpg", rgb(19, 23, "CMYK"))
    save("icc.jpg", rgb(20, 20), icc_profile=b"\x00" * 3000)
    save("big_icc.jpg", rgb(64, 48), exif=pil_exif(6), icc_profile=b"\x00" * 200000)  # SOF past the first read
    save("dpi.jpg", rgb(10, 11), dpi=(300, 300))
    save("p16.png", Image.new("I;16", (31, 7)))
    save("p1.png", Image.new("1", (9, 5)))
    save("palette.png", rgb(17, 3).convert("P"), transparency=0)
    save("la.png", rgb(12, 4, "LA"))
    save("rgba.png", rgb(12, 44, "RGBA"))
    save("interlaced.png", rgb(50, 40), optimize=False)
    save("text.png", rgb(8, 9), pnginfo=_pnginfo())
    save("dpi.png", rgb(8, 9), dpi=(72, 72))
    save("plain.gif", rgb(40, 30).convert("P"))
    save("comment.gif", rgb(40, 30).convert("P"), comment=b"hello", transparency=0)
    save("plain.bmp", rgb(21, 13))
    save("rgba.bmp", rgb(21, 13, "RGBA"))
    save("lossy.webp", rgb(101, 3))
    save("lossless.webp", rgb(3, 101), lossless=True)
    save("alpha.webp", rgb(64, 2, "RGBA"))
    save("odd16383.webp", rgb(16383, 2))
    return cases


def _pnginfo():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "plain text")
    info.add_itxt("Title", "international", lang="en")
    return info


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    return make_cases(d)


def test_probe_matches_pillow(images):
    assert len(images) > 100
    for name, p in images:
        expected = pil_size(p)
        assert imageinfo.read_size(str(p)) == expected, name
        assert imageinfo.probe(p.read_bytes()).size == expected, name
        if name.endswith((".jpg", ".png")) and name != "cmyk.jpg":   # (Adobe APP14: Pillow's)
            assert fast_size(p) == expected, name


def test_orientation_swaps_sides(images):
    sizes = {name: imageinfo.read_size(str(p)) for name, p in images}
    for o in ORIENTATIONS:
        want = (21, 37) if o >= 5 else (37, 21)
        assert sizes[f"o{o}.jpg"] == want
        assert sizes[f"o{o}_be.jpg"] == ((12, 30) if o >= 5 else (30, 12))


def _jpeg_with_segment(marker: int, payload: bytes) -> bytes:
    buf = io.BytesIO()
    rgb(30, 10).save(buf, "JPEG")
    data = buf.getvalue()
    seg = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + seg + data[2:]


def _png_with_chunk(cid: bytes, payload: bytes, after_data=False, exif=None) -> bytes:
    buf = io.BytesIO()
    rgb(30, 10).save(buf, "PNG", **({"exif": exif} if exif else {}))
    data = buf.getvalue()
    chunk = struct.pack(">I", len(payload)) + cid + payload + struct.pack(">I", zlib.crc32(payload, zlib.crc32(cid)))
    at = data.rindex(b"IEND") - 4 if after_data else 33
    return data[:at] + chunk + data[at:]


XMP6 = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
UNUSUAL = {
    # Pillow reads the orientation from XMP when EXIF has none: the fast path must defer.
    "xmp.jpg": _jpeg_with_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP6),
    "xmp.png": _png_with_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP6),
    "xmp_late.png": _png_with_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + XMP6, after_data=True),
    "exif_late.png": _png_with_chunk(b"eXIf", exif_bytes(8), after_data=True),
    "two_exif.png": _png_with_chunk(b"eXIf", exif_bytes(8), exif=exif_bytes(6)),
    "two_exif.jpg": _jpeg_with_segment(0xE1, b"Exif\x00\x00" + exif_bytes(6, ">")),
    "bad_exif.jpg": _jpeg_with_segment(0xE1, b"Exif\x00\x00garbage"),
    "orient_long.jpg": _jpeg_with_segment(0xE1, b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00"
                                          + struct.pack("<HHII", 0x0112, 4, 1, 6) + b"\x00" * 4),
    "private_chunk.png": _png_with_chunk(b"prVt", b"whatever"),
    "ztxt.png": _png_with_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"v")),
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_unusual_files_agree_with_pillow(tmp_path, name):
    p = tmp_path / name
    data = UNUSUAL[name]
    if name == "two_exif.jpg":   # a second Exif APP1 after the first one
        buf = io.BytesIO()
        rgb(30, 10).save(buf, "JPEG", exif=b"Exif\x00\x00" + exif_bytes(3))
        first = buf.getvalue()
        data = first[:2] + data[2:data.index(b"\xff\xdb")] + first[2:]
    p.write_bytes(data)
    assert imageinfo.read_size(str(p)) == pil_size(p)
    if name in ("xmp.jpg", "xmp.png", "xmp_late.png", "two_exif.png", "bad_exif.jpg", "orient_long.jpg"):
        assert fast_size(p) is None, "must be left to Pillow"
    if name in ("private_chunk.png", "exif_late.png"):
        assert fast_size(p) == pil_size(p)


def test_animated_and_extended_gif(tmp_path):
    frames = [rgb(20, 10).convert("P"), rgb(20, 10).convert("P")]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], loop=0, duration=50)
    assert imageinfo.read_size(str(p)) == pil_size(p) == (20, 10)
    # A first frame larger than the logical screen widens the image, as in Pillow.
    data = bytearray(p.read_bytes())
    data[6:10] = struct.pack("<HH", 8, 4)
    q = tmp_path / "wide.gif"
    q.write_bytes(bytes(data))
    assert imageinfo.read_size(str(q)) == pil_size(q) == (20, 10)


def test_missing_and_directory(tmp_path):
    with pytest.raises(BadImage, match="does not exist") as e:
        imageinfo.read_size(str(tmp_path / "nope.jpg"))
    assert e.value.location.file == str(tmp_path / "nope.jpg") and e.value.reason == "missing_image"
    with pytest.raises(BadImage, match="found a directory") as e:
        imageinfo.read_size(str(tmp_path))
    assert e.value.reason == "unreadable_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
def test_truncated_and_corrupt_are_unreadable(tmp_path, fmt):
    buf = io.BytesIO()
    rgb(40, 30).save(buf, fmt, **({"exif": pil_exif(6)} if fmt in ("JPEG", "PNG", "WEBP") else {}))
    data = buf.getvalue()
    cuts = {"JPEG": 20, "PNG": 30, "GIF": 11, "BMP": 30, "WEBP": 25}
    for i, blob in enumerate([data[:cuts[fmt]], data[:len(data) // 2] if fmt in ("PNG", "WEBP") else b"",
                              b"\x00" * 100, b"not an image at all"]):
        p = tmp_path / f"bad{i}.{fmt.lower()}"
        p.write_bytes(blob)
        with pytest.raises(BadImage, match="cannot read image") as e:
            imageinfo.read_size(str(p))
        assert e.value.location.file == str(p) and e.value.reason == "unreadable_image"


def test_corrupt_png_header_crc(tmp_path):
    buf = io.BytesIO()
    rgb().save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[29] ^= 0xFF   # IHDR checksum
    p = tmp_path / "crc.png"
    p.write_bytes(bytes(data))
    with pytest.raises(BadImage, match="cannot read image"):    # the parser leaves it to Pillow, which refuses
        imageinfo.read_size(str(p))


def test_completeness_and_decompression_bombs():
    buf = io.BytesIO()
    rgb(40, 30).save(buf, "JPEG")
    data = buf.getvalue()
    assert imageinfo.probe(data).complete is True
    assert imageinfo.probe(data + b"\0\0").complete is True
    assert imageinfo.probe(data[:-2]).complete is False
    with pytest.raises(BadImage) as e:
        imageinfo.probe(data, max_pixels=40 * 30 - 1)
    assert e.value.reason == "decompression_bomb"


def test_other_formats_go_through_pillow(tmp_path):
    p = tmp_path / "a.tiff"
    rgb(7, 9).save(p, exif=pil_exif(6))
    assert fast_size(p) is None
    assert imageinfo.read_size(str(p)) == pil_size(p) == (9, 7)


def test_read_sizes_returns_sizes_and_problems(tmp_path, images):
    paths = [str(p) for _, p in images] + [str(tmp_path / "missing.png")]
    (tmp_path / "junk.png").write_bytes(b"junk")
    paths.append(str(tmp_path / "junk.png"))
    sizes = imageinfo.read_sizes(paths + paths[:3])
    assert list(sizes) == paths
    assert all(sizes[str(p)] == imageinfo.read_size(str(p)) for _, p in images)
    assert sizes[paths[-2]].reason == "missing_image"
    assert sizes[paths[-1]].reason == "unreadable_image" and "cannot read image" in sizes[paths[-1]].message
