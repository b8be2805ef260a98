"""The canonical labels, written by ``fixtures/make_fixtures.py`` in every format, give the same
manifest, and that manifest is the one worked out by hand from ``CANONICAL`` (x / width, y / height).

Compared: image file name (not its folder: each format lays its images out its own way), width and
height, keypoints, bbox, instance id, and the header's keypoints and flip pairs. Not compared:
``source`` (file and line/record differ by nature), ``split`` and ``group`` (format-specific: YOLO
takes the split from its folders, DeepLabCut the group from its video folder; the others have
none here), and ``skeleton`` for formats that cannot state one (checked to be empty instead).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import PurePosixPath

import pytest

from conftest import FIXTURES
from kpconv.data.formats.base import IngestOptions
from kpconv.data.ingest import ingest
from kpconv.data.manifest import DECIMALS

# format name -> (reader module, source relative to fixtures/, states a skeleton[, IngestOptions arguments])
CANONICAL_SOURCES = {
    "coco": ("coco", "coco/annotations.json", True),
    "csv": ("csv_table", "csv/labels.csv", False),
    "dlc": ("dlc", "dlc", False),
    "dlc-h5": ("dlc", "dlc-h5", False),
    "labelme": ("labelme", "labelme", False),
    "cvat": ("cvat", "cvat/annotations.xml", True),
    "cvat-points": ("cvat", "cvat-points/annotations.xml", False),
    "label-studio": ("label_studio", "label-studio/project-3-at-2024-05-02-10-02-1a2b3c4d.json", False),
    # imglab stores parts in name order: --keypoints gives the canonical order, as a user would
    "dlib": ("dlib", "dlib/training_with_keypoints.xml", False, {"keypoints": ["nose", "left_eye", "right_eye",
                                                                              "left_ear", "right_ear", "tail"]}),
    "yolo": ("yolo", "yolo", False),
    "kpconv-json": ("kpconv_json", "kpconv-json/annotations.json", True),
    "kpconv-jsonl": ("kpconv_json", "kpconv-json/annotations.jsonl", True),
}


FORMAT_OF = {"kpconv-jsonl": "kpconv-json", "dlc-h5": "dlc", "cvat-points": "cvat"}


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FX = _fixture_module()


def expected():
    """Header and records computed directly from the fixture's canonical labels."""
    names = FX.NAMES
    skeleton = sorted([names.index(a), names.index(b)] for a, b in FX.SKELETON)
    flips = sorted([names.index(a), names.index(b)] for a, b in FX.FLIP)
    records = []
    for image, insts in FX.CANONICAL.items():
        w, h, _o = FX.IMAGES[image]
        for i, inst in enumerate(insts):
            kps = [[0.0, 0.0, 0] if p is None else [round(p[0] / w, DECIMALS), round(p[1] / h, DECIMALS), 2]
                   for p in inst]
            x, y, bw, bh = FX.extent(inst)
            box = [round(x / w, DECIMALS), round(y / h, DECIMALS), round(bw / w, DECIMALS), round(bh / h, DECIMALS)]
            records.append({"image": image, "width": w, "height": h, "keypoints": kps, "bbox": box,
                            "instance": str(i)})
    return {"keypoints": names, "flip_pairs": flips}, skeleton, records


def comparable(text: str):
    lines = [json.loads(line) for line in text.splitlines()]
    header = {"keypoints": lines[0]["keypoints"], "flip_pairs": lines[0]["flip_pairs"]}
    records = [{"image": PurePosixPath(r["image"]).name, "width": r["width"], "height": r["height"],
                "keypoints": r["keypoints"], "bbox": r["bbox"], "instance": r["instance"]} for r in lines[1:]]
    records.sort(key=lambda r: (r["image"], r["instance"]))
    return header, lines[0]["skeleton"], records


@pytest.mark.parametrize("fmt", list(CANONICAL_SOURCES))
def test_same_manifest_from_every_format(fmt, tmp_path):
    module, source, has_skeleton, *opts = CANONICAL_SOURCES[fmt]
    out = tmp_path / "m.jsonl"
    result = ingest([FIXTURES / source], output=str(out), options=IngestOptions(**(opts[0] if opts else {})))
    assert result.format == FORMAT_OF.get(fmt, fmt)
    header, skeleton, records = comparable(out.read_text())
    want_header, want_skeleton, want_records = expected()
    assert header == want_header
    assert skeleton == (want_skeleton if has_skeleton else [])
    assert len(records) == len(want_records)
    for got, want in zip(records, want_records):
        assert got == want, f"{fmt}: {got['image']} instance {got['instance']}"


def test_expected_records_are_right():
    """The hand-computed expectation itself, spot-checked: img001's nose (10.5, 12) in 64x48."""
    _h, _s, records = expected()
    assert records[0]["keypoints"][0] == [0.164062, 0.25, 2]
    assert records[0]["bbox"] == [0.0625, 0.125, 0.210938, 0.708333]
    assert len(records) == 7
