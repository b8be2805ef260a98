"""The manifest reader/writer and atomic output."""
import json
import os
import random
import stat

import numpy as np
import pytest

from kpconv.errors import ManifestError
from kpconv.data.manifest import (Header, Record, RecordBatch, atomic_output, dumps_record, dumps_records, read_manifest,
                             write_manifest)


def _record(**kw):
    d = dict(image="a.png", width=4, height=2, keypoints=[[0.5, 0.25, 2], [0.0, 0.0, 0]],
             bbox=[0.5, 0.25, 0.0, 0.0], instance="0")
    d.update(kw)
    return Record(**d)


def test_round_trip(tmp_path):
    header = Header(["left_eye", "right_eye"], [(0, 1)], [(0, 1)], "/data", {"format": "csv"})
    path = tmp_path / "m.jsonl"
    assert write_manifest(str(path), header, [_record(), _record(instance="1", group="v1", split="val")]) == 2
    h, recs = read_manifest(str(path))
    assert h == header
    assert [r.key for r in recs] == ["a.png#0", "a.png#1"]
    assert recs[1].group == "v1" and recs[1].split == "val"


def test_atomic_output_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(str(tmp_path / "out.jsonl")) as f:
            f.write("x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == 0o644


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(str(tmp_path / "out.jsonl")) as f:
            f.write("half\n")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("line, field", [
    ('{"image":"a.png","width":4,"height":2,"keypoints":[[0.5,0.2,3],[0,0,0]],"bbox":[0,0,1,1],"instance":"0"}',
     "keypoints"),
    ('{"image":"a.png","width":0,"height":2,"keypoints":[[0.5,0.2,2],[0,0,0]],"bbox":[0,0,1,1],"instance":"0"}',
     "width"),
    ('{"image":"a.png","width":4,"height":2,"keypoints":[[0.5,0.2,2]],"bbox":[0,0,1,1],"instance":"0"}',
     "keypoints"),
    ('{"width":4,"height":2,"keypoints":[[0.5,0.2,2],[0,0,0]],"bbox":[0,0,1,1],"instance":"0"}', "image"),
])
def test_bad_record_line_is_located(tmp_path, line, field):
    path = tmp_path / "m.jsonl"
    path.write_text('{"kpconv_manifest":1,"keypoints":["a","b"],"skeleton":[],"flip_pairs":[],'
                    '"images_root":"/x","source":{}}\n' + line + "\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(str(path))
    assert str(e.value).startswith(f"{path}:2: field '{field}'")


def test_atomic_output_to_a_fifo_writes_through_and_keeps_the_fifo(tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    with atomic_output(str(fifo)) as f:
        f.write("line\n")
    reader.join(10)
    assert got == [b"line\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def _reference_line(r: Record) -> bytes:
    """What the manifest format says a line is: json.dumps of the record, coordinates round(c, 6)."""
    d = r.to_json()
    d["keypoints"] = [[round(float(x), 6), round(float(y), 6), int(v)] for x, y, v in r.keypoints]
    d["bbox"] = [round(float(c), 6) for c in r.bbox]
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def test_serializer_writes_what_json_writes_for_awkward_values():
    """dumps_records rounds with numpy and writes with orjson where that gives json's bytes: check it
    against json.dumps + round() on values near rounding ties, below 1e-4, outside 0..1, and strings
    json and orjson escape differently or not at all."""
    rng = random.Random(0)
    awkward = [0.0, -0.0, 1.0, 0.5, 5e-05, 1e-06, 4e-07, 9.95e-05, 0.0001, 0.0000995, 1e-4 - 1e-12,
               0.1234565, 0.1234575, 0.0000005, 0.9999995, 0.3, 2 / 3, 1e-300, 1.5, -0.25, 7, 1e16, 123456.5]
    texts = ["a.png", "é/日本.png", 'q"uote\\back', "ctl\x01\x1f\x7f", "line\u2028sep", "emoji 😀"]
    recs = []
    for i in range(3000):
        pick = lambda: rng.choice(awkward) if rng.random() < 0.2 else rng.random()   # noqa: E731
        recs.append(Record(rng.choice(texts), 64, 48, [[pick(), pick(), rng.choice([0, 1, 2])] for _ in range(3)],
                           [pick() for _ in range(4)], rng.choice(texts), rng.choice([None, "g", "日"]),
                           rng.choice([None, "val"]), rng.choice([{}, {"file": "a.json", "id": "é"}, {"line": i}])))
    want = b"".join(map(_reference_line, recs))
    assert dumps_records(recs) == want
    assert dumps_record(recs[7]) == _reference_line(recs[7])
    # ingest's columns (lines not in the fast form written from batch.record)
    batch = RecordBatch(*([getattr(r, f) for r in recs] for f in ("image", "width", "height")),
                        np.array([r.keypoints for r in recs], float), np.array([r.bbox for r in recs], float),
                        *([getattr(r, f) for r in recs] for f in ("instance", "group", "split", "source", "category")))
    assert len(batch) == len(recs) and dumps_records(batch) == want


def test_serializer_writes_records_that_fill_no_array():
    recs = [_record(), _record(keypoints=[[0.5, 0.25, 2]]), _record(bbox=[0.5, 0.25, 0.0])]
    assert dumps_records(recs) == b"".join(map(_reference_line, recs))
    with pytest.raises(ValueError):     # as json's reference: a point of 4 values beside one of 2
        dumps_records([_record(keypoints=[[0.5, 0.25, 2, 1], [0.0, 0.0]])])


def test_serializer_refuses_nan():
    with pytest.raises(ValueError):
        dumps_record(_record(keypoints=[[float("nan"), 0.25, 2], [0.0, 0.0, 0]]))
