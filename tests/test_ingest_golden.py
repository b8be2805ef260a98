"""The manifest (and problem report) of every ingest fixture, compared exactly with
``tests/golden/ingest/<fixture>.manifest.txt``: one field (one keypoint) per line, so that a review diff
shows the field that changed (``pytest --update-golden`` rewrites them; review the diff). The bytes of
every line are checked too: each is exactly the compact JSON of the values the golden file holds.

Fixtures come from ``fixtures/make_fixtures.py``; a test regenerates them into a temporary folder
and compares, so a checked-in fixture that no longer matches its generator fails.
"""
from __future__ import annotations

import filecmp
import importlib.util
import json

import pytest

from conftest import FIXTURES, GOLDEN, relativize
from kpconv.data.formats.base import IngestOptions
from kpconv.data.ingest import ingest

# name -> (format module, sources relative to fixtures/, IngestOptions arguments)
CASES = {
    "coco": ("coco", ["coco/annotations.json"], {}),
    "coco-splits": ("coco", ["coco-splits/person_keypoints_train2017.json",
                             "coco-splits/person_keypoints_val2017.json"], {}),
    "coco-categories": ("coco", ["coco-categories/annotations.json"], {"category": "2"}),
    "csv": ("csv_table", ["csv/labels.csv"], {}),
    "csv-subset": ("csv_table", ["csv/labels.csv"], {"keypoints": ["tail", "nose", "left_eye", "right_eye"]}),
    "csv-long": ("csv_table", ["csv-long/labels.csv"], {}),
    "dlc": ("dlc", ["dlc"], {}),
    "dlc-single": ("dlc", ["dlc-single"], {}),
    "dlc-h5": ("dlc", ["dlc-h5"], {}),
    "dlc-top": ("dlc", ["dlc-top"], {}),
    "cvat": ("cvat", ["cvat/annotations.xml"], {}),
    "cvat-points": ("cvat", ["cvat-points/annotations.xml"], {}),
    "cvat-video": ("cvat", ["cvat-video/annotations.xml"], {}),
    "label-studio": ("label_studio", ["label-studio/project-3-at-2024-05-02-10-02-1a2b3c4d.json"], {}),
    "label-studio-min": ("label_studio", ["label-studio-min/project-3-at-2024-05-02-10-05-9f8e7d6c.json"], {}),
    "dlib": ("dlib", ["dlib/training_with_keypoints.xml"], {}),
    "labelme": ("labelme", ["labelme"], {}),
    "yolo": ("yolo", ["yolo"], {}),
    "kpconv-json": ("kpconv_json", ["kpconv-json/annotations.json"], {}),
    "kpconv-jsonl": ("kpconv_json", ["kpconv-json/annotations.jsonl"], {}),
}
FORMAT_NAME = {"coco": "coco", "csv_table": "csv", "dlc": "dlc", "labelme": "labelme", "yolo": "yolo",
               "kpconv_json": "kpconv-json", "cvat": "cvat", "label_studio": "label-studio", "dlib": "dlib"}


def fields(text: str) -> str:
    """A manifest as one field per line (one keypoint per line), after checking that every line is
    exactly the compact JSON of its values (so that the golden fields pin the bytes too)."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        d = json.loads(line)
        assert line == json.dumps(d, ensure_ascii=False, separators=(",", ":")), f"line {n} is not compact JSON"
        out.append(f"--- line {n}")
        for key, value in d.items():
            if key == "keypoints" and n > 1:
                out.extend(f"keypoints[{i}]: {json.dumps(p)}" for i, p in enumerate(value))
            else:
                out.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return "\n".join(out) + "\n"


def run_fixture(name: str, tmp_path, report: bool = False):
    module, sources, opts = CASES[name]
    out = tmp_path / f"{name}.jsonl"
    rep = tmp_path / f"{name}.report.jsonl"
    result = ingest([FIXTURES / s for s in sources], output=str(out), fmt="auto",
                    options=IngestOptions(**opts), report_path=str(rep) if report else None)
    assert result.format == FORMAT_NAME[module]  # --format auto found the right reader
    return out.read_text(encoding="utf-8"), (rep.read_text(encoding="utf-8") if report else "")


@pytest.mark.parametrize("name", list(CASES))
def test_golden_manifest(name, tmp_path, golden):
    text, report = run_fixture(name, tmp_path, report=True)
    header = json.loads(text.splitlines()[0])
    assert header["images_root"] == (FIXTURES / CASES[name][1][0]).parent.as_posix() or \
        header["images_root"] == (FIXTURES / CASES[name][1][0]).as_posix()
    golden.check(f"ingest/{name}.manifest.txt", fields(relativize(text)))
    report_golden = f"ingest/{name}.report.jsonl"
    if report:
        golden.check(report_golden, relativize(report))
    else:  # no problem expected: a golden report that should exist would catch one going missing
        assert not (GOLDEN / report_golden).exists(), f"{report_golden}: expected problems, got none"


def test_hand_checked_coordinates(tmp_path):
    """A few values worked out by hand (x_norm = x_px / width, y_norm = y_px / height)."""
    text, _ = run_fixture("coco", tmp_path)
    recs = [json.loads(line) for line in text.splitlines()[1:]]
    first = recs[0]
    assert first["image"] == "images/img001.png" and (first["width"], first["height"]) == (64, 48)
    assert first["keypoints"][0] == [0.164062, 0.25, 2]        # nose (10.5, 12): 10.5 / 64 = 0.1640625
    assert first["keypoints"][5] == [0.1875, 0.833333, 2]      # tail (12, 40): 40 / 48
    assert recs[1]["keypoints"][3] == [0.0, 0.0, 0]             # left_ear not labelled
    assert first["bbox"] == [0.0625, 0.125, 0.210938, 0.708333]  # extent x 4..17.5, y 6..40
    # the EXIF-rotated JPEG (stored 64x48, orientation 6) is 48x64 as displayed
    jpeg = next(r for r in recs if r["image"].endswith("img003.jpg"))
    assert (jpeg["width"], jpeg["height"]) == (48, 64)
    assert jpeg["keypoints"][5] == [0.46875, 0.90625, 2]       # tail (22.5, 58) / (48, 64)


def test_fixtures_match_their_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(tmp_path)
    generated = mod.GENERATED + [f"bad/{c}" for c in mod.BAD_CASES]
    for d in generated:
        fresh = sorted(p.relative_to(tmp_path / d) for p in (tmp_path / d).rglob("*") if p.is_file())
        kept = sorted(p.relative_to(FIXTURES / d) for p in (FIXTURES / d).rglob("*") if p.is_file())
        assert fresh == kept, f"fixtures/{d}: files differ from the generator's; rerun fixtures/make_fixtures.py"
        for rel in fresh:
            a, b = tmp_path / d / rel, FIXTURES / d / rel
            if filecmp.cmp(a, b, shallow=False):
                continue
            if rel.suffix == ".h5":     # HDF5 stores creation times: the table must be the same
                assert _same_table(a, b), f"fixtures/{d}/{rel}: table differs; rerun fixtures/make_fixtures.py"
                continue
            # image bytes may differ with the zlib/libjpeg of another machine; the pictures must not
            assert rel.suffix in (".png", ".jpg"), f"fixtures/{d}/{rel} is stale; rerun fixtures/make_fixtures.py"
            assert _same_picture(a, b), f"fixtures/{d}/{rel}: image differs; rerun fixtures/make_fixtures.py"


def _same_table(a, b) -> bool:
    import pandas as pd

    return pd.read_hdf(a).equals(pd.read_hdf(b))


def _same_picture(a, b) -> bool:
    from PIL import Image, ImageChops, ImageStat

    with Image.open(a) as ia, Image.open(b) as ib:
        if (ia.size, ia.mode, ia.getexif().get(0x0112)) != (ib.size, ib.mode, ib.getexif().get(0x0112)):
            return False
        diff = ImageStat.Stat(ImageChops.difference(ia.convert("RGB"), ib.convert("RGB"))).mean
        return max(diff) < (0.01 if ia.format == "PNG" else 3.0)
