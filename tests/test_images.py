"""Image conversion, crop/resize geometry and the exact keypoint transform (the drawn-dot test)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kpconv.data.images import (BACKGROUND, BadImage, ImageOptions, Layout, SourceImage, decode, layout,
                           map_bbox, map_keypoints, render, to_rgb)

# ------------------------------------------------------------------------------------ geometry


def test_layout_stretch_pad_and_crop():
    lay = layout(640, 480, [0, 0, 640, 480], ImageOptions(size=(224, 224), resize="stretch"))
    assert lay == Layout((0, 0, 640, 480), (224, 224), (0, 0, 224, 224))
    assert lay.transform == pytest.approx([640 / 224, 0, 0, 0, 480 / 224, 0])

    lay = layout(640, 480, [0, 0, 640, 480], ImageOptions(size=(224, 224), resize="pad"))
    assert lay.placed == (0, 28, 224, 168)          # 640x480 -> 224x168, centred vertically
    a, b, c, d, e, f = lay.transform
    assert (a, b, d, e) == pytest.approx((640 / 224, 0, 0, 480 / 168))
    assert c == 0 and f == pytest.approx(-28 * 480 / 168)

    # box 100..200 x 50..150, pad 0.2 -> grows 10 px each side; clipped at the image border
    lay = layout(640, 480, [100, 50, 100, 100], ImageOptions(crop="bbox", crop_pad=0.2))
    assert lay.crop == (90, 40, 210, 160) and lay.out == (120, 120)
    lay = layout(640, 480, [600, 450, 100, 100], ImageOptions(crop="bbox", crop_pad=0.2))
    assert lay.crop == (590, 440, 640, 480)
    lay = layout(640, 480, [10.4, 10.6, 0, 0], ImageOptions(crop="bbox"))   # empty box: one pixel
    assert lay.crop == (10, 10, 11, 11)


def test_keypoints_outside_become_invisible():
    lay = layout(100, 100, [40, 40, 20, 20], ImageOptions(crop="bbox", crop_pad=0.0, size=(10, 10)))
    kps = [[0.5, 0.5, 2], [0.1, 0.5, 2], [0.45, 0.55, 1], [0.0, 0.0, 0]]
    out = map_keypoints(kps, 100, 100, lay)
    assert out[0] == pytest.approx((0.5, 0.5, 2))
    assert out[1] == (0.0, 0.0, 0)                  # left of the crop
    assert out[2] == pytest.approx((0.25, 0.75, 1))
    assert out[3] == (0.0, 0.0, 0)


def test_keypoints_in_the_padding_become_invisible():
    # a wide crop letterboxed into a square: a point above the crop lands in the top band
    lay = layout(200, 100, [0, 40, 200, 20], ImageOptions(crop="bbox", crop_pad=0, size=(100, 100), resize="pad"))
    assert lay.placed == (0, 45, 100, 10)
    out = map_keypoints([[0.5, 0.5, 2], [0.5, 0.3, 2]], 200, 100, lay)
    assert out[0] == pytest.approx((0.5, 0.5, 2)) and out[1] == (0.0, 0.0, 0)
    assert map_bbox([0, 0.4, 1, 0.2], 200, 100, lay) == pytest.approx([0, 0.45, 1, 0.1])


# ---------------------------------------------------------------------------------- conversion
def _encode(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_convert_to_rgb():
    assert to_rgb(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    p = Image.new("P", (2, 2), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert to_rgb(p).getpixel((0, 0)) == (10, 20, 30)
    p.info["transparency"] = 1                              # palette entry 1 is transparent
    assert to_rgb(p).getpixel((0, 0)) == BACKGROUND
    rgba = Image.new("RGBA", (2, 1), (200, 0, 0, 255))
    rgba.putpixel((1, 0), (200, 0, 0, 0))
    out = to_rgb(rgba)
    assert out.getpixel((0, 0)) == (200, 0, 0) and out.getpixel((1, 0)) == BACKGROUND
    assert to_rgb(Image.new("LA", (1, 1), (50, 0))).getpixel((0, 0)) == BACKGROUND
    assert to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    i16 = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert i16.mode.startswith("I;16")
    assert [to_rgb(i16).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (100, 100, 100), (255, 255, 255)]
    assert to_rgb(Image.new("F", (1, 1), 300.0)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_every_mode_renders_to_rgb_jpeg(tmp_path, mode):
    if mode == "I;16":
        im = Image.fromarray((np.arange(64 * 48, dtype=np.uint16) * 20).reshape(48, 64))
    else:
        im = Image.new(mode, (64, 48))
    path = tmp_path / ("a.tif" if mode == "CMYK" else "a.png")
    im.save(path)
    stored = render(SourceImage(str(path)), [0, 0, 1, 1], ImageOptions(size=(32, 32)))
    out = decode(stored.data)
    assert stored.format == "jpeg" and out.format == "JPEG" and out.mode == "RGB" and out.size == (32, 32)


def test_passthrough_keeps_the_bytes(tmp_path):
    for fmt, name in (("JPEG", "a.jpg"), ("PNG", "a.png")):
        path = tmp_path / name
        Image.new("RGB", (30, 20), (1, 2, 3)).save(path, fmt)
        stored = render(SourceImage(str(path)), [0.1, 0.1, 0.5, 0.5], ImageOptions(size=None))
        assert stored.data == path.read_bytes() and stored.format == fmt.lower()
        assert stored.layout.transform == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    # RGBA must be composited, so it is re-encoded even with nothing else to do
    Image.new("RGBA", (30, 20)).save(tmp_path / "b.png")
    assert render(SourceImage(str(tmp_path / "b.png")), [0, 0, 1, 1], ImageOptions()).format == "jpeg"


def test_bad_images(tmp_path):
    with pytest.raises(BadImage) as e:
        SourceImage(str(tmp_path / "nope.jpg"))
    assert e.value.reason == "missing_image"
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(BadImage) as e:
        SourceImage(str(tmp_path / "junk.jpg"))
    assert e.value.reason == "unreadable_image"
    data = _encode(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage) as e:
        render(SourceImage(str(tmp_path / "cut.jpg")), [0, 0, 1, 1], ImageOptions(size=(50, 50)))
    assert e.value.reason == "truncated_image"
    with pytest.raises(BadImage) as e:   # passthrough checks decoding too
        render(SourceImage(str(tmp_path / "cut.jpg")), [0, 0, 1, 1], ImageOptions(size=None))
    assert e.value.reason == "truncated_image"
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(BadImage) as e:
        SourceImage(str(tmp_path / "big.png"), max_pixels=5000)
    assert e.value.reason == "decompression_bomb"


# ------------------------------------------------------------------------- the drawn-dot test
GREY = 90
# colours whose differences from the grey background are orthogonal, so blended edges of one dot
# never count for another
DOTS = [(150.0, 100.0, (255, GREY, GREY)), (420.0, 300.0, (GREY, 255, GREY)), (300.0, 180.0, (GREY, GREY, 255)),
        (630.0, 20.0, (0, 0, 0))]
BOX = [120.0, 80.0, 330.0, 240.0]   # contains the first three dots; the fourth falls outside a bbox crop


def _dotted(w=640, h=480, radius=10.0):
    """Grey image with coloured discs centred at DOTS (continuous pixel convention)."""
    arr = np.full((h, w, 3), GREY, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    for x, y, colour in DOTS:
        arr[(xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2] = colour
    return arr


def _centroid(arr, colour, radius=10.0):
    """Centroid of the dot of ``colour`` (of about ``radius`` pixels), in the continuous convention:
    around the pixel most like the dot, each pixel weighted by how much of the dot it holds
    (resizing blends the dot linearly with the background; JPEG ringing elsewhere is ignored)."""
    diff = np.array(colour, float) - GREY
    alpha = np.clip((arr.astype(float) - GREY) @ diff / (diff @ diff), 0, 1)
    alpha[alpha < 0.25] = 0
    if alpha.max() < 0.5:
        return None
    cy, cx = np.unravel_index(np.argmax(alpha), alpha.shape)
    r = int(2 * radius) + 3
    y0, x0 = max(0, cy - r), max(0, cx - r)
    win = alpha[y0:cy + r + 1, x0:cx + r + 1]
    yy, xx = np.mgrid[0:win.shape[0], 0:win.shape[1]] + 0.5
    return x0 + (xx * win).sum() / win.sum(), y0 + (yy * win).sum() / win.sum()


EXIF_CASES = {1: lambda a: a, 6: lambda a: np.rot90(a, 1), 3: lambda a: np.rot90(a, 2), 8: lambda a: np.rot90(a, 3)}


def _save(tmp_path, arr, fmt, orientation):
    """Save the *displayed* array so that applying EXIF ``orientation`` gives it back."""
    raw = EXIF_CASES[orientation](arr)   # what is stored in the file, before orientation
    im = Image.fromarray(np.ascontiguousarray(raw))
    path = tmp_path / f"dots.{fmt}"
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, quality=98, exif=exif)
    else:
        im.save(path, **({"quality": 98} if fmt == "jpg" else {}))
    return path


@pytest.mark.parametrize("fmt,orientation", [("png", 1), ("jpg", 1), ("jpg", 6), ("jpg", 3), ("jpg", 8)])
@pytest.mark.parametrize("size,resize,crop", [
    ((224, 224), "stretch", "none"), ((224, 224), "pad", "none"), ((128, 96), "stretch", "bbox"),
    ((96, 128), "pad", "bbox"), (None, "stretch", "bbox"), ((112, 112), "pad", "none"),
    ((900, 700), "pad", "bbox"),
])
def test_dot_follows_its_keypoint(tmp_path, fmt, orientation, size, resize, crop):
    arr = _dotted()
    h, w = arr.shape[:2]
    path = _save(tmp_path, arr, fmt, orientation)
    src = SourceImage(str(path))
    assert src.size == (w, h)
    bbox = [BOX[0] / w, BOX[1] / h, BOX[2] / w, BOX[3] / h]
    opts = ImageOptions(size=size, resize=resize, crop=crop, crop_pad=0.2, quality=98)
    stored = render(src, bbox, opts)
    out = np.asarray(decode(stored.data).convert("RGB"))
    sw, sh = stored.layout.out
    assert out.shape[:2] == (sh, sw)
    a, b, c, d, e, f = stored.layout.transform
    assert b == 0 and d == 0
    kps = map_keypoints([[x / w, y / h, 2] for x, y, _ in DOTS], w, h, stored.layout)
    tol = 1.0 + max(0.0, 0.5 / a)   # ~1 stored pixel (+ half an original pixel when enlarging)
    for (x, y, colour), (kx, ky, v) in zip(DOTS, kps):
        found = _centroid(out, colour, radius=10.0 / min(a, e))
        if v == 0:  # outside the crop: no dot in the stored image
            assert crop == "bbox" and found is None
            continue
        assert found is not None, f"dot {colour} not found"
        fx, fy = found
        assert abs(fx - kx * sw) <= tol and abs(fy - ky * sh) <= tol, (found, (kx * sw, ky * sh))
        # and back to the original image through the stored transform
        assert abs(a * fx + c - x) <= tol * a and abs(e * fy + f - y) <= tol * e
    if crop == "none":
        assert all(v == 2 for _, _, v in kps)
    else:
        assert kps[3][2] == 0 and all(v == 2 for _, _, v in kps[:3])


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "avif"])
def test_source_image_turns_as_the_probe_does(tmp_path, fmt):
    """SourceImage and the probe read EXIF orientation through one function, for every format (an AVIF's
    orientation was once ignored by SourceImage while the probe applied it)."""
    from PIL import features

    from kpconv.data.imageinfo import probe_file

    if fmt == "avif" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    arr = _dotted()
    h, w = arr.shape[:2]
    path = _save(tmp_path, arr, fmt, 6)
    src = SourceImage(str(path))
    assert src.orientation == 6 and src.size == (w, h) == probe_file(str(path)).size
    assert src.load()[0].size == (w, h)


def test_draft_decoding_is_used_for_big_reductions(tmp_path):
    path = _save(tmp_path, _dotted(), "jpg", 1)
    src = SourceImage(str(path))
    im, scale = src.load(draft_size=(160, 120))
    assert scale == 4 and im.size == (160, 120)
    src = SourceImage(str(path))           # EXIF-rotated or not, no draft is asked: full scale
    assert src.load()[1] == 1
