"""``dataset_info.json`` has one owner, :class:`kpconv.data.dataset_info.DatasetInfo`: shard writes it, inspect,
the pipeline and train read it; bad files get an error at the file and the field."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from kpconv.data.dataset_info import DatasetInfo, read_dataset_info
from kpconv.errors import DatasetInfoError
from kpconv.data.images import ImageOptions
from kpconv.data.manifest import Header, Record, write_manifest
from kpconv.data.shard import ShardOptions, shard


@pytest.fixture
def out(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    recs = []
    for i in range(6):
        Image.new("RGB", (40, 30), (90, 90, 90)).save(img / f"{i}.png")
        recs.append(Record(f"{i}.png", 40, 30, [[0.25, 0.5, 2], [0.75, 0.5, 1]], [0.2, 0.2, 0.6, 0.6], "0"))
    write_manifest(str(tmp_path / "m.jsonl"), Header(["left_paw", "right_paw"], [(0, 1)], [(0, 1)], str(img)), recs)
    shard(str(tmp_path / "m.jsonl"), tmp_path / "out", ShardOptions(image=ImageOptions(size=(40, 30)), workers=1,
                                                                     split={"train": 0.5, "val": 0.5}))
    return tmp_path / "out"


def test_reads_what_shard_writes_and_writes_the_same_bytes(out):
    info = DatasetInfo.read(out)
    assert info.keypoint_names == ["left_paw", "right_paw"] and info.num_keypoints == 2
    assert info.skeleton == [(0, 1)] and info.flip_pairs == [(0, 1)] and info.flip_permutation() == [1, 0]
    assert (info.image_width, info.image_height) == (40, 30) and info.compression is None
    assert sum(s.num_records for s in info.splits.values()) == 6
    assert info.files("train") == [str(out / f) for f in info.split("train").files]
    assert info.preprocessing()["size"] == [40, 30]
    assert info.to_bytes() == (out / "dataset_info.json").read_bytes()


def _broken(out, tmp_path, change):
    raw = json.loads((out / "dataset_info.json").read_text())
    change(raw)
    bad = tmp_path / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "dataset_info.json").write_text(json.dumps(raw))
    return bad


@pytest.mark.parametrize("change, field, message", [
    (lambda d: d.pop("keypoints"), None, "'keypoints' is a required property"),
    (lambda d: d["splits"]["train"].update(records="7"), "splits.train.records", "is not of type 'integer'"),
    (lambda d: d.update(keypoint_names=d.pop("keypoints")), None, "'keypoints' is a required property"),
    (lambda d: d.update(compression="zip"), "compression", "is not one of"),
    (lambda d: d.update(flip_pairs=[[0, 5]]), "flip_pairs", "refers to keypoint 5; there are 2"),
    (lambda d: d.update(spec_version=99), "spec_version", "record spec version 99, this kpconv reads version 2"),
])
def test_bad_files_are_located(out, tmp_path, change, field, message):
    bad = _broken(out, tmp_path, change)
    with pytest.raises(DatasetInfoError) as e:
        DatasetInfo.read(bad)
    assert e.value.location.file == str(bad / "dataset_info.json")
    assert e.value.location.field == field
    assert message in e.value.message


def test_missing_file_and_missing_size(out, tmp_path):
    with pytest.raises(DatasetInfoError, match="dataset_info.json: not found"):
        DatasetInfo.read(tmp_path)
    bad = _broken(out, tmp_path, lambda d: d["image"].update(size=None))
    assert DatasetInfo.read(bad).image_size is None      # inspect reads it ...
    with pytest.raises(DatasetInfoError, match="needs one image size"):
        read_dataset_info(bad)                            # ... training needs one size
