"""``kpconv shard``: determinism, splits, bad images, output safety, resume, pipes, TensorFlow reading."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import FIXTURES, REPO
from kpconv.cli import cli
from kpconv.errors import NothingToWrite, ShardError
from kpconv.data.images import ImageOptions
from kpconv.data.manifest import Header, Record, read_manifest, write_manifest
from kpconv.data.shard import ShardOptions, parse_bytes, parse_image_size, parse_split, shard, split_of
from test_shard_helpers import dump, records, shard_bytes, synth_manifest

KPCONV = str(Path(sys.executable).parent / "kpconv")


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """12 images of 160x120, two figures each (24 records)."""
    return synth_manifest(tmp_path_factory.mktemp("synth"), n_images=12, size=(160, 120), instances=2)


# ------------------------------------------------------------------------------------ options
def test_option_parsers():
    assert parse_image_size("224") == (224, 224)
    assert parse_image_size("320x240") == (320, 240)
    assert parse_image_size("None") is None
    assert parse_split("a=0.5,b=0.25,c-1=0.25") == {"a": 0.5, "b": 0.25, "c-1": 0.25}
    assert parse_bytes("64MB") == 64_000_000 and parse_bytes("1KiB") == 1024 and parse_bytes("500") == 500
    for bad, fn in (("0", parse_image_size), ("22x", parse_image_size), ("a=0.5,b=0.4", parse_split),
                    ("a/b=1", parse_split), ("a=1,a=0", parse_split), ("12XB", parse_bytes), ("0MB", parse_bytes)):
        with pytest.raises(ValueError):
            fn(bad)


@pytest.mark.parametrize("args,message", [
    (["--image-size", "abc"], "Invalid value for '--image-size'"),
    (["--split", "train=0.9,val=0.2"], "must sum to 1"),
    (["--crop-pad", "-1"], "--crop-pad"),
    (["--shard-size", "1MB", "--num-shards", "2"], "not both"),
    (["--overwrite", "--resume"], "not both"),
    (["--workers", "-1"], "--workers"),
])
def test_bad_options_exit_2(synth, tmp_path, args, message):
    r = run("shard", synth, "-o", tmp_path / "out", *args)
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- determinism
def test_workers_give_identical_bytes(synth, tmp_path, monkeypatch):
    import kpconv.data.workers

    base = ["shard", synth, "--image-size", "96x64", "--resize", "pad", "--num-shards", "3"]
    assert run(*base, "-o", tmp_path / "w1", "--workers", "1").exit_code == 0
    assert run(*base, "-o", tmp_path / "w3", "--workers", "3").exit_code == 0
    monkeypatch.setattr(kpconv.data.workers, "can_fork", lambda: False)  # a fork server, as when TF is loaded
    assert run(*base, "-o", tmp_path / "w2", "--workers", "2").exit_code == 0
    one, three = shard_bytes(tmp_path / "w1"), shard_bytes(tmp_path / "w3")
    assert one == three == shard_bytes(tmp_path / "w2")
    info = json.loads((tmp_path / "w1" / "dataset_info.json").read_text())
    assert info["records"] == 24
    assert sum(".tfrecord-" in n for n in one) == sum(min(3, s["records"]) for s in info["splits"].values()) >= 7
    counts = [e["records"] for e in info["splits"]["train"]["shards"]]
    assert max(counts) - min(counts) <= 1                  # balanced
    # the seed changes the split and order, so the bytes
    assert run(*base, "-o", tmp_path / "s1", "--seed", "1").exit_code == 0
    assert shard_bytes(tmp_path / "s1") != one


def test_records_follow_the_manifest(synth, tmp_path):
    """Every manifest record is in exactly one shard, with its keypoints moved to the stored image."""
    assert run("shard", synth, "-o", tmp_path / "out", "--image-size", "80x60", "--workers", "2").exit_code == 0
    header, recs = read_manifest(str(synth))
    by_key = {r.key: r for r in recs}
    seen = set()
    for split, _, r in records(tmp_path / "out"):
        key = f"{r['image/source_path']}#{r['instance/id']}"
        assert key not in seen
        seen.add(key)
        m = by_key[key]
        assert (r["image/width"], r["image/height"]) == (80, 60)
        assert (r["image/original_width"], r["image/original_height"]) == (m.width, m.height)
        a, b, c, d, e, f = r["transform/stored_to_original"]
        for (x, y, v), (mx, my, mv) in zip(zip(r["keypoints/x"], r["keypoints/y"], r["keypoints/visibility"]),
                                           m.keypoints):
            assert v == mv
            if v:   # stored -> original pixels through the transform gives the manifest's point
                assert a * x * 80 + c == pytest.approx(mx * m.width, abs=1e-3)
                assert e * y * 60 + f == pytest.approx(my * m.height, abs=1e-3)
    assert seen == set(by_key)


@pytest.mark.parametrize("crop", ["none", "bbox"])
def test_records_know_every_instance_of_their_image(synth, tmp_path, crop):
    """Record spec 2: image/instances/* hold the centre and box of each instance of the source image (in
    manifest order), instance/index the record's own; dataset_info.json says the most per image."""
    from kpconv.data.shard.writer import instance_center

    assert run("shard", synth, "-o", tmp_path / "out", "--image-size", "none", "--crop", crop).exit_code == 0
    header, recs = read_manifest(str(synth))
    by_image = {}
    for m in recs:
        by_image.setdefault(m.image, []).append(m)
    assert json.loads((tmp_path / "out" / "dataset_info.json").read_text())["instances"] == {"max_per_image": 2}
    for split, _, r in records(tmp_path / "out"):
        sibs = by_image[r["image/source_path"]]
        assert len(r["image/instances/center"]) == 2 * len(sibs) and len(r["image/instances/bbox"]) == 4 * len(sibs)
        assert sibs[r["instance/index"]].instance == r["instance/id"]
        k = len(r["keypoints/x"])
        own = r["image/instances/keypoints"][3 * k * r["instance/index"]:3 * k * (r["instance/index"] + 1)]
        assert own == pytest.approx([v for p in zip(r["keypoints/x"], r["keypoints/y"], r["keypoints/visibility"])
                                     for v in p])
        a, _, c, _, e, f = r["transform/stored_to_original"]
        w, h = r["image/width"], r["image/height"]
        for i, m in enumerate(sibs):
            cx, cy = instance_center(m)
            x, y = r["image/instances/center"][2 * i:2 * i + 2]
            assert a * x * w + c == pytest.approx(cx * m.width, abs=1e-3)
            assert e * y * h + f == pytest.approx(cy * m.height, abs=1e-3)
            bx, by, bw, bh = r["image/instances/bbox"][4 * i:4 * i + 4]
            assert a * bw * w == pytest.approx(m.bbox[2] * m.width, abs=1e-3)
            assert a * bx * w + c == pytest.approx(m.bbox[0] * m.width, abs=1e-3)



def test_splits_keep_images_and_groups_together(tmp_path):
    """All instances of one image, and all images of one group, land in the same split."""
    img = tmp_path / "imgs"
    img.mkdir()
    recs = []
    for i in range(60):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(img / f"{i}.png")
        for inst in range(3):
            recs.append(Record(f"{i}.png", 8, 8, [[0.5, 0.5, 2]], [0.1, 0.1, 0.8, 0.8], str(inst),
                               group=f"video{i // 6}" if i < 30 else None))
    write_manifest(str(tmp_path / "m.jsonl"), Header(["pt"], images_root=str(img)), recs)
    result = shard(str(tmp_path / "m.jsonl"), tmp_path / "out",
                   ShardOptions(image=ImageOptions(size=None), split={"train": 0.5, "val": 0.3, "test": 0.2}, workers=1))
    where = {}
    for split, _, r in records(tmp_path / "out"):
        where.setdefault(r["image/source_path"], set()).add(split)
    assert all(len(s) == 1 for s in where.values()) and len(where) == 60
    for v in range(5):
        assert len({next(iter(where[f"{i}.png"])) for i in range(6 * v, 6 * v + 6)}) == 1
    assert set(result.info["splits"]) == {"train", "val", "test"}
    assert split_of("video1", {"train": 0.5, "val": 0.3, "test": 0.2}, 0) == next(iter(where["6.png"]))


def test_source_split_is_kept_unless_overridden(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    recs = []
    for i in range(20):
        Image.new("RGB", (8, 8)).save(img / f"{i}.png")
        recs.append(Record(f"{i}.png", 8, 8, [[0.5, 0.5, 2]], [0, 0, 1, 1], "0", split="train2017" if i < 15 else "val2017"))
    write_manifest(str(tmp_path / "m.jsonl"), Header(["pt"], images_root=str(img)), recs)
    info = shard(str(tmp_path / "m.jsonl"), tmp_path / "a", ShardOptions(workers=1)).info
    assert {k: v["records"] for k, v in info["splits"].items()} == {"train2017": 15, "val2017": 5}
    assert info["options"]["split_from"] == "source"
    info = shard(str(tmp_path / "m.jsonl"), tmp_path / "b", ShardOptions(workers=1, split={"x": 0.5, "y": 0.5})).info
    assert set(info["splits"]) == {"x", "y"} and info["options"]["split_from"] == "hash"


def test_default_shard_count():
    from kpconv.data.shard import shard_count

    default = ShardOptions()
    assert shard_count(50, 1e6, default) == 1
    assert shard_count(450, 1e6, default) == 4            # one per 100 records ...
    assert shard_count(5000, 1e6, default) == 8           # ... up to 8
    assert shard_count(5000, 1e9, default) == 16          # then by size: 64 MB each
    assert shard_count(5000, 1e6, ShardOptions(shard_size=10 ** 6)) == 1   # an explicit size is followed
    assert shard_count(3, 1e9, ShardOptions(num_shards=8)) == 3


def test_shard_count_from_size(synth, tmp_path):
    # 24 records of 64x64 estimated at 0.5 byte per pixel (2 KB each): 4KB aims at 2 records a shard
    info = shard(str(synth), tmp_path / "out", ShardOptions(image=ImageOptions(size=(64, 64)), shard_size=4096,
                                                            workers=1)).info
    for s in info["splits"].values():
        n = len(s["shards"])
        assert n == -(-s["records"] // 2)
        assert [e["file"] for e in s["shards"]][-1].endswith(f"-{n - 1:05d}-of-{n:05d}")


def test_passthrough_and_gzip(synth, tmp_path):
    header, recs = read_manifest(str(synth))
    assert run("shard", synth, "-o", tmp_path / "out", "--image-size", "none", "--compression", "gzip").exit_code == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if ".tfrecord-" in p.name)
    assert names and all(n.endswith(".gz") for n in names)
    for _, _, r in records(tmp_path / "out"):
        assert r["image/encoded"] == (Path(header.images_root) / r["image/source_path"]).read_bytes()
        assert r["transform/stored_to_original"] == [1, 0, 0, 0, 1, 0]


# -------------------------------------------------------------------------------- bad images
def _bad_images_manifest(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    good = Image.effect_noise((64, 48), 40).convert("RGB")
    good.save(img / "good.jpg")
    good.save(img / "good2.png")
    data = (img / "good.jpg").read_bytes()
    (img / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (img / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 4)
    Image.new("RGB", (300, 300)).save(img / "bomb.png")
    good.save(img / "resized.jpg")
    kp = [[0.5, 0.5, 2]]
    recs = [Record(n, 64, 48, kp, [0.1, 0.1, 0.5, 0.5], "0", split="train")
            for n in ("good.jpg", "good2.png", "missing.jpg", "truncated.jpg", "corrupt.jpg")]
    recs.append(Record("bomb.png", 300, 300, kp, [0, 0, 1, 1], "0", split="train"))
    recs.append(Record("resized.jpg", 640, 480, kp, [0, 0, 1, 1], "0", split="train"))
    write_manifest(str(tmp_path / "m.jsonl"), Header(["pt"], images_root=str(img)), recs)
    return tmp_path / "m.jsonl"


def test_bad_images_are_skipped_and_listed(tmp_path):
    manifest = _bad_images_manifest(tmp_path)
    opts = ShardOptions(image=ImageOptions(size=(32, 32), max_pixels=50_000), workers=1)
    result = shard(str(manifest), tmp_path / "out", opts)
    assert result.written == 2 and result.skipped == 5
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    reasons = {s["image"]: s["reason"] for s in skipped}
    assert reasons == {"missing.jpg": "missing_image", "truncated.jpg": "truncated_image",
                       "corrupt.jpg": "unreadable_image", "bomb.png": "decompression_bomb",
                       "resized.jpg": "size_mismatch"}
    assert all(s["message"] and s["shard"].startswith("train.tfrecord-") for s in skipped)
    assert result.info["skipped"] == {"records": 5, "file": "skipped.jsonl", "reasons": {
        "decompression_bomb": 1, "missing_image": 1, "size_mismatch": 1, "truncated_image": 1, "unreadable_image": 1}}


def _crop_manifest(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    Image.effect_noise((64, 48), 40).convert("RGB").save(img / "a.jpg")
    recs = [Record("a.jpg", 64, 48, [[0.2, 0.2, 2], [0.9, 0.9, 1], [0.0, 0.0, 0]], [0.1, 0.1, 0.3, 0.3], "0",
                   split="train"),                                    # the second point is outside its box
            Record("a.jpg", 64, 48, [[0.5, 0.5, 2], [0.0, 0.0, 0], [0.0, 0.0, 0]], [0.5, 0.5, 0.0, 0.0], "1",
                   split="train"),                                    # one point: a box of 0 x 0 px
            Record("a.jpg", 64, 48, [[0.2, 0.2, 2], [0.4, 0.4, 2], [0.0, 0.0, 0]], [0.1, 0.1, 0.5, 0.5], "2",
                   split="train")]
    write_manifest(str(tmp_path / "m.jsonl"), Header(["nose", "tail", "paw"], images_root=str(img)), recs)
    return tmp_path / "m.jsonl"


def test_crop_bbox_reports_keypoints_it_drops_and_refuses_degenerate_boxes(tmp_path):
    """Keypoints outside a --crop bbox box become unlabelled: counted per record in changed.jsonl; a
    box under a pixel (a one-keypoint instance) is skipped as degenerate_crop, not cropped to 1 px."""
    manifest = _crop_manifest(tmp_path)
    opts = ShardOptions(image=ImageOptions(size=(16, 16), crop="bbox", crop_pad=0.0), workers=1)
    result = shard(str(manifest), tmp_path / "out", opts)
    assert (result.written, result.skipped, result.changed) == (2, 1, 1)
    changed = [json.loads(line) for line in (tmp_path / "out" / "changed.jsonl").read_text().splitlines()]
    assert changed == [{"image": "a.jpg", "instance": "0", "split": "train", "shard": changed[0]["shard"],
                        "reason": "outside_crop", "keypoints": ["tail"],
                        "message": "1 labelled keypoint(s) outside the --crop bbox box made unlabelled: tail"}]
    assert result.info["changed"] == {"records": 1, "keypoints": 1, "reasons": {"outside_crop": 1},
                                      "file": "changed.jsonl"}
    skipped = json.loads((tmp_path / "out" / "skipped.jsonl").read_text())
    assert (skipped["instance"], skipped["reason"]) == ("1", "degenerate_crop")
    assert skipped["message"].startswith("--crop bbox: the instance's box is 0x0 px (a box derived from one keypoint")
    assert sorted(list(r["keypoints/visibility"]) for _, _, r in records(tmp_path / "out")) == [[2, 0, 0], [2, 2, 0]]
    r = CliRunner().invoke(cli, ["shard", str(manifest), "-o", str(tmp_path / "cli2"), "--crop", "bbox",
                                 "--crop-pad", "0", "--image-size", "16"])
    assert r.exit_code == 0 and "1 record(s) with keypoints outside the stored image, made unlabelled (see " in r.output


def test_bad_images_through_the_cli(tmp_path):
    manifest = _bad_images_manifest(tmp_path)
    r = CliRunner().invoke(cli, ["shard", str(manifest), "-o", str(tmp_path / "out"), "--image-size", "32"])
    assert r.exit_code == 0
    assert "wrote 3 record(s)" in r.output and "skipped 4" in r.output and "skipped.jsonl" in r.output


def test_nothing_written_is_a_failure(tmp_path):
    img = tmp_path / "imgs"
    img.mkdir()
    write_manifest(str(tmp_path / "m.jsonl"), Header(["pt"], images_root=str(img)),
                   [Record("gone.png", 8, 8, [[0.5, 0.5, 2]], [0, 0, 1, 1], "0")])
    with pytest.raises(NothingToWrite, match="gone.png: image file does not exist"):
        shard(str(tmp_path / "m.jsonl"), tmp_path / "out", ShardOptions(workers=1))
    assert not (tmp_path / "out" / "dataset_info.json").exists()
    r = run("shard", tmp_path / "m.jsonl", "-o", tmp_path / "out2")
    assert r.exit_code == 1 and "no record could be written" in r.output


# ----------------------------------------------------------------------------- output safety
def test_existing_output_needs_overwrite(synth, tmp_path):
    out = tmp_path / "out"
    assert run("shard", synth, "-o", out, "--image-size", "32", "--num-shards", "2").exit_code == 0
    (out / "notes.txt").write_text("mine")
    r = run("shard", synth, "-o", out, "--image-size", "32")
    assert r.exit_code == 1 and "exists and is not empty" in r.output and "--overwrite" in r.output
    r = run("shard", synth, "-o", out, "--image-size", "32", "--num-shards", "1", "--overwrite")
    assert r.exit_code == 0
    names = sorted(p.name for p in out.iterdir() if ".tfrecord-" in p.name)
    assert all(n.endswith("-00000-of-00001") for n in names)     # the old 2-shard files are gone
    assert (out / "notes.txt").read_text() == "mine"              # other files are left alone


def _kill_run(manifest, out, after, workers):
    env = dict(os.environ, KPCONV_TEST_KILL_AFTER_RECORDS=str(after))
    return subprocess.run([KPCONV, "-q", "shard", str(manifest), "-o", str(out), "--image-size", "48",
                           "--num-shards", "4", "--workers", str(workers)], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_run_then_resume_gives_clean_bytes(synth, tmp_path, workers):
    clean = tmp_path / "clean"
    assert run("shard", synth, "-o", clean, "--image-size", "48", "--num-shards", "4").exit_code == 0
    out = tmp_path / "out"
    # train has ~19 records in 4 shards of ~5: the writer dies inside its second shard
    p = _kill_run(synth, out, 7, workers)
    assert p.returncode != 0
    if workers > 1:
        assert "worker process died" in p.stderr and "--resume" in p.stderr
    assert not (out / "dataset_info.json").exists()             # nothing looks finished
    left = [q.name for q in out.iterdir()]
    complete = [n for n in left if ".tfrecord-" in n and not n.startswith(".")]
    assert complete                                             # at least one shard was complete
    r = run("shard", synth, "-o", out, "--image-size", "48", "--num-shards", "4")
    assert r.exit_code == 1                                     # needs --resume or --overwrite
    r = CliRunner().invoke(cli, ["shard", str(synth), "-o", str(out), "--image-size", "48", "--num-shards", "4",
                                 "--resume"])
    assert r.exit_code == 0, r.output
    assert f"kept {len(complete)} complete shard(s)" in r.output
    assert shard_bytes(out) == shard_bytes(clean)
    assert not [q.name for q in out.iterdir() if ".tmp" in q.name]


def test_resume_rewrites_a_damaged_shard(synth, tmp_path):
    out = tmp_path / "out"
    assert run("shard", synth, "-o", out, "--image-size", "32", "--num-shards", "2").exit_code == 0
    before = shard_bytes(out)
    victim = sorted(p for p in out.iterdir() if ".tfrecord-" in p.name)[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    r = CliRunner().invoke(cli, ["shard", str(synth), "-o", str(out), "--image-size", "32", "--num-shards", "2",
                                 "--resume"])
    assert r.exit_code == 0 and "wrote 1" in r.output.splitlines()[-1]
    assert shard_bytes(out) == before
    # other options: nothing can be kept
    r = CliRunner().invoke(cli, ["shard", str(synth), "-o", str(out), "--image-size", "40", "--num-shards", "2",
                                 "--resume"])
    assert r.exit_code == 0 and "kept 0 complete shard(s)" in r.output


def test_ingest_piped_into_shard(tmp_path):
    """``kpconv ingest ... | kpconv shard - -o out`` through a real shell pipe."""
    ann = FIXTURES / "coco" / "annotations.json"
    q = shlex.quote
    cmd = (f"{q(KPCONV)} -q ingest {q(str(ann))} | "
           f"{q(KPCONV)} -q shard - -o {q(str(tmp_path / 'piped'))} --image-size 32 --workers 2")
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    subprocess.run([KPCONV, "-q", "ingest", str(ann), "-o", str(tmp_path / "m.jsonl")], check=True)
    assert run("shard", tmp_path / "m.jsonl", "-o", tmp_path / "file", "--image-size", "32").exit_code == 0
    assert shard_bytes(tmp_path / "piped") == shard_bytes(tmp_path / "file")
    assert not (tmp_path / "piped" / ".kpconv-shard" / "manifest.jsonl").exists()


# ------------------------------------------------------------------------------------ golden
def _fixture_manifest(tmp_path, name, sources):
    from kpconv.data.ingest import ingest

    out = tmp_path / f"{name}.jsonl"
    ingest([FIXTURES / name / s for s in sources], output=str(out))
    return out


@pytest.mark.parametrize("name,sources,args", [
    ("coco", ["annotations.json"], ["--image-size", "32x24", "--resize", "pad"]),
    ("coco-splits", ["person_keypoints_train2017.json", "person_keypoints_val2017.json"],
     ["--image-size", "none", "--crop", "bbox", "--crop-pad", "0.5"]),
])
def test_golden_dump(tmp_path, golden, name, sources, args):
    manifest = _fixture_manifest(tmp_path, name, sources)
    r = run("shard", manifest, "-o", tmp_path / "out", *args)
    assert r.exit_code == 0, r.output
    golden.check(f"shard/{name}.txt", dump(tmp_path / "out"))


# -------------------------------------------------------------------------------- TensorFlow
@pytest.mark.slow
def test_tensorflow_reads_the_shards(synth, tmp_path):
    """Plain tf.data.TFRecordDataset + tf.io.parse_single_example with the documented spec."""
    import numpy as np
    import tensorflow as tf

    from kpconv.data.records import feature_description

    for compression in ("none", "gzip"):
        out = tmp_path / compression
        assert run("shard", synth, "-o", out, "--image-size", "48x40", "--crop", "bbox",
                   "--compression", compression).exit_code == 0
        info = json.loads((out / "dataset_info.json").read_text())
        desc = feature_description(len(info["keypoints"]))
        ours = records(out, "train")
        files = [str(out / e["file"]) for e in info["splits"]["train"]["shards"]]
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP" if compression == "gzip" else "")
        parsed = [tf.io.parse_single_example(s, desc) for s in ds]
        assert len(parsed) == len(ours) == info["splits"]["train"]["records"]
        for p, (_, _, r) in zip(parsed, ours):
            img = tf.io.decode_jpeg(p["image/encoded"], channels=3).numpy()
            assert img.shape == (int(p["image/height"]), int(p["image/width"]), 3) == (40, 48, 3)
            assert p["instance/id"].numpy().decode() == r["instance/id"]
            np.testing.assert_allclose(p["keypoints/x"].numpy(), r["keypoints/x"], rtol=0, atol=0)
            np.testing.assert_array_equal(p["keypoints/visibility"].numpy(), r["keypoints/visibility"])
            assert p["transform/stored_to_original"].shape == (6,)


def test_malformed_manifest_fails_before_writing(tmp_path, synth):
    lines = synth.read_text().splitlines()
    lines[3] = lines[3].replace('"width":', '"widthx":')
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    r = run("shard", tmp_path / "m.jsonl", "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert f"m.jsonl:4: field 'width': missing required field" in r.output
    assert not (tmp_path / "out").exists()      # validated and planned before OUT_DIR is touched
    r = run("shard", tmp_path / "nope.jsonl", "-o", tmp_path / "out2")
    assert r.exit_code == 1 and "nope.jsonl: manifest file does not exist" in r.output


def test_shard_and_inspect_never_import_tensorflow(synth, tmp_path):
    code = ("import sys\n"
            "from kpconv.cli import cli\n"
            f"cli.main(['-q', 'shard', {str(synth)!r}, '-o', {str(tmp_path / 'out')!r}, '--image-size', '32', "
            "'--workers', '2'], standalone_mode=False)\n"
            f"cli.main(['inspect', {str(tmp_path / 'out')!r}, '--verify'], standalone_mode=False)\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "verify: 24 record(s) OK" in p.stdout


def _jpeg_bytes(im, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def test_passthrough_size_agrees_with_pillow_path(tmp_path):
    """The header-only passthrough decision (no Pillow) answers only where the Pillow path would pass the
    file through unchanged, with the same size; every other file goes to SourceImage/render."""
    from kpconv.data.images import SourceImage, passthrough_size, render

    rgb = Image.new("RGB", (64, 48), (10, 200, 30))
    rotated = Image.Exif()
    rotated[0x0112] = 6
    upright = Image.Exif()
    upright[0x0112] = 1
    full = _jpeg_bytes(rgb)
    cases = {
        "rgb": full, "gray": _jpeg_bytes(rgb.convert("L")), "cmyk": _jpeg_bytes(rgb.convert("CMYK")),
        "exif6": _jpeg_bytes(rgb, exif=rotated.tobytes()), "exif1": _jpeg_bytes(rgb, exif=upright.tobytes()),
        "progressive": _jpeg_bytes(rgb, progressive=True), "truncated": full[: len(full) // 2],
        "garbage_after": full + b"xyz", "zero_padded": full + b"\0\0", "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
    }
    expected_fast = {"rgb", "gray", "exif1", "progressive", "zero_padded"}
    for name, data in cases.items():
        size = passthrough_size(data)
        assert (size is not None) == (name in expected_fast), name
        if size is not None:
            path = tmp_path / f"{name}.jpg"
            path.write_bytes(data)
            src = SourceImage(str(path))
            stored = render(src, [0, 0, 1, 1], ImageOptions(size=None))
            assert stored.data == data and stored.format == "jpeg" and size == src.size, name
    assert passthrough_size(full, max_pixels=64 * 48 - 1) is None   # over the limit: SourceImage reports it


def test_annotation_file_given_instead_of_a_manifest_says_so(tmp_path):
    from click.testing import CliRunner

    from kpconv.cli import cli

    coco = Path(__file__).resolve().parent.parent / "fixtures" / "coco" / "annotations.json"
    r = CliRunner().invoke(cli, ["shard", str(coco), "-o", str(tmp_path / "out")])
    assert r.exit_code == 1
    assert f"{coco}:1: invalid JSON" in r.output and "run it on annotation files first" in r.output
    assert not (tmp_path / "out" / "dataset_info.json").exists()


# ------------------------------------------------------------------------------------ --split-by
def _video_manifest(tmp_path, groups, images=40, instances=1):
    """``images`` small images, ``instances`` per image, spread over ``groups`` (frames of videos)."""
    img = tmp_path / "imgs"
    img.mkdir(exist_ok=True)
    recs = []
    for i in range(images):
        Image.new("RGB", (16, 12), (i, 0, 0)).save(img / f"f{i:03d}.png")
        for j in range(instances):
            recs.append(Record(f"f{i:03d}.png", 16, 12, [[0.5, 0.5, 2]], [0.25, 0.25, 0.5, 0.5], str(j),
                               group=f"video{i % groups}"))
    path = tmp_path / "m.jsonl"
    write_manifest(str(path), Header(["nose"], [], [], str(img)), recs)
    return path


def _splits_of(out):
    """{split: {image: set of instance ids}} of a shard directory."""
    seen = {}
    for split, _, r in records(out):
        seen.setdefault(split, {}).setdefault(r["image/source_path"], set()).add(r["instance/id"])
    return seen


def test_split_by_auto_one_video_splits_by_image_and_says_so(tmp_path):
    """A one-video project (every record has the same group): the default splits by image, says so on
    stderr, and the small test split is not empty."""
    m = _video_manifest(tmp_path, groups=1, images=93)
    r = CliRunner().invoke(cli, map(str, ["shard", m, "-o", tmp_path / "out", "--split", "train=0.95,test=0.05", "--image-size", "none"]))
    assert r.exit_code == 0
    assert "1 group(s) cannot fill every split (test, train): splitting by image instead" in r.output
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert info["options"]["split_by"] == "auto" and info["options"]["split_by_used"] == "image"
    assert info["splits"]["test"]["records"] > 0 and info["warnings"] == []


def test_split_by_group_keeps_a_video_together_and_warns_about_the_empty_split(tmp_path):
    m = _video_manifest(tmp_path, groups=1, images=20)
    args = ["shard", str(m), "-o", str(tmp_path / "out"), "--split", "train=0.5,test=0.5", "--split-by", "group",
            "--image-size", "none"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)     # not -q: warnings obey it
    assert r.exit_code == 0
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert len(info["splits"]) == 1
    empty = "test" if "train" in info["splits"] else "train"
    warning = f"split '{empty}' is empty: 0 of 20 record(s) (0.0%, split by group), asked for 50.0%"
    assert f"kpconv: warning: {warning} (few groups: try --split-by image)" in r.output
    assert info["warnings"][0].startswith(warning)
    r = CliRunner().invoke(cli, ["-q", *args, "--overwrite"], catch_exceptions=False)
    assert r.exit_code == 0 and "warning" not in r.output      # -q: only errors (the warning stays in the file)


def test_split_by_auto_keeps_groups_when_they_fill_every_split(tmp_path):
    m = _video_manifest(tmp_path, groups=12, images=48)
    r = run("shard", m, "-o", tmp_path / "out", "--split", "train=0.5,val=0.5", "--image-size", "none")
    assert r.exit_code == 0 and "splitting by image" not in r.output
    by_group = {}
    for split, images in _splits_of(tmp_path / "out").items():
        for image in images:
            by_group.setdefault(f"video{int(image[1:4]) % 12}", set()).add(split)
    assert len(by_group) == 12 and all(len(s) == 1 for s in by_group.values())


def test_split_by_image_keeps_instances_of_an_image_together_deterministically(tmp_path):
    m = _video_manifest(tmp_path, groups=1, images=30, instances=3)
    args = ["--split", "train=0.6,val=0.2,test=0.2", "--split-by", "image", "--seed", "0", "--image-size", "none"]
    assert run("shard", m, "-o", tmp_path / "a", *args, "--workers", "1").exit_code == 0
    assert run("shard", m, "-o", tmp_path / "b", *args, "--workers", "2").exit_code == 0
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    splits = _splits_of(tmp_path / "a")
    assert set(splits) == {"train", "val", "test"}
    images = [image for per in splits.values() for image in per]
    assert len(images) == len(set(images)) == 30          # no image in two splits ...
    assert all(ids == {"0", "1", "2"} for per in splits.values() for ids in per.values())   # ... all instances
