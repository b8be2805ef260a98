"""kpconv eval and kpconv predict (library and CLI)."""
import csv
import io
import json
import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from kpconv.model import pipeline  # noqa: E402
from kpconv.cli import cli  # noqa: E402
from kpconv.model.evaluate import evaluate_dataset  # noqa: E402

from _shards import NAMES, write_shards  # noqa: E402

pytestmark = pytest.mark.slow

# stored 32x32, original 64x96 (x' = 2x + 0, y' = 3y + 0), box 0.1..0.9 -> 51.2 x 76.8 px
TRANSFORM = [2.0, 0.0, 0.0, 0.0, 3.0, 0.0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("ev_shards")
    write_shards(out, {"train": 16, "val": 6}, size=(32, 32), transform=TRANSFORM, original=(64, 96),
                 invisible=(3,))
    return out


def _truth(shards):
    return iter([t.numpy()[..., :2] for _, t, _ in pipeline.load(shards, "val", 4, include_meta=True)])


def test_perfect_predictor_has_zero_error(shards):
    truth = _truth(shards)
    res = evaluate_dataset(lambda images: next(truth), pipeline.load(shards, "val", 4, include_meta=True), NAMES)
    o = res["overall"]
    assert res["instances"] == 6 and o["count"] == 6 * 4      # keypoint 3 unlabelled everywhere
    assert o["mean_error_px"] == o["median_error_px"] == o["nme"] == o["masked_mse"] == 0
    assert o["pck@0.05"] == o["pck@0.1"] == o["pck@0.2"] == 1
    assert res["per_keypoint"][3]["count"] == 0 and math.isnan(res["per_keypoint"][3]["mean_error_px"])


def test_errors_are_in_original_pixels(shards):
    truth = _truth(shards)
    # one stored pixel to the right and one down: original error sqrt(2^2 + 3^2)
    res = evaluate_dataset(lambda images: next(truth) + 1 / 32, pipeline.load(shards, "val", 4, include_meta=True))
    o = res["overall"]
    assert o["mean_error_px"] == pytest.approx(13 ** 0.5, rel=1e-4)
    # normalized by the box's longer side in original pixels: 0.8 * 32 * 3 = 76.8
    assert o["nme"] == pytest.approx(13 ** 0.5 / 76.8, rel=1e-4)
    assert o["pck@0.05"] == 1.0 and o["masked_mse"] == pytest.approx((1 / 32) ** 2, rel=1e-4)


@pytest.fixture(scope="module")
def run(tiny_dense_run):
    """The session's tiny trained run (conftest.py: dense head, one epoch on 32x32 shards of the same keypoints as
    these), read only: eval takes any shards of its keypoints and image size."""
    return tiny_dense_run


def test_eval_cli_table_and_json(run, shards, tmp_path):
    out = tmp_path / "ev.json"
    r = CliRunner().invoke(cli, ["eval", str(run), str(shards), "--split", "val", "--json", str(out)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("val: 6 instance(s), 24 labelled keypoint(s); masked MSE")
    assert [l.split()[0] for l in lines[2:7]] == NAMES and lines[-1].split()[:2] == ["all", "24"]
    data = json.loads(out.read_text())
    assert data["split"] == "val" and data["per_keypoint"][3]["mean_error_px"] is None
    assert set(data["overall"]) >= {"mean_error_px", "median_error_px", "pck@0.05", "pck@0.1", "pck@0.2", "nme",
                                    "masked_mse"}
    r = CliRunner().invoke(cli, ["eval", str(run), str(shards), "--split", "test"])
    assert r.exit_code == 1 and "no split 'test'" in r.output


def test_predict_maps_back_to_original_pixels(run, tmp_path):
    from kpconv.model.network import load_model

    rng = np.random.default_rng(3)
    big = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)       # original 96x64, stored 32x32 (stretch)
    Image.fromarray(big).save(tmp_path / "a.png")
    Image.fromarray(big[:, ::-1].copy()).save(tmp_path / "b.png")
    r = CliRunner().invoke(cli, ["predict", str(run), str(tmp_path), "--format", "jsonl", "--draw",
                                 str(tmp_path / "drawn")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert [(x["width"], x["height"]) for x in rows] == [(96, 64), (96, 64)]
    # the same numbers as the model on the image resized like the shards (Pillow bilinear, 32x32)
    small = np.asarray(Image.fromarray(big).resize((32, 32), Image.Resampling.BILINEAR), np.float32)
    expected = load_model(run / "model.keras")(small[None], training=False).numpy()[0] * [96, 64]
    got = np.array([rows[0]["keypoints"][n][:2] for n in NAMES])
    assert np.allclose(got, expected, atol=0.5)
    assert [rows[0]["keypoints"][n][2] for n in NAMES] == [1.0] * len(NAMES)   # no confidence yet: 1
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a.png", "b.png"]

    out = tmp_path / "p.csv"
    r = CliRunner().invoke(cli, ["predict", str(run), str(tmp_path / "a.png"), "--format", "csv", "-o", str(out)])
    assert r.exit_code == 0, r.output
    table = list(csv.reader(io.StringIO(out.read_text())))
    assert table[0][:8] == ["file", "frame", "time", "width", "height", "nose_x", "nose_y", "nose_likelihood"]
    assert len(table) == 2
    assert np.allclose([float(v) for i, v in enumerate(table[1][5:]) if i % 3 != 2], got.ravel(), atol=1e-3)
    r = CliRunner().invoke(cli, ["predict", str(run), str(tmp_path / "a.png"), "--format", "coco"])
    coco = json.loads(r.stdout)
    # x, y and the confidence (not a visibility flag) of every keypoint
    assert coco[0]["keypoints"][2::3] == [1.0] * len(NAMES) and len(coco[0]["keypoints"]) == 3 * len(NAMES)
    # in COCO's convention (pixel centres at integers): kpconv's coordinates - 0.5
    assert np.allclose(np.array(coco[0]["keypoints"]).reshape(-1, 3)[:, :2] + 0.5, got, atol=1e-3)


def test_predict_with_bbox_crop(run, tmp_path):
    cfg = json.loads((run / "config.json").read_text())
    cfg["dataset"]["preprocessing"].update(crop="bbox", crop_pad=0.0)
    crop_run = tmp_path / "crop_run"
    crop_run.mkdir()
    (crop_run / "config.json").write_text(json.dumps(cfg))
    (crop_run / "model.keras").write_bytes((run / "model.keras").read_bytes())
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "c.png")
    r = CliRunner().invoke(cli, ["predict", str(crop_run), str(tmp_path / "c.png"), "--bbox", "50,20,40,60"])
    assert r.exit_code == 0, r.output
    pts = np.array(list(json.loads(r.stdout)["keypoints"].values()))[:, :2]
    # the model's output (normalized to the 32x32 crop) lands inside the box, scaled by 40/32 and 60/32
    small = np.zeros((1, 32, 32, 3), np.float32)
    from kpconv.model.network import load_model

    y = load_model(run / "model.keras")(small, training=False).numpy()[0]
    assert np.allclose(pts, y * [40, 60] + [50, 20], atol=1e-3)
    r = CliRunner().invoke(cli, ["predict", str(crop_run), str(tmp_path / "c.png"), "--bbox", "1,2,3"])
    assert r.exit_code == 2 and "expected x,y,w,h" in r.output


def test_train_cli_imagenet_fails_fast_without_network(shards, tmp_path, monkeypatch):
    from kpconv.model import network as kmodel

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(kmodel, "_network_reachable", lambda *a, **k: False)
    r = CliRunner().invoke(cli, ["train", str(shards), "-o", str(tmp_path / "run"), "--alpha", "0.35"])
    assert r.exit_code == 1
    assert "--weights imagenet: the ImageNet weights for mobilenet_v2 (alpha 0.35) are not in" in r.output
    assert "--weights none" in r.output
