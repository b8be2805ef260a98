"""COCO rows (RawInstance's dense form) are validated a chunk at a time with numpy; rows with anything to
report, clamp or fix go the exact, one-by-one way. Through the public ingest(): a COCO file read in
its own keypoint order (the vectorized path) must give exactly the manifest and the problem report of
the same file read with ``--keypoints`` in that same order (the reader then gives dicts: the exact
path), for awkward values, rounding ties, clamps, bad boxes, duplicates and missing images."""
from __future__ import annotations

import json
import random

from PIL import Image

from kpconv.data.formats.base import IngestOptions
from kpconv.data.ingest import ingest

NAMES = ["nose", "left_eye", "right_eye", "tail", "paw"]


def _coco(tmp_path, rng: random.Random, n=3000) -> str:
    sizes = [(64, 48), (31, 7), (640, 480), (128, 128)]
    images = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h)).save(tmp_path / f"im{i}.png")
        images.append({"id": i + 1, "file_name": f"im{i}.png", "width": w, "height": h})
    images.append({"id": 9, "file_name": "missing.png", "width": 10, "height": 10})
    awkward = [0.0, 0.5, 64.0, 0.0078125 * 64, 1e-7, 0.003, 3.0000005, 63.99999999, 7, 0, 64, -0.4, 64.4, 65.0,
               -3.0, 2 ** 60, 12.345678901, 0.0064, 63.99999, 1e-300]
    anns = []
    for a in range(n):
        im = rng.choice(images)
        w, h = im["width"], im["height"]
        kp = []
        for _ in NAMES:
            if rng.random() < 0.02:
                x, y = rng.choice(awkward), rng.choice(awkward)
            else:   # two-decimal pixels: c * 1e6 is often a half-integer (rounding ties)
                x, y = rng.randint(0, 100 * w) / 100, rng.randint(0, 100 * h) / 100
            v = rng.choice([2, 2, 2, 1, 0]) if rng.random() < 0.995 else rng.choice([3, 2.0, 1.5, 0.0])
            kp += [x, y, v]
        ann = {"id": a + 1, "image_id": im["id"], "category_id": 1, "keypoints": kp, "num_keypoints": 5}
        r = rng.random()
        if r > 0.3:
            ann["bbox"] = ([rng.randint(-50, w * 100) / 100, rng.randint(-50, h * 100) / 100,
                            rng.randint(1, w * 100) / 100, rng.randint(1, h * 100) / 100] if r < 0.97
                           else rng.choice([[1, 2, -3, 4], [1, 2, 3], [0, 0, 0, 0], [-0.0, 0, 3, 3]]))
        anns.append(ann)
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 1, "name": "animal", "keypoints": NAMES, "skeleton": [[1, 2]]}]}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _ingest(tmp_path, source, name, **options):
    out, report = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.report.jsonl"
    result = ingest([source], output=str(out), options=IngestOptions(**options), report_path=str(report))
    return out.read_bytes(), report.read_bytes(), result


def test_vectorized_rows_match_the_exact_path(tmp_path):
    for seed in range(3):
        d = tmp_path / str(seed)
        d.mkdir()
        source = _coco(d, random.Random(seed))
        fast, fast_report, a = _ingest(d, source, "fast")
        exact, exact_report, b = _ingest(d, source, "exact", keypoints=NAMES)
        assert fast.split(b"\n", 1)[1] == exact.split(b"\n", 1)[1]       # every record line, byte for byte
        assert fast_report == exact_report and fast_report.count(b"\n") > 100
        assert (a.written, a.skipped) == (b.written, b.skipped) and a.written > 2000
