"""The COCO reader (and shard, for manifest lines) parses with orjson when it is installed, falling back to json wherever the two
could differ: results and error messages must be exactly json's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kpconv.data import jsonparse
from kpconv.errors import AnnotationError
from kpconv.data.formats import coco
from kpconv.data.ingest import ingest
from kpconv.data.manifest import read_manifest


def _same(a, b) -> bool:
    """Equal, with the same types and reprs all the way down (2 != 2.0, nan == nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return repr(a) == repr(b)


@pytest.mark.parametrize("text", [
    b'{"a": [1, 2.0, -0, -0.0, 1e-7, 5e-324, 1E5, 9007199254740993, "\\u00e9\\n", null, true]}',
    b'[NaN, Infinity, -Infinity, 1e400]',
    b'[12345678901234567890123, 1]', b'[-9223372036854775809]', b'[0.1234567890123456789]',
    b'\xef\xbb\xbf{"a": 1}', b'["\\ud800"]', '{"a": "é"}'.encode("utf-16"), b'{"a": 1, "a": 2}',
])
def test_parse_gives_what_json_gives(text):
    assert _same(jsonparse.loads(text), json.loads(text))


@pytest.mark.parametrize("text", [b'{"a": [1,]}', b'[1] x', b'{"a" 1}', b'', b'\xff[1]'])
def test_parse_errors_are_json_errors(text):
    with pytest.raises(ValueError) as got:
        jsonparse.loads(text)
    with pytest.raises(ValueError) as want:
        json.loads(text)
    assert type(got.value) is type(want.value) and str(got.value) == str(want.value)


def test_long_digit_runs_are_found_across_slices():
    pad = b" " * 100
    assert jsonparse.has_long_digit_run(pad + b"1" * 19, step=16)
    assert jsonparse.has_long_digit_run(b"x" * 10 + b"1234567890123456789" + pad, step=16)
    assert not jsonparse.has_long_digit_run(b"x" * 10 + b"123456789012345678 1" + pad, step=16)
    assert not jsonparse.has_long_digit_run(b"")


def _coco(tmp_path: Path, keypoints, ann_id=10) -> Path:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    kp = ", ".join(map(str, keypoints))
    p = tmp_path / "ann.json"
    p.write_text('{"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}], '
                 f'"annotations": [{{"id": {ann_id}, "image_id": 1, "category_id": 1, "keypoints": [{kp}]}}, '
                 '{"id": 11, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 3, 5, 2]}], '
                 '"categories": [{"id": 1, "name": "p", "keypoints": ["a", "b"]}]}')
    return p


def test_nan_literal_is_a_bad_coordinate(tmp_path):
    p = _coco(tmp_path, ["NaN", 2, 2, 3, 4, 2])
    r = ingest([p], output=str(tmp_path / "m.jsonl"))
    assert r.written == 1 and r.report.counts["bad_coordinate"] == 1
    assert str(r.report.first[0]).endswith("keypoint 'a': expected finite x and y, got (nan, 2)")


def test_huge_integer_id_stays_an_integer(tmp_path):
    p = _coco(tmp_path, [1, 2, 2, 3, 4, 2], ann_id=123456789012345678901234567890)
    ingest([p], output=str(tmp_path / "m.jsonl"))
    _, records = read_manifest(str(tmp_path / "m.jsonl"))
    assert [r.source["id"] for r in records] == ["123456789012345678901234567890", "11"]


def test_invalid_json_message_is_jsons(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"images": [],\n "annotations": [1,,]}')
    with pytest.raises(AnnotationError) as e:
        coco._load(p)
    assert str(e.value) == f"{p}:2: invalid JSON: Expecting value (line 2, column 20)"


@pytest.mark.skipif(jsonparse._orjson is None, reason="orjson not installed")
def test_plain_files_are_parsed_by_orjson(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("json.loads used")
    monkeypatch.setattr(jsonparse.json, "loads", refuse)
    assert jsonparse.loads(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}


def test_invalid_json_late_in_the_annotations_fails_ingest_with_jsons_message(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    ann = '{"id": %d, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 3, 4, 2]}'
    text = ('{"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],\n"annotations": ['
            + ",\n".join([ann % i for i in range(50)] + ['{"id": 50,, "image_id": 1}']
                          + [ann % i for i in range(51, 99)])
            + '],\n"categories": [{"id": 1, "name": "p", "keypoints": ["a", "b"]}]}')
    p = tmp_path / "ann.json"
    p.write_text(text)
    with pytest.raises(json.JSONDecodeError) as want:
        json.loads(text)
    with pytest.raises(AnnotationError) as got:
        ingest([p], output=str(tmp_path / "m.jsonl"), fmt="coco")
    e = want.value
    assert str(got.value) == f"{p}:{e.lineno}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    assert not (tmp_path / "m.jsonl").exists()
