"""kpconv JSON / JSON Lines reader: the documented example, schema errors with JSON paths, header errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kpconv.data import formats
from kpconv.errors import AnnotationError
from kpconv.data.formats.base import IngestOptions
from kpconv.data.ingest import ingest
from kpconv.data.manifest import read_manifest

W, H = 64, 48

DOC = {
    "kpconv_annotations": 1,
    "keypoints": ["nose", "left_eye", "right_eye", "tail"],
    "skeleton": [["nose", "left_eye"], ["nose", "right_eye"]],
    "images": [
        {"file": "images/a.png", "width": W, "height": H, "group": "clip1", "split": "train",
         "instances": [
             {"id": "7", "bbox": [8, 6, 32, 24],
              "keypoints": {"nose": [32, 24, 2], "left_eye": [16, 12], "right_eye": [48, 12, 1], "tail": None}},
             {"keypoints": {"tail": [4, 4]}}]},
        {"file": "images/b.png", "instances": [{"keypoints": {"nose": [0, 48, 2]}}]},
    ],
}


def images(root: Path, *names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H)).save(root / n)


def run(tmp_path, sources, **kw):
    out = tmp_path / "out.jsonl"
    result = ingest([str(s) for s in sources], output=str(out), fmt=kw.pop("fmt", "kpconv-json"), **kw)
    header, records = read_manifest(str(out))
    return result, header, records


def as_lines(doc: dict) -> str:
    head = {k: v for k, v in doc.items() if k != "images"}
    return "\n".join(json.dumps(x) for x in [head, *doc["images"]]) + "\n"


def check_example(result, header, records):
    assert result.format == "kpconv-json"
    assert header.keypoints == ["nose", "left_eye", "right_eye", "tail"]
    assert header.skeleton == [(0, 1), (0, 2)]
    assert header.flip_pairs == [(1, 2)]  # inferred from the names: flip_pairs not given
    assert [(r.image, r.instance, r.group, r.split) for r in records] == [
        ("images/a.png", "7", "clip1", "train"), ("images/a.png", "0", "clip1", "train"),
        ("images/b.png", "0", None, None)]
    a = records[0]
    assert a.keypoints == [[0.5, 0.5, 2], [0.25, 0.25, 2], [0.75, 0.25, 1], [0.0, 0.0, 0]]
    assert a.bbox == [0.125, 0.125, 0.5, 0.5]
    assert records[2].keypoints[0] == [0.0, 1.0, 2]  # continuous convention: y = height is the bottom edge


def test_json_document(tmp_path):
    images(tmp_path, "images/a.png", "images/b.png")
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(DOC, indent=2))
    result, header, records = run(tmp_path, [p], fmt="auto")
    check_example(result, header, records)
    assert records[0].source == {"file": "ann.json", "id": "images[0].instances[0]"}


def test_json_lines(tmp_path):
    images(tmp_path, "images/a.png", "images/b.png")
    p = tmp_path / "ann.jsonl"
    p.write_text(as_lines(DOC))
    result, header, records = run(tmp_path, [p], fmt="auto")
    check_example(result, header, records)
    assert records[2].source == {"file": "ann.jsonl", "line": 3, "id": "instances[0]"}


def test_flip_pairs_given(tmp_path):
    images(tmp_path, "images/a.png", "images/b.png")
    doc = dict(DOC, flip_pairs=[])
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc))
    _, header, _ = run(tmp_path, [p])
    assert header.flip_pairs == []


@pytest.mark.parametrize("mutate, reason, message", [
    (lambda d: d["images"][1]["instances"][0]["keypoints"].update(nose=[1]), "wrong_type",
     "images[1].instances[0].keypoints.nose: expected [x, y] or [x, y, v] (v in 0, 1, 2) or null, got [1]"),
    (lambda d: d["images"][1]["instances"][0]["keypoints"].update(nose=[1, 2, 5]), "wrong_type",
     "images[1].instances[0].keypoints.nose: expected [x, y] or [x, y, v] (v in 0, 1, 2) or null, got [1, 2, 5]"),
    (lambda d: d["images"][1].pop("file"), "missing_field", "images[1].file: missing required field"),
    (lambda d: d["images"][1].update(width="64"), "wrong_type", 'images[1].width: expected a positive integer, got "64"'),
    (lambda d: d["images"][1]["instances"][0].update(bbox=[1, 2, 0, 4]), "wrong_type",
     "images[1].instances[0].bbox[2]: expected a positive number (w or h), got 0"),
    (lambda d: d["images"][1]["instances"][0].update(keypoint={}), "wrong_type",
     "images[1].instances[0]: unexpected field(s) 'keypoint' (extension fields must start with 'x-')"),
])
def test_bad_image_entry_is_skipped_with_its_path(tmp_path, mutate, reason, message):
    images(tmp_path, "images/a.png", "images/b.png")
    doc = json.loads(json.dumps(DOC))
    mutate(doc)
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(doc))
    result, _, records = run(tmp_path, [p])
    assert [r.image for r in records] == ["images/a.png", "images/a.png"]
    assert [(x.reason, str(x)) for x in result.report.first] == [(reason, f"{p}: record {message}")]


def test_bad_line_in_json_lines(tmp_path):
    images(tmp_path, "images/a.png", "images/b.png")
    lines = as_lines(DOC).splitlines()
    lines[2] = lines[2].replace('"nose"', '"nose": [1, 2], "x"', 1)[:-3]
    lines.insert(2, '{"file": "images/b.png", "instances": [{"keypoints": {"nose": [1, "y"]}}]}')
    p = tmp_path / "ann.jsonl"
    p.write_text("\n".join(lines) + "\n")
    result, _, records = run(tmp_path, [p])
    assert [r.image for r in records] == ["images/a.png", "images/a.png"]
    msgs = [str(x) for x in result.report.first]
    assert msgs[0] == (f"{p}:3: record instances[0].keypoints.nose: expected [x, y] or [x, y, v] (v in 0, 1, 2) "
                       'or null, got [1, "y"]')
    assert msgs[1].startswith(f"{p}:4: invalid JSON")


def test_nan_and_unknown_names_go_through_ingest(tmp_path):
    images(tmp_path, "images/a.png", "images/b.png")
    p = tmp_path / "ann.jsonl"
    head = json.dumps({"kpconv_annotations": 1, "keypoints": ["nose"]})
    p.write_text(head + '\n{"file": "images/a.png", "instances": [{"keypoints": {"nose": [NaN, 1]}}]}\n'
                 '{"file": "images/b.png", "instances": [{"keypoints": {"nose": [1, 1], "paw": [2, 2]}},'
                 ' {"keypoints": {"nose": [3, 3]}}]}\n')
    result, _, records = run(tmp_path, [p])
    # unnamed instances are numbered among the records written
    assert len(records) == 1 and records[0].instance == "0" and records[0].source["id"] == "instances[1]"
    assert result.report.counts == {"bad_coordinate": 1, "unknown_keypoint": 1}


def test_keypoints_option_subset(tmp_path):
    images(tmp_path, "images/a.png", "images/b.png")
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(DOC))
    result, header, records = run(tmp_path, [p], options=IngestOptions(keypoints=["right_eye", "left_eye"]))
    assert header.keypoints == ["right_eye", "left_eye"]
    assert header.skeleton == [] and header.flip_pairs == [(1, 0)]
    assert records[0].keypoints == [[0.75, 0.25, 1], [0.25, 0.25, 2]]
    assert result.report.counts == {"no_keypoints": 2}


@pytest.mark.parametrize("text, where", [
    ('{"kpconv_annotations": 2, "keypoints": ["a"], "images": []}', "kpconv_annotations: expected 1 (the format version), got 2"),
    ('{"kpconv_annotations": 1, "images": []}', "keypoints: missing required field"),
    ('{"kpconv_annotations": 1, "keypoints": ["a", "a"], "images": []}', "keypoints: expected a non-empty list"),
    ('{"kpconv_annotations": 1, "keypoints": ["a"], "skeleton": [["a", "b"]], "images": []}', "skeleton[0]: 'b' not in"),
    ('{"kpconv_annotations": 1, "keypoints": ["a"], "images": {}}', "images: expected a list"),
    ('{"kpconv_annotations": 1,\n "keypoints": ["a"],,\n "images": []}', ":2: invalid JSON"),
])
def test_bad_header_stops(tmp_path, text, where):
    p = tmp_path / "ann.json"
    p.write_text(text)
    with pytest.raises(AnnotationError) as e:
        run(tmp_path, [p])
    assert where in str(e.value)
    assert str(e.value).startswith(str(p))
    assert not (tmp_path / "out.jsonl").exists()


def test_detect(tmp_path):
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(DOC))
    q = tmp_path / "ann.jsonl"
    q.write_text(as_lines(DOC))
    cls = formats.get("kpconv-json")
    assert cls.detect([p]) and cls.detect([q]) and cls.detect([p, q])
    assert formats.detect([p]).name == "kpconv-json"
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert not cls.detect([coco]) and not cls.detect([tmp_path])


def test_several_files_must_agree(tmp_path):
    images(tmp_path, "images/a.png", "images/b.png")
    p = tmp_path / "a.json"
    p.write_text(json.dumps(dict(DOC, images=DOC["images"][:1])))
    q = tmp_path / "b.jsonl"
    q.write_text(as_lines(dict(DOC, images=DOC["images"][1:])))
    _, header, records = run(tmp_path, [p, q])
    assert header.source["files"] == ["a.json", "b.jsonl"]
    assert [r.source["file"] for r in records] == ["a.json", "a.json", "b.jsonl"]
    q.write_text(as_lines(dict(DOC, keypoints=["nose", "tail"], skeleton=[], images=[])))
    with pytest.raises(AnnotationError) as e:
        run(tmp_path, [p, q])
    assert str(e.value).startswith(f"{q}: field 'keypoints': differs from {p}")


WEIRD = [None, True, False, 0, -1, 1, 2, 3, 2.0, 0.5, float("nan"), "", "x", "2", [], [1], [1, 2], [1, 2, 2],
         [1, 2, 2.0], [1, 2, True], [1, 2, 3], [1, "2"], [1, 2, 0, 4], [0, 0, 1, 1], [1, 2, 3, 4, 5], {}, {"a": 1}]


def _mutations(obj, path=()):
    """Every (path, replacement) that puts a WEIRD value at a node of ``obj``, plus key removals/additions."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path + (k,), "drop"
            yield from _mutations(v, path + (k,))
        yield path + ("typo",), "add"
        yield path + ("x-ext",), "add"
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _mutations(v, path + (i,))
    for w in WEIRD:
        yield path, w


def _apply(obj, path, change):
    import copy

    obj = copy.deepcopy(obj)
    if not path:
        return change
    node = obj
    for p in path[:-1]:
        node = node[p]
    if change == "drop":
        del node[path[-1]]
    elif change == "add":
        node[path[-1]] = 1
    else:
        node[path[-1]] = change
    return obj


def test_quick_check_is_never_more_lenient_than_the_schema():
    from kpconv.data.formats.kpconv_json import _validators, quick_valid

    _, image_v = _validators()
    base = {"file": "a.png", "width": 4, "height": 3, "group": None, "split": "val",
            "instances": [{"id": "a", "bbox": [0, 0, 2, 2], "keypoints": {"nose": [1, 2], "tail": [1, 2, 1], "paw": None}},
                          {"id": 3, "keypoints": {}}]}
    assert quick_valid(base) and image_v.is_valid(base)
    checked, stricter = 0, []
    for path, change in _mutations(base):
        variant = _apply(base, path, change)
        valid = image_v.is_valid(variant)
        quick = quick_valid(variant)
        assert not (quick and not valid), (path, change, variant)
        checked += 1
        if quick != valid:
            stricter.append((path, change))
    assert checked > 500
    # the quick check is exact but for NaN box sizes, which the schema lets through (ingest then
    # reports the box and derives one from the keypoints)
    assert stricter == [(("instances", 0, "bbox", 2), WEIRD[10]), (("instances", 0, "bbox", 3), WEIRD[10])]


def test_keypoints_option_with_an_unknown_name(tmp_path):
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(DOC))
    with pytest.raises(AnnotationError, match=r"ann.json: field 'keypoints': --keypoints: 'paw' not among"):
        run(tmp_path, [p], options=IngestOptions(keypoints=["nose", "paw"]))
