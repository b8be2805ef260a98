"""The shipped JSON Schemas: valid Draft 2020-12, in step with what kpconv writes and reads."""
from __future__ import annotations

import copy
import json
import re
from importlib.resources import files

import jsonschema
import pytest

from conftest import FIXTURES, REPO
from kpconv.errors import ManifestError
from kpconv.data.ingest import ingest
from kpconv.data.manifest import Header, Record

SCHEMAS = ["manifest.schema.json", "kpconv-annotations.schema.json", "dataset-info.schema.json"]


def load(name: str) -> dict:
    return json.loads(files("kpconv").joinpath("schemas", name).read_text(encoding="utf-8"))


def part(schema: dict, name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": schema["$defs"]})


def manifest_errors(lines):
    schema = load("manifest.schema.json")
    header_v, record_v, whole = part(schema, "header"), part(schema, "record"), jsonschema.Draft202012Validator(schema)
    errors = []
    for i, line in enumerate(lines):
        obj = json.loads(line)
        for e in (header_v if i == 0 else record_v).iter_errors(obj):
            errors.append(f"line {i + 1}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
        errors.extend(f"line {i + 1}: {e.message}" for e in whole.iter_errors(obj))
    return errors


@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_is_valid_draft_2020_12(name):
    schema = load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    # the documented home (schemas/ at the top) is the shipped file
    assert json.loads((REPO / "schemas" / name).read_text(encoding="utf-8")) == schema


MY_FIXTURES = {"coco": ["coco/annotations.json"], "csv": ["csv/labels.csv"], "dlc": ["dlc"], "labelme": ["labelme"],
               "yolo": ["yolo"], "kpconv-json": ["kpconv-json/annotations.jsonl"]}


@pytest.mark.parametrize("fmt", list(MY_FIXTURES))
def test_fresh_manifests_validate(fmt, tmp_path):
    sources = [FIXTURES / s for s in MY_FIXTURES[fmt]]
    out = tmp_path / "m.jsonl"
    ingest(sources, output=str(out), fmt=fmt)
    assert manifest_errors(out.read_text(encoding="utf-8").splitlines()) == []


GOOD_RECORD = {"image": "a.png", "width": 4, "height": 2, "keypoints": [[0.5, 0.25, 2], [0, 0, 0]],
               "bbox": [0.1, 0.1, 0.5, 0.5], "instance": "0", "group": None, "split": "train",
               "source": {"file": "x.json", "id": "3"}}


@pytest.mark.parametrize("mutate", [
    lambda r: r["keypoints"][1].__setitem__(0, 0.3),   # not labelled but x != 0
    lambda r: r["keypoints"][0].__setitem__(0, 1.5),   # outside 0..1
    lambda r: r["keypoints"][0].__setitem__(2, 3),     # visibility
    lambda r: r["keypoints"].__setitem__(0, [0.5, 0.5]),
    lambda r: r.__setitem__("width", 0),
    lambda r: r.__setitem__("bbox", [0, 0, 1]),
    lambda r: r.__setitem__("instance", 0),
    lambda r: r.pop("image"),
    lambda r: r.__setitem__("extra", 1),
], ids=["unlabelled-nonzero", "outside", "visibility", "two-values", "width", "bbox", "instance-int",
        "no-image", "extra-field"])
def test_bad_records_fail_the_schema(mutate):
    schema = load("manifest.schema.json")
    assert list(part(schema, "record").iter_errors(GOOD_RECORD)) == []
    bad = copy.deepcopy(GOOD_RECORD)
    mutate(bad)
    assert list(part(schema, "record").iter_errors(bad)), bad


@pytest.mark.parametrize("mutate", [
    lambda r: r["keypoints"][0].__setitem__(2, 3),
    lambda r: r["keypoints"].__setitem__(0, [0.5, 0.5]),
    lambda r: r.__setitem__("width", 0),
    lambda r: r.__setitem__("bbox", [0, 0, 1]),
    lambda r: r.__setitem__("instance", 0),
    lambda r: r.pop("image"),
])
def test_schema_and_reader_agree_on_bad_records(mutate):
    """What the manifest reader rejects, the schema rejects too."""
    bad = copy.deepcopy(GOOD_RECORD)
    mutate(bad)
    with pytest.raises(ManifestError):
        Record.from_json(bad, 2)
    assert list(part(load("manifest.schema.json"), "record").iter_errors(bad))


def test_written_header_and_record_validate():
    header = Header(["left_eye", "right_eye"], [(0, 1)], [(0, 1)], "/data", {"format": "csv", "files": ["a.csv"]})
    record = Record(**{k: v for k, v in GOOD_RECORD.items()})
    lines = [json.dumps(header.to_json()), json.dumps(record.to_json())]
    assert manifest_errors(lines) == []


def test_fixture_kpconv_json_validates():
    doc_path = FIXTURES / "kpconv-json" / "annotations.json"
    lines_path = FIXTURES / "kpconv-json" / "annotations.jsonl"
    schema = load("kpconv-annotations.schema.json")
    v = jsonschema.Draft202012Validator(schema)
    assert list(v.iter_errors(json.loads(doc_path.read_text(encoding="utf-8")))) == []
    head, *rest = lines_path.read_text(encoding="utf-8").splitlines()
    assert list(v.iter_errors(json.loads(head))) == []
    image_v = part(schema, "image")
    for line in rest:
        assert list(image_v.iter_errors(json.loads(line))) == []


def readme_example() -> str:
    text = (REPO / "docs" / "formats" / "kpconv-json.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- kpconv-json example -->\s*```json\n(.*?)```", text, re.S)
    assert m, "docs/formats/kpconv-json.md lost its kpconv JSON example"
    return m.group(1)


def test_docs_example_validates_and_ingests(tmp_path):
    from PIL import Image

    doc = json.loads(readme_example())
    assert list(jsonschema.Draft202012Validator(load("kpconv-annotations.schema.json")).iter_errors(doc)) == []
    for im in doc["images"]:
        p = tmp_path / im["file"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (im.get("width", 64), im.get("height", 48))).save(p)
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    out = tmp_path / "m.jsonl"
    result = ingest([tmp_path / "annotations.json"], output=str(out))
    assert result.format == "kpconv-json" and result.written >= 1
    assert manifest_errors(out.read_text(encoding="utf-8").splitlines()) == []


@pytest.mark.parametrize("bad", [
    {"kpconv_annotations": 1, "keypoints": []},
    {"kpconv_annotations": 1, "keypoints": ["a"], "images": [{"file": "a.png"}]},
    {"kpconv_annotations": 1, "keypoints": ["a"], "images": [{"file": "a.png", "instances": [
        {"keypoints": {"a": [1, 2, 3]}}]}]},
    {"kpconv_annotations": 1, "keypoints": ["a"], "typo": 1},
])
def test_bad_annotations_fail_the_schema(bad):
    assert list(jsonschema.Draft202012Validator(load("kpconv-annotations.schema.json")).iter_errors(bad))
