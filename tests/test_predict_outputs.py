"""The prediction formats other tools read: every coordinate written whatever its confidence (scored
with pycocotools' COCOeval end to end), one layout per format (golden files), DeepLabCut's .h5 read
back with pandas as DeepLabCut reads it."""
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kpconv.cli import cli
from kpconv.model.predict import FORMATS, Prediction, Writer

NAMES2 = ["head", "tail"]


def _predictions():
    """Two frames of a video: two instances in frame 3 (low confidences), one (the second) in frame 4."""
    return [Prediction("clip.mp4", 100, 80, [[10.12345, 20.5, 0.04], [30.0, 40.25, 0.91]], frame=3, time=0.1,
                       instance=0),
            Prediction("clip.mp4", 100, 80, [[50.0, 60.0, 0.2], [70.5, 8.0, 0.0]], frame=3, time=0.1, instance=1),
            Prediction("clip.mp4", 100, 80, [[1.0, 2.0, 0.3], [3.0, 4.0, 0.49999]], frame=4, time=0.13333,
                       instance=1)]


def _write(fmt, preds, **options):
    out = io.StringIO()
    w = Writer(out, fmt, NAMES2, **options)
    for p in preds:
        w.write(p)
    w.close()
    return out.getvalue()


@pytest.mark.parametrize("fmt,name", [("jsonl", "multi.jsonl"), ("csv", "multi.csv"), ("dlc", "multi.dlc.csv"),
                                      ("coco", "multi.coco.json")])
def test_layout_of_each_format(golden, fmt, name):
    """Several instances per frame, confidences below any threshold: every x, y is written, its
    confidence beside it, in each format's layout."""
    text = _write(fmt, _predictions(), individuals=None, index="frame", multi=True)
    golden.check(f"predict/{name}", text)
    # no coordinate dropped or zeroed: the six keypoints' x, y, confidence are all there, in every format
    expected = sorted(tuple(k) for p in _predictions() for k in p.keypoints)
    assert np.allclose(sorted(_points(fmt, text)), expected, atol=6e-4), fmt


def _points(fmt, text):
    """Every (x, y, confidence) a file of ``fmt`` holds, in kpconv's continuous pixel convention (the
    dlc and coco outputs are written in their tool's: pixel centres at integer coordinates)."""
    from kpconv.model.predict import _TOOL_ORIGIN
    from kpconv.data.formats.base import continuous_offset

    shift = continuous_offset(_TOOL_ORIGIN[fmt]) if fmt in _TOOL_ORIGIN else 0.0
    return [(x + shift, y + shift, c) for x, y, c in _tool_points(fmt, text)]


def _tool_points(fmt, text):
    """Every (x, y, confidence) a file of ``fmt`` holds, as written."""
    import csv

    if fmt == "jsonl":
        return [tuple(v) for line in text.splitlines() for v in json.loads(line)["keypoints"].values()]
    if fmt == "coco":
        return [tuple(r["keypoints"][i:i + 3]) for r in json.loads(text) for i in range(0, len(r["keypoints"]), 3)]
    rows = list(csv.reader(io.StringIO(text)))
    if fmt == "csv":
        xs = [i for i, name in enumerate(rows[0]) if name.endswith("_x")]
        return [tuple(float(v) for v in row[i:i + 3]) for row in rows[1:] for i in xs]
    body = [row for row in rows if row[0] not in ("scorer", "individuals", "bodyparts", "coords")]
    return [tuple(float(v) for v in row[i:i + 3]) for row in body for i in range(1, len(row), 3) if row[i]]


def test_coco_third_value_is_the_confidence():
    res = json.loads(_write("coco", _predictions()))
    assert [r["image_id"] for r in res] == [1, 1, 2]
    # x, y in COCO's convention (pixel centres at integers: kpconv's minus 0.5), the confidence third
    assert res[0]["keypoints"] == [9.623, 20.0, 0.04, 29.5, 39.75, 0.91]
    assert res[1]["keypoints"] == [49.5, 59.5, 0.2, 70.0, 7.5, 0.0]
    assert res[0]["score"] == pytest.approx((0.04 + 0.91) / 2)     # the ranking score: mean confidence


def test_coco_score_of_a_multi_instance_run_is_the_instances():
    preds = _predictions()
    preds[0].score = 0.7
    res = json.loads(_write("coco", preds, instance_score=True))
    assert [r["score"] for r in res] == [0.7, 0.1, 0.39999]      # its own score, else the mean confidence


def test_dlc_streams_when_the_individuals_are_known():
    """With the number of individuals known up front (one, or the most boxes of an image) the CSV is
    written row by row; otherwise the header waits for the last row. Both give the same table."""
    preds = _predictions()
    assert _write("dlc", preds, individuals=2, index="frame", multi=True) == \
        _write("dlc", preds, individuals=None, index="frame", multi=True)
    single = _write("dlc", preds[2:], individuals=1, index="frame")
    assert single.splitlines()[1].startswith("bodyparts,head,head,head,tail") and "individuals" not in single


def _read_dlc_csv(path, multi):
    import pandas as pd

    return pd.read_csv(path, header=[0, 1, 2, 3] if multi else [0, 1, 2], index_col=0)


@pytest.mark.parametrize("multi", [False, True])
def test_dlc_h5_is_the_dlc_csv_table(tmp_path, multi):
    """The .h5 holds the table of the DeepLabCut CSV, as DeepLabCut reads its own files:
    ``pd.read_hdf(path, "df_with_missing")`` and ``pd.read_csv(path, header=[0, 1, 2(, 3)], index_col=0)``."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    preds = _predictions() if multi else _predictions()[2:]
    csv_path, h5 = tmp_path / "p.csv", tmp_path / "p.h5"
    csv_path.write_text(_write("dlc", preds, individuals=None, index="frame", multi=multi, scorer="kpconv_run"))
    w = Writer(str(h5), "dlc-h5", NAMES2, individuals=None, index="frame", multi=multi, scorer="kpconv_run")
    for p in preds:
        w.write(p)
    assert not h5.exists()          # written whole at close, through a temporary file
    w.close()
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*tmp"))
    df = pd.read_hdf(h5, "df_with_missing")
    ref = _read_dlc_csv(csv_path, multi)
    levels = ["scorer", "individuals", "bodyparts", "coords"] if multi else ["scorer", "bodyparts", "coords"]
    assert list(df.columns.names) == levels and list(ref.columns.names) == levels
    assert list(df.columns) == list(ref.columns) and list(df.index) == list(ref.index) == ([3, 4] if multi else [4])
    assert df.index.dtype == np.int64
    np.testing.assert_allclose(df.to_numpy(), ref.to_numpy(), atol=6e-4)   # the CSV rounds to 3-4 decimals
    if multi:   # frame 4 has no individual1: NaN, as DeepLabCut leaves an absent animal
        assert df.loc[4, ("kpconv_run", "individual1")].isna().all()
        assert df.loc[3, ("kpconv_run", "individual1", "head", "likelihood")] == pytest.approx(0.04)


def test_h5_for_images_is_indexed_by_path(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    preds = [Prediction(f"imgs/{n}.png", 10, 10, [[1, 2, 0.5], [3, 4, 0.25]]) for n in ("b", "a")]
    w = Writer(str(tmp_path / "p.h5"), "dlc-h5", NAMES2)
    for p in preds:
        w.write(p)
    w.close()
    df = pd.read_hdf(tmp_path / "p.h5", "df_with_missing")
    assert list(df.index) == ["imgs/b.png", "imgs/a.png"] and df.shape == (2, 6)


def test_h5_without_pandas_is_a_clear_option_error(tmp_path, monkeypatch):
    """No pandas/PyTables: exit 2 naming the extra, before any model is loaded."""
    monkeypatch.setitem(sys.modules, "tables", None)     # import tables -> ImportError
    (tmp_path / "run").mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    r = CliRunner().invoke(cli, ["predict", str(tmp_path / "run"), str(tmp_path / "a.png"), "-o", str(tmp_path / "p.h5")])
    assert r.exit_code == 2 and "pip install 'kpconv[h5]'" in r.output
    assert not (tmp_path / "p.h5").exists()
    r = CliRunner().invoke(cli, ["predict", str(tmp_path / "run"), str(tmp_path / "a.png"), "--format", "dlc-h5"])
    assert r.exit_code == 2 and "written to a file, not to stdout" in r.output


def test_every_format_is_documented():
    text = (Path(__file__).resolve().parent.parent / "docs" / "predict.md").read_text()
    for fmt in FORMATS:
        assert f"| `{fmt}`" in text, fmt


# ------------------------------------------------------------------ end to end, on a tiny trained run
@pytest.fixture(scope="module")
def run(tiny_dense_run):
    """The session's tiny trained run (conftest.py), read only."""
    return tiny_dense_run


def _coco_ap(results_path, gt, names):
    """COCOeval keypoint AP and AP@0.5 of a `kpconv predict --format coco` file against ``gt``
    (a COCO dataset), its results matched to the labelled images by file name."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = {im["file_name"]: im["id"] for im in gt["images"]}
    results = json.loads(Path(results_path).read_text())
    for r in results:
        r["image_id"] = ids[Path(r["file_name"]).name]
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(results), "keypoints")
    ev.params.kpt_oks_sigmas = np.full(len(names), 0.05)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


@pytest.mark.slow
def test_coco_results_score_the_same_whatever_the_confidence(run, tmp_path, monkeypatch):
    """`kpconv predict --format coco` with default options, scored by pycocotools against labels: the
    AP is the same when every confidence is below --min-confidence (a threshold used to zero the
    keypoints below it, and COCOeval measured them at (0, 0))."""
    from PIL import Image

    from _shards import NAMES
    from kpconv.model.predict import Predictor

    rng = np.random.default_rng(7)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    # the labels: the model's own points (through the Python API), image i moved by 1.5 i px, so the
    # OKS of the six results spreads between 1 and about 0.4 and the AP is neither 0 nor 1
    preds = list(Predictor(run).predict(str(folder)))
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing", "keypoints": NAMES}]}
    for i, p in enumerate(preds):
        name = Path(p.image).name
        shift = 1.5 * int(Path(p.image).stem)
        kps = [v for x, y, _ in p.keypoints for v in (x + shift, y, 2)]
        gt["images"].append({"id": i + 1, "file_name": name, "width": 64, "height": 48})
        gt["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 1, "keypoints": kps,
                                  "num_keypoints": len(NAMES), "bbox": [0, 0, 64, 48], "area": 64 * 48,
                                  "iscrowd": 0})

    out = tmp_path / "default.json"
    r = CliRunner().invoke(cli, ["predict", str(run), str(folder), "--format", "coco", "-o", str(out)])
    assert r.exit_code == 0, r.output
    ap = _coco_ap(out, gt, NAMES)
    assert 0 < ap[0] < ap[1] < 1

    real = Predictor.infer

    def unsure(self, batch):
        xy, conf = real(self, batch)
        return xy, conf * 0.1         # every keypoint far below the default --min-confidence 0.5

    monkeypatch.setattr(Predictor, "infer", unsure)
    low = tmp_path / "low.json"
    r = CliRunner().invoke(cli, ["predict", str(run), str(folder), "--format", "coco", "-o", str(low)])
    assert r.exit_code == 0, r.output
    third = [v for res in json.loads(low.read_text()) for v in res["keypoints"][2::3]]
    assert len(third) == 6 * len(NAMES) and max(third) < 0.5
    assert _coco_ap(low, gt, NAMES) == ap
    # the same coordinates in jsonl, csv and dlc
    coco = np.array(_points("coco", low.read_text())).reshape(6, -1, 3)
    for fmt in ("jsonl", "csv", "dlc"):
        r = CliRunner().invoke(cli, ["predict", str(run), str(folder), "--format", fmt])
        pts = np.array(_points(fmt, r.stdout)).reshape(6, -1, 3)
        assert np.allclose(pts, coco, atol=6e-4), fmt


@pytest.mark.slow
def test_video_to_dlc_h5_reads_back_like_the_csv(run, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    pytest.importorskip("av")
    from kpconv.model.video import VideoWriter

    video = tmp_path / "clip.mp4"
    w = VideoWriter(video, 10, (64, 48))
    rng = np.random.default_rng(1)
    for _ in range(5):
        w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    w.close()
    h5, csv_path = tmp_path / "clip.h5", tmp_path / "clip.csv"
    r = CliRunner().invoke(cli, ["predict", str(run), str(video), "-o", str(h5)])     # .h5: dlc-h5
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["predict", str(run), str(video), "--format", "dlc", "-o", str(csv_path)])
    assert r.exit_code == 0, r.output
    df = pd.read_hdf(h5, "df_with_missing")
    ref = _read_dlc_csv(csv_path, multi=False)
    assert list(df.index) == list(range(5)) and list(df.columns) == list(ref.columns)
    assert df.columns.get_level_values("scorer")[0] == "kpconv_run"
    np.testing.assert_allclose(df.to_numpy(), ref.to_numpy(), atol=6e-4)
