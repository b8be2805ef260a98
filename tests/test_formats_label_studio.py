"""Label Studio reader: JSON export (percent coordinates, parentID instances, annotation choice,
image path mapping) and JSON-MIN (one instance per task, ambiguity reported)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import FIXTURES, ingest_records
from kpconv.data import formats
from kpconv.errors import AnnotationError
from kpconv.data.formats.label_studio import image_path
from kpconv.data.ingest import ingest

W, H = 40, 30


def kp(label, x, y, parent=None, **kw):
    r = {"original_width": W, "original_height": H, "image_rotation": 0,
         "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}, "id": f"k{label}{x}",
         "from_name": "kp", "to_name": "img", "type": "keypointlabels", **kw}
    if parent:
        r["parentID"] = parent
    return r


def box(id_, x, y, w, h):
    return {"original_width": W, "original_height": H, "value": {"x": x, "y": y, "width": w, "height": h,
                                                                 "rotation": 0, "rectanglelabels": ["cat"]},
            "id": id_, "from_name": "box", "to_name": "img", "type": "rectanglelabels"}


def task(results, image="/data/upload/1/0a1b2c3d-a.png", tid=1, **ann):
    return {"id": tid, "data": {"image": image},
            "annotations": [{"id": 10 + tid, "result": results, "was_cancelled": False, "ground_truth": False, **ann}]}


def write(tmp_path: Path, doc, images=("a.png",)) -> Path:
    for name in images:
        Image.new("RGB", (W, H)).save(tmp_path / name)
    p = tmp_path / "export.json"
    p.write_text(json.dumps(doc))
    return p


run = ingest_records


def test_detect():
    src = sorted((FIXTURES / "label-studio").glob("*.json"))
    assert formats.detect(src).name == "label-studio"
    assert formats.detect(sorted((FIXTURES / "label-studio-min").glob("*.json"))).name == "label-studio"
    assert not formats.get("label-studio").detect([FIXTURES / "coco" / "annotations.json"])


def test_percent_coordinates_and_parent_boxes(tmp_path):
    doc = [task([box("b1", 10, 20, 50, 40), kp("nose", 25, 50, "b1"), kp("tail", 50, 30, "b1"),
                 box("b2", 60, 0, 20, 20), kp("nose", 75, 10, "b2"),
                 kp("nose", 5, 5)])]
    result, header, records = run(tmp_path, [write(tmp_path, doc)])
    assert header.keypoints == ["nose", "tail"] and header.source["export"] == "json"
    assert [r.keypoints for r in records] == [[[0.25, 0.5, 2], [0.5, 0.3, 2]], [[0.75, 0.1, 2], [0.0, 0.0, 0]],
                                              [[0.05, 0.05, 2], [0.0, 0.0, 0]]]
    assert records[0].bbox == [0.1, 0.2, 0.5, 0.4]          # the parent rectangle
    assert records[0].image == "a.png"                      # upload prefix dropped: only a.png exists
    assert records[0].source == {"file": "export.json", "id": "task 1 annotation 11 box b1"}
    assert not result.report.counts


def test_ground_truth_then_first_not_cancelled(tmp_path):
    t = task([kp("nose", 10, 10)])
    t["annotations"] = [{"id": 1, "result": [kp("nose", 20, 20)], "was_cancelled": True},
                        {"id": 2, "result": [kp("nose", 30, 30)]},
                        {"id": 3, "result": [kp("nose", 40, 40)], "ground_truth": True}]
    result, _, records = run(tmp_path, [write(tmp_path, [t])])
    assert records[0].keypoints[0] == [0.4, 0.4, 2]
    assert result.report.counts == {"other_annotation": 1}      # annotation 2 not read: counted and located
    assert str(result.report.first[0]).endswith(
        "export.json: record task 1: field 'annotations': 1 other annotation(s) with keypoints not read (ids 2): of "
        "several annotators' annotations of a task, one is read, the ground truth one (annotation 3); mark the one "
        "to read as ground truth in Label Studio")
    t["annotations"].pop()
    result, _, records = run(tmp_path, [write(tmp_path, [t])])
    assert records[0].keypoints[0] == [0.3, 0.3, 2] and not result.report.counts    # (1 was cancelled)


@pytest.mark.parametrize("url, files, rel", [
    ("/data/upload/3/0a1b2c3d-img 1.png", ["img 1.png"], "img 1.png"),
    ("/data/upload/3/0a1b2c3d-img.png", ["0a1b2c3d-img.png"], "0a1b2c3d-img.png"),
    ("/data/local-files/?d=frames/x%20y.png", [], "frames/x y.png"),
    ("https://bucket.example.com/data/cats/c.jpg", ["c.jpg"], "c.jpg"),
    ("https://bucket.example.com/data/cats/c.jpg", [], "data/cats/c.jpg"),
    ("photos/d.png", [], "photos/d.png"),
])
def test_image_paths(tmp_path, url, files, rel):
    for f in files:
        (tmp_path / f).write_bytes(b"")
    assert image_path(url, tmp_path) == rel


def test_bad_values_are_located(tmp_path):
    doc = [task([kp("nose", "abc", 10)], tid=1), task([kp("nose", 10, 10), kp("nose", 20, 20)], tid=2),
           task([kp("nose", 10, 10)], tid=3), {"id": 4, "data": {}, "annotations": []}]
    result, _, records = run(tmp_path, [write(tmp_path, doc)])
    assert len(records) == 1
    assert [str(p).replace(f"{tmp_path}/", "") for p in result.report.first] == [
        "export.json: record task 1 annotation 11: field 'nose': keypoint 'nose': expected numbers x and y "
        "(percent), got 'abc', 10",
        "export.json: record task 2 annotation 12: field 'nose': keypoint 'nose' appears twice in one instance",
        "export.json: record task 4: field 'image': task without an image path (expected data.image)"]


def test_json_min(tmp_path):
    result, header, records = run(tmp_path, sorted((FIXTURES / "label-studio-min").glob("*.json")))
    assert header.source["export"] == "min" and len(records) == 3
    assert result.report.counts == {"malformed_record": 2}    # img001 and img004 have two animals
    assert "keypoint 'nose' appears twice in this task; JSON-MIN has no parentID" in str(result.report.first[0])


def test_not_an_export(tmp_path):
    p = write(tmp_path, [{"id": 1, "data": {"image": "a.png"}, "annotations": []}])
    with pytest.raises(AnnotationError, match="expected a Label Studio JSON export"):
        ingest([p], output=str(tmp_path / "o.jsonl"), fmt="label-studio")


def test_json_min_single_result_is_not_wrapped_in_a_list(tmp_path):
    """JSON-MIN unwraps a field with a single result: {"kp": {...}} instead of [{...}]."""
    doc = [{"image": "/data/upload/1/0a1b2c3d-a.png", "id": 7,
            "kp": {"x": 50, "y": 50, "width": 0.5, "keypointlabels": ["nose"], "original_width": W,
                   "original_height": H}, "annotator": "a@b.c", "annotation_id": 3}]
    result, header, records = run(tmp_path, [write(tmp_path, doc)])
    assert header.keypoints == ["nose"] and records[0].keypoints == [[0.5, 0.5, 2]]
