"""Multi-instance end to end: a tiny dataset of 2-3 overlapping figures per image, ingest -> shard
--image-size none -> train (both stages, a tiny model, a few steps) -> predict without boxes (every format)
-> eval (OKS); and the options and errors around it."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from kpconv.cli import cli
from kpconv.data.dataset_info import DatasetInfo
from kpconv.errors import DatasetInfoError
from kpconv.data.ingest import ingest
from test_shard_helpers import make_coco


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def multi_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    ann = make_coco(root / "data", 12, size=(128, 96), figures=(2, 3), seed=5)
    ingest([ann], output=str(root / "m.jsonl"), fmt="coco", images=root / "data" / "images")
    r = run("shard", root / "m.jsonl", "-o", root / "s", "--image-size", "none", "--split", "train=0.75,test=0.25",
            "--split-by", "image", "--seed", "0")
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.slow
def test_train_predict_eval_without_boxes(multi_shards, tmp_path):
    root = multi_shards
    s, run_dir = root / "s", tmp_path / "run"
    assert DatasetInfo.read(s).max_instances >= 2
    r = run("train", s, "-o", run_dir, "--weights", "none", "--epochs", "1", "--steps-per-epoch", "2",
            "--alpha", "0.25", "--batch-size", "2")
    assert r.exit_code == 0, r.output
    config = json.loads((run_dir / "config.json").read_text())
    assert [st["name"] for st in config["stages"]] == ["centroid", "instance"]
    assert (run_dir / "centroid.keras").is_file() and (run_dir / "model.keras").is_file()
    c, i = config["stages"]
    assert 0 < c["scale"] <= 1 and c["max_instances"] == 3 and i["crop"] % 32 == 0
    images = root / "data" / "images"
    # a model of a few steps has no peak above the threshold yet: every local maximum counts for this test
    c["peak_threshold"] = 0.0
    (run_dir / "config.json").write_text(json.dumps(config))
    r = run("predict", run_dir, images, "--format", "coco", "-o", tmp_path / "pred.json", "--max-instances", "4")
    assert r.exit_code == 0, r.output
    preds = json.loads((tmp_path / "pred.json").read_text())
    assert preds
    per_image = {}
    for p in preds:
        assert len(p["keypoints"]) == 17 * 3 and 0.0 <= p["score"] <= 1.0
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    assert max(per_image.values()) <= 4
    # a score threshold removes instances, never adds any
    r = run("predict", run_dir, images, "--format", "coco", "-o", tmp_path / "pred2.json", "--min-score", "0.99")
    assert r.exit_code == 0 and len(json.loads((tmp_path / "pred2.json").read_text())) <= len(preds)
    for fmt in ("jsonl", "csv", "dlc"):
        r = run("predict", run_dir, images, "--format", fmt, "-o", tmp_path / f"p.{fmt}", "--max-instances", "2")
        assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all({"instance", "score", "keypoints"} <= set(row) for row in rows)
    dlc = list(csv.reader(io.StringIO((tmp_path / "p.dlc").read_text())))
    assert dlc[1][0] == "individuals" and "individual2" in dlc[1]
    # --boxes skips the centroid stage: one instance per box
    (tmp_path / "boxes.csv").write_text("image,x,y,w,h\nimg_000000.jpg,10,10,40,60\nimg_000000.jpg,60,20,40,60\n")
    r = run("predict", run_dir, images / "img_000000.jpg", "--boxes", tmp_path / "boxes.csv", "--format", "jsonl",
            "-o", tmp_path / "boxed.jsonl")
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "boxed.jsonl").read_text().splitlines()) == 2
    r = run("eval", run_dir, s, "--split", "test", "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert "OKS mAP" in r.output and "recall" in r.output
    e = json.loads((tmp_path / "e.json").read_text())
    assert e["instances"] > 0 and {"mAP", "AP@0.5", "recall", "precision", "mean_error_px", "per_keypoint"} <= set(e)
    assert e["oks_sigmas"][0] == 0.026          # COCO's sigma for the nose: the 17 COCO person keypoints


def test_version_1_shards_name_the_command_that_rewrites_them(multi_shards, tmp_path):
    raw = json.loads((multi_shards / "s" / "dataset_info.json").read_text())
    raw["spec_version"] = 1
    with pytest.raises(DatasetInfoError, match=r"record spec version 1.*kpconv shard MANIFEST -o NEW_DIR"):
        DatasetInfo.from_json(raw, tmp_path / "dataset_info.json")


@pytest.mark.slow
def test_multi_instance_options(multi_shards, tmp_path):
    s = multi_shards / "s"
    # forced off: the single-instance trainer takes frames of their own size with the heatmap head only
    r = CliRunner().invoke(cli, ["train", str(s), "-o", str(tmp_path / "r"), "--weights", "none",
                                 "--multi-instance", "no", "--head", "spatial", "--epochs", "1"])
    assert r.exit_code == 1 and "needs one image size" in r.output
    r = CliRunner().invoke(cli, ["train", str(s), "-o", str(tmp_path / "r"), "--multi-instance", "yes", "--resume"])
    assert r.exit_code == 2 and "cannot be resumed" in r.output
    r = CliRunner().invoke(cli, ["train", str(s), "-o", str(tmp_path / "r"), "--weights", str(s),
                                 "--multi-instance", "yes"])
    assert r.exit_code == 1 and "random weights" in r.output
    assert not (tmp_path / "r").exists()


def test_pose_nms_drops_a_second_pose_of_the_same_animal_and_keeps_touching_neighbours():
    from kpconv.model import metrics
    from kpconv.model.multi import Found, MultiPredictor

    pose = np.array([[10, 10, 1], [20, 12, 1], [30, 10, 1]], np.float32)
    assert metrics.pose_oks(pose, pose, [0.07] * 3) == pytest.approx(1.0)
    p = MultiPredictor.__new__(MultiPredictor)      # the NMS step alone, without models
    p.pose_nms, p._sigmas = 0.5, metrics.oks_sigmas(["a", "b", "c"])
    same = Found((20, 11), 0.8, pose + [0.5, -0.5, 0], 0.8)        # a second peak on the same animal
    neighbour = Found((20, 23), 0.7, pose + [0, 12, 0], 0.7)        # an animal 12 px away, touching
    best = Found((20, 11), 0.9, pose, 0.9)
    assert p._pose_nms([best, same, neighbour]) == [best, neighbour]
    p.pose_nms = None
    assert p._pose_nms([best, same, neighbour]) == [best, same, neighbour]
