"""``kpconv inspect``: summary, --verify naming the first bad shard and record, --grid contact sheet."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from kpconv.cli import cli
from kpconv.drawing import LEFT, RIGHT
from kpconv.data.manifest import Header, Record, write_manifest
from kpconv.data.tfrecord import TFRecordWriter, read_records
from kpconv.data.images import ImageOptions
from kpconv.data.shard import ShardOptions, shard


def run(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


NAMES = ["nose", "left_eye", "right_eye", "tail"]


@pytest.fixture
def dataset(tmp_path):
    """10 grey images, 4 keypoints: nose always visible, left_eye visible in 6, occluded in 2, not
    labelled in 2; right_eye visible; tail not labelled in all but one."""
    img = tmp_path / "imgs"
    img.mkdir()
    recs = []
    for i in range(10):
        Image.new("RGB", (40, 30), (100, 100, 100)).save(img / f"{i}.png")
        left_v = 2 if i < 6 else 1 if i < 8 else 0
        kps = [[0.5, 0.5, 2], [0.25, 0.25, left_v] if left_v else [0, 0, 0], [0.75, 0.25, 2],
               [0.5, 0.9, 2] if i == 0 else [0, 0, 0]]
        recs.append(Record(f"{i}.png", 40, 30, kps, [0.2, 0.2, 0.6, 0.7], "0"))
    write_manifest(str(tmp_path / "m.jsonl"), Header(NAMES, [(0, 1), (0, 2), (0, 3)], [(1, 2)], str(img)), recs)
    out = tmp_path / "out"
    shard(str(tmp_path / "m.jsonl"), out, ShardOptions(image=ImageOptions(size=(40, 30)), num_shards=2, workers=1,
                                                        split={"train": 0.7, "val": 0.3}))
    return out


def test_summary(dataset):
    r = run("inspect", dataset)
    assert r.exit_code == 0
    info = json.loads((dataset / "dataset_info.json").read_text())
    lines = r.output.splitlines()
    assert "10 record(s), image 40x30 (stretch), crop none, compression none" in lines[0]
    for split, s in info["splits"].items():
        assert any(line.split()[:3] == [split, str(s["records"]), str(len(s["shards"]))] for line in lines)
    rates = {line.split()[0]: line.split()[1:4] for line in lines if line.startswith("  ") and "%" in line}
    assert rates["nose"] == ["100.0%", "0.0%", "0.0%"]
    assert rates["left_eye"] == ["60.0%", "20.0%", "20.0%"]
    assert rates["tail"] == ["10.0%", "0.0%", "90.0%"]
    assert "flip <-> right_eye" in next(line for line in lines if line.startswith("  left_eye"))


def test_verify_ok(dataset):
    r = run("inspect", dataset, "--verify")
    assert r.exit_code == 0 and "verify: 10 record(s) OK" in r.output


def _shard_file(out, split="train", i=0):
    info = json.loads((out / "dataset_info.json").read_text())
    return out / info["splits"][split]["shards"][i]["file"]


def test_verify_names_the_bad_record_on_a_crc_error(dataset):
    path = _shard_file(dataset)
    recs = list(read_records(str(path)))
    assert len(recs) >= 2
    raw = bytearray(path.read_bytes())
    first = 16 + len(recs[0])
    raw[first + 12 + len(recs[1]) // 2] ^= 0x40          # inside record 1's data
    path.write_bytes(bytes(raw))
    r = run("inspect", dataset, "--verify")
    assert r.exit_code == 1
    assert f"kpconv: error: {path.name}: record 1: data CRC mismatch" in r.output


def test_verify_names_a_record_whose_image_does_not_decode(dataset):
    from kpconv.data.records import decode_record, to_example

    path = _shard_file(dataset)
    recs = list(read_records(str(path)))
    r1 = decode_record(recs[-1], len(NAMES))
    bad = to_example(image=r1["image/encoded"][:40], image_format="jpeg", height=30, width=40,
                     source_path=r1["image/source_path"], original_height=30, original_width=40,
                     instance_id="0", bbox=r1["instance/bbox"],
                     keypoints=list(zip(r1["keypoints/x"], r1["keypoints/y"], r1["keypoints/visibility"])),
                     transform=r1["transform/stored_to_original"])
    with open(path, "wb") as f:   # CRCs are right, the image is cut short
        w = TFRecordWriter(f)
        for data in recs[:-1] + [bad]:
            w.write(data)
    r = run("inspect", dataset, "--verify")
    assert r.exit_code == 1
    assert f"{path.name}: record {len(recs) - 1}: image does not decode" in r.output


def test_verify_catches_a_changed_shard_and_a_missing_one(dataset):
    path = _shard_file(dataset, "val")
    recs = list(read_records(str(path)))
    with open(path, "wb") as f:   # valid records, but not the ones written
        w = TFRecordWriter(f)
        for data in recs + recs[:1]:
            w.write(data)
    r = run("inspect", dataset, "--verify")
    assert r.exit_code == 1 and f"{path.name}: holds {len(recs) + 1} record(s), dataset_info.json says {len(recs)}" in r.output
    path.unlink()
    r = run("inspect", dataset, "--verify")
    assert r.exit_code == 1 and f"{path.name}: shard file is missing" in r.output


def test_not_a_shard_directory(tmp_path):
    r = run("inspect", tmp_path)
    assert r.exit_code == 1 and "dataset_info.json: not found" in r.output


def test_grid_colours_left_and_right(dataset, tmp_path):
    sheet = tmp_path / "grid.png"
    r = run("inspect", dataset, "--grid", sheet, "--n", "3")
    assert r.exit_code == 0 and sheet.exists()
    im = np.asarray(Image.open(sheet).convert("RGB"))
    assert im.shape == (256 + 14, 3 * 256, 3)
    # first cell: the 40x30 image scaled to 256 wide; left_eye at (0.25, 0.25), right_eye at (0.75, 0.25)
    sx, sy = 256, 256 * 30 / 40
    assert tuple(im[int(0.25 * sy), int(0.25 * sx)]) == LEFT
    assert tuple(im[int(0.25 * sy), int(0.75 * sx)]) == RIGHT
