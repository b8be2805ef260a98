"""RawInstance's dense form (COCO) is validated and formatted a chunk at a time with numpy: lines,
problem reports (reasons, messages, locations, order), numbering and duplicates must be exactly what
the one-by-one path gives for the same keypoints as a dict."""
from __future__ import annotations

import io
import random
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from kpconv import ingest as ingest_mod
from kpconv.errors import Location
from kpconv.formats.base import IngestOptions, RawInstance
from kpconv.ingest import _Finalizer, _round6
from kpconv.manifest import Header
from kpconv.problems import Report

NAMES = ["nose", "left_eye", "right_eye", "tail", "paw"]


def _dense_instances(rng: random.Random, images, n=3000):
    awkward = [0.0, -0.0, 0.5, 64.0, 0.0078125 * 64, 1e-7, 0.003, 3.0000005, 63.99999999, 7, 0, 64, -0.4,
               64.4, 65.0, -3.0, float("nan"), float("inf"), 2 ** 60, 12.345678901, 0.0064, 63.99999, 1e-300]
    out = []
    for i in range(n):
        img, (w, h) = rng.choice(images)
        kp = []
        for _ in NAMES:
            if rng.random() < 0.02:
                x, y = rng.choice(awkward), rng.choice(awkward)
            else:   # two-decimal pixels: c * 1e6 is often a half-integer (rounding ties)
                x, y = rng.randint(0, 100 * w) / 100, rng.randint(0, 100 * h) / 100
            v = rng.choice([2, 2, 2, 1, 0]) if rng.random() < 0.995 else rng.choice([3, 2.0, 1.5, float("nan"), 0.0])
            kp += [x, y, v]
        r = rng.random()
        bbox = (None if r < 0.3 else [rng.randint(-50, w * 100) / 100, rng.randint(-50, h * 100) / 100,
                                      rng.randint(1, w * 100) / 100, rng.randint(1, h * 100) / 100] if r < 0.97
                else rng.choice([[1, 2, -3, 4], ["1", "2", "3", "4"], [float("nan"), 0, 1, 1], [1, 2, 3], 5,
                                 (0.5, 0.5, 2, 2), [True, 0, 3, 3], [-0.0, 0, 3, 3]]))
        out.append(RawInstance(img, None, Location("/data/ann.json", record=str(i)), bbox=bbox,
                               size=rng.choice([None] * 20 + [(w, h), (w + 1, h)]),
                               instance=None if rng.random() < 0.97 else str(rng.randint(0, 3)),
                               split=rng.choice([None, "train"]), dense=kp))
    return out


def _images(tmp_path):
    images = []
    for i, (w, h) in enumerate([(64, 48), (31, 7), (640, 480), (128, 128)]):
        name = f"im{i}.png"
        Image.new("RGB", (w, h)).save(tmp_path / name)
        images.append((name, (w, h)))
    images.append(("missing.png", (10, 10)))
    return images


def _finalize_all(tmp_path, raws, dense: bool, chunk=None, monkeypatch=None):
    header = Header(NAMES, [], [], tmp_path.as_posix(), {"format": "test"})
    report = Report(stream=io.StringIO(), keep=10 ** 6)
    if not dense:
        raws = [replace(r, keypoints=r.points(NAMES), dense=None) for r in raws]
    fin = _Finalizer(header, {n: i for i, n in enumerate(NAMES)}, tmp_path, IngestOptions(), report,
                     dense_names=NAMES)
    text = "".join(fin.run(raws))
    return text, report._stream.getvalue(), fin


@pytest.mark.parametrize("seed", [1, 2])
def test_dense_chunks_match_the_exact_path(tmp_path, seed, monkeypatch):
    images = _images(tmp_path)
    raws = _dense_instances(random.Random(seed), images)
    calls = []
    orig = _Finalizer._dense_chunk
    monkeypatch.setattr(_Finalizer, "_dense_chunk", lambda self, c, r: calls.append(o := orig(self, c, r)) or o)
    monkeypatch.setattr(ingest_mod, "CHUNK", 700)
    fast_text, fast_report, fast = _finalize_all(tmp_path, raws, dense=True)
    assert sum(len(c or ()) for c in calls) > 2000          # most rows took the chunked path
    slow_text, slow_report, slow = _finalize_all(tmp_path, raws, dense=False)
    assert fast_text == slow_text
    assert fast_report == slow_report and slow_report.count("\n") > 100
    assert (fast.written, fast.skipped) == (slow.written, slow.skipped)
    assert slow.skipped > 50 and fast.written > 2000


def test_unusual_values_fall_back_per_chunk(tmp_path):
    images = _images(tmp_path)[:1]
    raws = _dense_instances(random.Random(3), images, n=200)
    raws[5].dense[0] = 10 ** 400        # no float: the chunk goes the exact way
    raws[9].dense[3] = True             # bool is not a number: that row goes the exact way
    fast_text, fast_report, _ = _finalize_all(tmp_path, raws, dense=True)
    slow_text, slow_report, _ = _finalize_all(tmp_path, raws, dense=False)
    assert fast_text == slow_text and fast_report == slow_report


def test_round6_is_what_percent_f_writes():
    rng = random.Random(5)
    vals = ([rng.randint(0, 6400) / 100 / 64 for _ in range(20000)] + [rng.random() for _ in range(20000)]
            + [k / 2 ** 16 for k in range(0, 2 ** 16 + 1)] + [(2 * k + 1) / 2e6 for k in range(0, 10 ** 6, 37)])
    vals += [float(np.nextafter(v, 2.0)) for v in vals[:5000]] + [float(np.nextafter(v, -1.0)) for v in vals[1:5000]]
    got = _round6(np.array(vals)).astype(np.int64).tolist()
    assert got == [int(("%.6f" % v).replace(".", "")) for v in vals]


@pytest.mark.parametrize("name", ["a.png", "d/a.png", "d/e/a.png", ".a", "..a", "a..", "...", "a/.b/c", "./a",
                                  "../a", "a/./b", "a/../b", "a//b", "/abs/a", "a/", "a\\b", ".", "..", "a/.",
                                  "a/..", "d/../../x", "é ü/\"q\".png"])
def test_plain_path_shortcut_resolves_like_the_general_way(tmp_path, name):
    def resolve(plain: bool):
        report = Report()
        fin = _Finalizer(Header(NAMES, [], [], tmp_path.as_posix(), {}), {}, tmp_path, IngestOptions(), report)
        if not plain:
            fin._plain_root = None
        return fin._resolve(RawInstance(name, {}, Location("x"))), [str(p) for p in report.first]
    assert resolve(True) == resolve(False)


def test_text_table_is_percent_f_without_trailing_zeros():
    from kpconv.ingest import _ChunkFormat
    digits, length = _ChunkFormat.table()
    rows = digits.view(np.uint8).reshape(-1, 8)
    for n in [*range(0, 1000001, 7), *range(0, 2000), *range(999000, 1000001), 10000, 100000, 120000]:
        want = ("%.6f" % (n / 1e6)).rstrip("0")
        assert bytes(rows[n][:length[n]]).decode() == (want + "0" if want.endswith(".") else want)
