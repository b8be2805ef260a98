"""Labelme reader: point shapes, group_id instances, rectangles as boxes, names, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import ingest_records
from kpconv.data import formats
from kpconv.errors import AnnotationError
from kpconv.data.formats.base import IngestOptions
from kpconv.data.ingest import ingest
from kpconv.data.manifest import read_manifest

W, H = 64, 48


def point(label, x, y, group=None, **extra):
    return {"label": label, "points": [[x, y]], "group_id": group, "shape_type": "point", "flags": {}, **extra}


def write(folder: Path, name: str, shapes, image="IMAGE", size=(W, H), **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    img = name.replace(".json", ".png") if image == "IMAGE" else image
    if img and not (folder / img).exists() and image == "IMAGE":
        Image.new("RGB", size).save(folder / img)
    doc = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": img,
           "imageData": None, "imageHeight": size[1], "imageWidth": size[0], **extra}
    p = folder / name
    p.write_text(json.dumps(doc, indent=2))
    return p


def run(tmp_path, sources, **kw):
    out = tmp_path / "out.jsonl"
    result = ingest([str(s) for s in sources], output=str(out), fmt=kw.pop("fmt", "labelme"), **kw)
    header, records = read_manifest(str(out))
    return result, header, records


def test_folder_with_groups_names_and_boxes(tmp_path):
    d = tmp_path / "ann"
    write(d, "b.json", [point("nose", 32, 24, 1), point("left_eye", 30, 20, 1), point("tail", 10, 10, 2),
                        {"label": "person", "points": [[40, 30], [20, 10]], "group_id": 1,
                         "shape_type": "rectangle", "flags": {}},
                        {"label": "seg", "points": [[1, 1], [2, 2], [3, 1]], "group_id": 1,
                         "shape_type": "polygon", "flags": {}}])
    write(d, "a.json", [point("right_eye", 16, 12), point("nose", 8, 6),
                        point("left_eye", 4, 4, flags={"occluded": True})])
    result, header, records = run(tmp_path, [d], fmt="auto")
    assert result.format == "labelme"
    # names: first appearance, files in sorted order (a.json first)
    assert header.keypoints == ["right_eye", "nose", "left_eye", "tail"]
    assert header.flip_pairs == [(2, 0)]
    assert header.source["files"] == ["a.json", "b.json"]
    assert header.source["ignored_shapes"] == {"polygon": 1}
    assert [(r.image, r.instance) for r in records] == [("a.png", "0"), ("b.png", "1"), ("b.png", "2")]
    a = records[0]
    assert a.keypoints[:3] == [[0.25, 0.25, 2], [0.125, 0.125, 2], [0.0625, round(4 / H, 6), 1]]
    b1 = records[1]
    assert b1.bbox == [0.3125, round(10 / H, 6), 0.3125, round(20 / H, 6)]  # from the rectangle
    assert b1.source == {"file": "b.json", "id": "group_id 1"}
    assert records[2].keypoints[3] == [round(10 / W, 6), round(10 / H, 6), 2]


def test_image_path_is_relative_to_the_json(tmp_path):
    (tmp_path / "data/images").mkdir(parents=True)
    Image.new("RGB", (W, H)).save(tmp_path / "data/images/x.png")
    p = write(tmp_path / "data/labels", "x.json", [point("nose", 1, 2)], image="../images/x.png")
    _, header, records = run(tmp_path, [p], images=str(tmp_path / "data"))
    assert records[0].image == "images/x.png"
    assert header.images_root == (tmp_path / "data").as_posix()


def test_keypoints_option_selects_labels(tmp_path):
    d = tmp_path / "ann"
    write(d, "a.json", [point("nose", 8, 6), point("junk", 1, 1), point("tail", 2, 2)])
    _, header, records = run(tmp_path, [d], options=IngestOptions(keypoints=["tail", "nose", "paw"]))
    assert header.keypoints == ["tail", "nose", "paw"]
    assert records[0].keypoints == [[round(2 / W, 6), round(2 / H, 6), 2], [0.125, 0.125, 2], [0.0, 0.0, 0]]


def test_duplicate_label_in_one_instance(tmp_path):
    d = tmp_path / "ann"
    write(d, "a.json", [point("nose", 8, 6, 0), point("nose", 9, 6, 0), point("nose", 3, 3, 1)])
    result, _, records = run(tmp_path, [d])
    assert [r.instance for r in records] == ["1"]
    p = result.report.first[0]
    assert p.reason == "malformed_record"
    assert str(p) == f"{d / 'a.json'}: record shapes[1]: field 'nose': label 'nose' appears twice in instance group_id 0"


def test_stated_size_and_missing_image_path(tmp_path):
    d = tmp_path / "ann"
    write(d, "a.json", [point("nose", 8, 6)], size=(W, H))
    doc = json.loads((d / "a.json").read_text())
    doc["imageWidth"] = 100
    (d / "a.json").write_text(json.dumps(doc))
    write(d, "b.json", [point("nose", 8, 6)], image="")
    result, _, records = run(tmp_path, [d])
    assert len(records) == 1
    assert result.report.counts == {"size_mismatch": 1, "missing_field": 1}
    missing = [p for p in result.report.first if p.reason == "missing_field"][0]
    assert missing.location.file.endswith("b.json") and missing.location.field == "imagePath"


def test_malformed_json_is_located(tmp_path):
    d = tmp_path / "ann"
    write(d, "a.json", [point("nose", 8, 6)])
    (d / "b.json").write_text('{\n  "shapes": [\n    {"label": "nose",,}\n  ]\n}\n')
    with pytest.raises(AnnotationError) as e:
        run(tmp_path, [d])
    assert f"{d / 'b.json'}:3: invalid JSON" in str(e.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_other_json_in_folder_is_reported_named_file_fails(tmp_path):
    d = tmp_path / "ann"
    write(d, "a.json", [point("nose", 8, 6)])
    (d / "meta.json").write_text('{"created": "today"}')
    result, _, records = run(tmp_path, [d])
    assert len(records) == 1
    assert [p.reason for p in result.report.first] == ["malformed_record"]
    assert "meta.json" in str(result.report.first[0]) and "not a Labelme file" in str(result.report.first[0])
    with pytest.raises(AnnotationError, match="not a Labelme file"):
        run(tmp_path, [d / "meta.json"])


def test_bad_point(tmp_path):
    d = tmp_path / "ann"
    write(d, "a.json", [{"label": "nose", "points": [[1, "x"]], "group_id": None, "shape_type": "point"},
                        point("tail", 3, 3, 5)])
    result, _, records = run(tmp_path, [d])
    assert [r.instance for r in records] == ["5"]
    assert result.report.first[0].reason == "wrong_type"
    assert result.report.first[0].location.field == "nose"


def test_detect(tmp_path):
    d = tmp_path / "ann"
    p = write(d, "a.json", [point("nose", 8, 6)])
    cls = formats.get("labelme")
    assert cls.detect([d]) and cls.detect([p])
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert not cls.detect([coco])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not cls.detect([empty])


def test_two_rectangles_in_one_group_are_reported_and_neither_used(tmp_path):
    shapes = [{"label": "nose", "points": [[10, 10]], "group_id": 1, "shape_type": "point"},
              {"label": "cat", "points": [[0, 0], [20, 20]], "group_id": 1, "shape_type": "rectangle"},
              {"label": "cat", "points": [[5, 5], [30, 25]], "group_id": 1, "shape_type": "rectangle"}]
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(json.dumps({"version": "5.2.1", "flags": {}, "shapes": shapes,
                                                 "imagePath": "a.png", "imageData": None,
                                                 "imageHeight": 30, "imageWidth": 40}))
    result, _, records = ingest_records(tmp_path, [tmp_path / "a.json"])
    assert len(records) == 1 and result.report.counts == {"duplicate_box": 1}
    assert str(result.report.first[0]).endswith("a.json: record shapes[2]: field 'points': 2 rectangles in instance "
                                                "group_id 1: none is used, the box is derived from the keypoints "
                                                "(give each instance its own group_id)")
