"""The ingest finalizer formats manifest lines itself (for speed): they must be byte for byte what
``json.dumps(Record.to_json())`` writes, for awkward values too."""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from kpconv.errors import Location
from kpconv.formats.base import IngestOptions, RawInstance
from kpconv.ingest import _Finalizer
from kpconv.manifest import Header, Record, _dumps
from kpconv.problems import Report

NAMES = ["nose", "left_eye", "right_eye", "tail"]


def _instances(rng: random.Random, images):
    out = []
    awkward = [0.0, -0.0, 0.5, 64.0, 0.0078125 * 64, 1e-7, 3.0000005, 63.99999999, 12.345678901, 7, 0, 64,
               -0.4, 64.4, float("nan"), 1e400, True, "3", 0.003, 0.0064, 63.99999]
    for n in range(400):
        img, (w, h) = rng.choice(images)
        kps = {}
        for name in rng.sample(NAMES, rng.randint(0, len(NAMES))):
            x = rng.choice(awkward) if rng.random() < 0.3 else rng.uniform(0, w)
            y = rng.choice(awkward) if rng.random() < 0.3 else rng.uniform(0, h)
            v = rng.choice([1, 2, 2, 2, 0, 2.0]) if rng.random() < 0.95 else rng.choice([3, True, "2"])
            kps[name] = (x, y, v)
        bbox = rng.choice([None, [1, 2, 10, 12], [0.5, 0.25, 100.0, 3.5], [1, 2, -3, 4], ["1", "2", "3", "4"],
                           [float("nan"), 0, 1, 1]])
        instance = rng.choice([None, None, str(n % 7), n % 5])
        group = rng.choice([None, "séq \"1\"", "g\\2", "日本"])
        split = rng.choice([None, "train", "val"])
        if rng.random() < 0.5:
            loc = Location(f"/data/ann{n % 3}.json", record=rng.choice([str(n), "ann \"x\"", "é"]))
        else:
            loc = Location(rng.choice(["/data/labels.csv", None]), line=n + 2)
        out.append(RawInstance(img, kps, loc, instance=instance, bbox=bbox, group=group, split=split,
                               size=rng.choice([None, (w, h), (w + 1, h)]),
                               normalized=rng.random() < 0.1))
    return out


def _run(tmp_path: Path, force_slow: bool):
    images = []
    for i, (w, h) in enumerate([(64, 48), (31, 7), (640, 480)]):
        name = f"im {i} \"q\" é.png"
        Image.new("RGB", (w, h)).save(tmp_path / name)
        images.append((name, (w, h)))
    images.append(("missing.png", (10, 10)))
    header = Header(NAMES, [], [], tmp_path.as_posix(), {"format": "test"})
    fin = _Finalizer(header, {n: i for i, n in enumerate(NAMES)}, tmp_path, IngestOptions(), Report())
    if force_slow:
        orig = fin._image

        def no_prefix(rel, full, normalized):
            c = orig(rel, full, normalized)
            if isinstance(c, tuple):
                c = fin._images[(full, normalized)] = c[:-1] + (None,)
            return c

        fin._image = no_prefix
    text = "".join(fin.run(_instances(random.Random(7), images)))
    return text, fin


def test_lines_are_canonical_json(tmp_path):
    text, fin = _run(tmp_path, force_slow=False)
    lines = text.splitlines(keepends=True)
    assert len(lines) == fin.written > 50 and fin.skipped > 20
    for line in lines:
        assert line.endswith("\n")
        d = json.loads(line)
        assert list(d) == list(Record("a", 1, 1, [], [], "0").to_json())
        rec = Record(d["image"], d["width"], d["height"], d["keypoints"], d["bbox"], d["instance"],
                     d["group"], d["split"], d["source"])
        assert line == _dumps(rec.to_json()) + "\n"
        assert all(isinstance(c, float) for p in d["keypoints"] for c in p[:2])
        assert all(type(p[2]) is int for p in d["keypoints"])
    assert any("-0.0" in line for line in lines)
    assert any("e-05" in line for line in lines)         # below 1e-4, repr uses an exponent
    assert any('\\"' in line for line in lines) and any("é" in line for line in lines)


def test_fast_and_fallback_formatting_agree(tmp_path):
    fast, f1 = _run(tmp_path, force_slow=False)
    slow, f2 = _run(tmp_path, force_slow=True)
    assert fast == slow
    assert f1.report.counts == f2.report.counts
    assert [str(p) for p in f1.report.first] == [str(p) for p in f2.report.first]
