"""kpconv predict on videos, boxes, DeepLabCut output, bad files, drawing, confidence; the Python API."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
av = pytest.importorskip("av")
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from kpconv.cli import cli  # noqa: E402
from kpconv.data.formats.base import IngestOptions, ReadContext  # noqa: E402
from kpconv.data.formats.dlc import DlcReader  # noqa: E402
from kpconv.model.predict import Predictor  # noqa: E402
from kpconv.model.video import VideoWriter  # noqa: E402
from kpconv.data.problems import Report  # noqa: E402

from _shards import NAMES, bbox_crop_copy  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
FRAMES, FPS = 7, 10


@pytest.fixture(scope="module")
def run(tiny_dense_run):
    """The session's tiny trained run (conftest.py), read only."""
    return tiny_dense_run


@pytest.fixture(scope="module")
def crop_run(run, tmp_path_factory):
    """The same model, as if its shards had been cut to each instance's box (--crop bbox, no padding)."""
    return bbox_crop_copy(run, tmp_path_factory.mktemp("crop") / "run")


def _frames(n=FRAMES, size=(96, 64)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A tiny H.264 video written with PyAV: 7 frames of 96x64 at 10 fps."""
    path = tmp_path_factory.mktemp("vid") / "clip.mp4"
    w = VideoWriter(path, FPS, (96, 64))
    for a in _frames():
        w.write(a)
    w.close()
    return path


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _model_on(run, arrays, size=(32, 32)):
    """The model's normalized output on images resized like the shards (Pillow bilinear)."""
    from kpconv.model.network import load_model

    x = np.stack([np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR), np.float32) for a in arrays])
    return load_model(run / "model.keras")(x, training=False).numpy()


def test_video_every_frame_jsonl_and_dlc_read_back(run, video, tmp_path):
    r = _invoke("predict", run, video)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["frame"] for x in rows] == list(range(FRAMES))
    assert [x["time"] for x in rows] == pytest.approx([i / FPS for i in range(FRAMES)])
    assert {(x["video"], x["width"], x["height"]) for x in rows} == {(str(video), 96, 64)}
    # the numbers are the model's on each decoded frame (decoded again here with PyAV), resized to the
    # shards' 32x32 by the decoder (swscale bilinear, predict's way for whole video frames)
    with av.open(str(video)) as c:
        decoded = [f.to_ndarray(format="rgb24", width=32, height=32, interpolation="BILINEAR")
                   for f in c.decode(video=0)]
    expected = _model_on(run, decoded) * [96, 64]
    got = np.array([[x["keypoints"][n][:2] for n in NAMES] for x in rows])
    assert np.allclose(got, expected, atol=0.01)

    out = tmp_path / "clip.csv"
    r = _invoke("predict", run, video, "--format", "dlc", "-o", out)
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("scorer,kpconv_run,") and lines[1].startswith("bodyparts,nose,nose,nose,left_eye")
    assert lines[2].startswith("coords,x,y,likelihood,x,y,likelihood") and len(lines) == 3 + FRAMES
    assert [line.split(",")[0] for line in lines[3:]] == [str(i) for i in range(FRAMES)]
    # kpconv's own DeepLabCut reader reads it back: one instance per frame, the same coordinates
    res = DlcReader().read([out], ReadContext(IngestOptions(), Report(), tmp_path))
    assert res.meta.keypoints == NAMES
    inst = list(res.instances)
    assert [i.image for i in inst] == [str(i) for i in range(FRAMES)]
    back = np.array([[inst[f].keypoints[n][:2] for n in NAMES] for f in range(FRAMES)])
    # DeepLabCut's convention (pixel centres at integers): ingest's +0.5 gives kpconv's points back
    assert np.allclose(back + 0.5, got, atol=2e-3)
    try:   # and as DeepLabCut reads its own files
        import pandas as pd
    except ImportError:
        return
    df = pd.read_csv(out, header=[0, 1, 2], index_col=0)
    assert list(df.columns.names) == ["scorer", "bodyparts", "coords"] and list(df.index) == list(range(FRAMES))
    assert np.allclose(df.xs("likelihood", axis=1, level="coords").to_numpy(), 1.0)


def test_every_start_end(run, video):
    r = _invoke("predict", run, video, "--every", 2, "--start", 1, "--end", 6)
    assert [json.loads(x)["frame"] for x in r.stdout.splitlines()] == [1, 3, 5]
    r = _invoke("predict", run, video, "--start", "0.25s")
    assert [json.loads(x)["frame"] for x in r.stdout.splitlines()] == [3, 4, 5, 6]
    r = _invoke("predict", run, video, "--start", "x")
    assert r.exit_code == 2 and "expected a frame index (e.g. 120) or a time in seconds" in r.output
    r = _invoke("predict", run, video, "--start", 5, "--end", 2)
    assert r.exit_code == 2 and "--end 2 is not after --start 5" in r.output


def test_draw_video_and_python_api(run, video, tmp_path):
    out = tmp_path / "drawn.mp4"
    r = _invoke("predict", run, video, "--every", 2, "--draw", out, "-o", tmp_path / "p.jsonl")
    assert r.exit_code == 0, r.output
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        rate = c.streams.video[0].average_rate
    assert len(frames) == 4 and frames[0].shape == (64, 96, 3) and float(rate) == pytest.approx(FPS / 2)
    assert not list(tmp_path.glob(".*tmp*"))
    r = _invoke("predict", run, video, tmp_path / "p.jsonl", "--draw", tmp_path / "x.mp4")
    assert r.exit_code == 2 and "needs exactly one video input" in r.output

    import kpconv

    preds = list(kpconv.Predictor(run).predict(str(video), batch_size=3))
    assert [p.frame for p in preds] == list(range(FRAMES)) and len(preds[0].keypoints[0]) == 3
    assert preds[0].confidence == 1.0


def _images(folder: Path):
    rng = np.random.default_rng(5)
    (folder / "sub").mkdir(parents=True)
    arrays = {}
    for name in ("a.png", "a.jpg", "sub/a.png"):
        arrays[name] = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
        Image.fromarray(arrays[name]).save(folder / name, quality=95)
    return arrays


def test_bad_file_among_good_ones_and_draw_names_do_not_collide(run, video, tmp_path):
    data = tmp_path / "in"
    _images(data)
    shutil.copy(video, data / "clip.mp4")
    (data / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "sub" / "broken.mp4").write_bytes(b"not a video")
    out, report, drawn = tmp_path / "p.csv", tmp_path / "report.jsonl", tmp_path / "drawn"
    r = _invoke("predict", run, data, data / "sub", "--format", "csv", "-o", out, "--report", report,
                "--draw", drawn, "--draw-names")
    assert r.exit_code == 1
    assert f"kpconv: error: {data / 'broken.png'}: cannot read image" in r.stderr
    assert f"kpconv: error: {data / 'sub' / 'broken.mp4'}: cannot open video" in r.stderr
    assert "predict: 2 file(s) could not be read (skipped; the others were written)" in r.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    files = [Path(x["file"]).relative_to(data).as_posix() for x in rows]
    assert files == ["a.jpg", "a.png"] + ["clip.mp4"] * FRAMES + ["sub/a.png"]
    assert {"nose_likelihood", "right_foot_likelihood"} <= set(rows[0])
    assert [json.loads(line)["reason"] for line in report.read_text().splitlines()] == \
        ["unreadable_image", "unreadable_video"]
    # every input drawn under its own relative path, in its own format
    got = sorted(p.relative_to(drawn).as_posix() for p in drawn.rglob("*") if p.is_file())
    assert got == ["a.jpg", "a.png", "clip.mp4", "sub/a.png"]
    assert Image.open(drawn / "a.jpg").format == "JPEG" and Image.open(drawn / "a.png").size == (96, 64)


def test_boxes_one_prediction_per_box(crop_run, tmp_path):
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "d.png")
    boxes_csv = tmp_path / "boxes.csv"
    boxes_csv.write_text("image,x,y,w,h,score\nc.png,50,20,40,60,0.9\nc.png,0,0,64,32,0.4\n")
    r = _invoke("predict", crop_run, tmp_path / "c.png", tmp_path / "d.png", "--boxes", boxes_csv)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["instance"], x["bbox"], x["score"]) for x in rows] == [(0, [50, 20, 40, 60], 0.9),
                                                                       (1, [0, 0, 64, 32], 0.4)]
    y = _model_on(crop_run, [np.zeros((32, 32, 3), np.uint8)])[0]
    assert np.allclose([rows[0]["keypoints"][n][:2] for n in NAMES], y * [40, 60] + [50, 20], atol=1e-2)
    assert np.allclose([rows[1]["keypoints"][n][:2] for n in NAMES], y * [64, 32], atol=1e-2)

    # COCO detection results: image ids through a dataset's images, or the file name itself
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps({"images": [{"id": 7, "file_name": "d.png"}],
                                "annotations": [{"image_id": 7, "bbox": [10, 10, 50, 50], "score": 0.8}]}))
    r = _invoke("predict", crop_run, tmp_path / "c.png", tmp_path / "d.png", "--boxes", dets, "--format", "coco")
    coco = json.loads(r.stdout)
    assert [(c["file_name"], c["bbox"], c["box_score"]) for c in coco] == [(str(tmp_path / "d.png"),
                                                                            [10, 10, 50, 50], 0.8)]
    # DeepLabCut's multi-animal layout, one individual per box
    r = _invoke("predict", crop_run, tmp_path / "c.png", "--boxes", boxes_csv, "--format", "dlc")
    lines = r.stdout.splitlines()
    assert lines[1].startswith("individuals,individual1,individual1") and "individual2" in lines[1]
    assert len(lines) == 5 and lines[4].startswith(str(tmp_path / "c.png"))

    # boxes for a run trained on whole images would change nothing: refused
    run_dir = tmp_path / "whole"
    shutil.copytree(crop_run, run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["dataset"]["preprocessing"]["crop"] = "none"
    (run_dir / "config.json").write_text(json.dumps(cfg))
    r = _invoke("predict", run_dir, tmp_path / "c.png", "--boxes", boxes_csv)
    assert r.exit_code == 2 and "trained on whole images" in r.output


def test_bad_boxes_files_are_located(crop_run, tmp_path):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "c.png")
    bad = tmp_path / "b.csv"
    bad.write_text("c.png,1,2,3,4\nc.png,1,2,x,4\n")
    r = _invoke("predict", crop_run, tmp_path / "c.png", "--boxes", bad)
    assert r.exit_code == 1 and f"{bad}:2: field 'w': expected a number, got 'x'" in r.output
    bad.write_text("c.png,1,2,3\n")
    r = _invoke("predict", crop_run, tmp_path / "c.png", "--boxes", bad)
    assert r.exit_code == 1 and f"{bad}:1: expected 5 or 6 columns (image,x,y,w,h[,score]), got 4" in r.output
    bad = tmp_path / "b.json"
    bad.write_text('[{"image_id": "c.png", "bbox": [1, 2, 0, 4]}]')
    r = _invoke("predict", crop_run, tmp_path / "c.png", "--boxes", bad)
    assert r.exit_code == 1 and f"{bad}: record 0: field 'bbox': expected a box with w, h > 0" in r.output


def test_confidence_reaches_every_output(run, tmp_path, monkeypatch):
    """Predictor.infer is the one model call: a confidence it gives reaches csv, dlc, coco and the drawing."""
    _images(tmp_path / "in")
    real = Predictor.infer

    def infer(self, batch):
        xy, conf = real(self, batch)
        conf[:, 0] = 0.2          # the nose is unsure
        xy = xy.copy()
        xy[:, :, 0] = (np.arange(len(NAMES)) + 1) / (len(NAMES) + 1)   # keypoints apart, on a horizontal line
        xy[:, :, 1] = 0.5
        return xy, conf

    monkeypatch.setattr(Predictor, "infer", infer)
    image = tmp_path / "in" / "a.png"
    r = _invoke("predict", run, image, "--format", "coco", "--min-confidence", "0.3")
    kp = json.loads(r.stdout)[0]["keypoints"]
    # every keypoint's x and y, its confidence third: the threshold is --draw's, not the results'
    assert kp[2::3] == [0.2] + [1.0] * (len(NAMES) - 1)
    assert kp[0::3] == pytest.approx([96 * (i + 1) / (len(NAMES) + 1) - 0.5 for i in range(len(NAMES))],
                                     abs=1e-3)   # COCO's convention: kpconv's x - 0.5
    assert json.loads(r.stdout)[0]["score"] == pytest.approx((0.2 + len(NAMES) - 1) / len(NAMES))
    r = _invoke("predict", run, image, "--format", "csv")
    row = list(csv.DictReader(io.StringIO(r.stdout)))[0]
    assert float(row["nose_likelihood"]) == pytest.approx(0.2) and float(row["left_eye_likelihood"]) == 1
    r = _invoke("predict", run, image, "--format", "dlc")
    assert r.stdout.splitlines()[3].split(",")[3] == "0.2000"
    # drawn: the nose (yellow: in no flip pair) and its limbs (yellow: they join it to both sides) only
    # when its confidence reaches --min-confidence
    from kpconv.drawing import MIDDLE

    yellow = {}
    for threshold in ("0.3", "0.1"):
        drawn = tmp_path / f"drawn{threshold}"
        r = _invoke("predict", run, image, "--draw", drawn, "--min-confidence", threshold, "-o", tmp_path / "p.jsonl")
        assert r.exit_code == 0, r.output
        yellow[threshold] = int(np.all(np.asarray(Image.open(drawn / "a.png")) == MIDDLE, axis=-1).sum())
    assert yellow == {"0.3": 0, "0.1": yellow["0.1"]} and yellow["0.1"] > 0


def test_first_batch_is_one_frame(run, video, monkeypatch):
    """The first prediction comes out of a one-frame batch (start-up), the others in batches of batch_size."""
    sizes = []
    real = Predictor.infer

    def infer(self, batch):
        sizes.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(Predictor, "infer", infer)
    preds = list(Predictor(run).predict(str(video), batch_size=4))
    assert sizes == [1, 4, 2] and [p.frame for p in preds] == list(range(FRAMES))


def test_predict_process_keeps_pandas_out_of_keras(run, tmp_path):
    """kpconv predict imports Keras without its optional pandas import (start-up); pandas still works after
    (--format dlc-h5), and a process that imported pandas first keeps it."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys\n"
            "from kpconv.cli import cli\n"
            f"cli.main(['-q', 'predict', {str(run)!r}, {str(tmp_path / 'a.png')!r}, '-o', {str(tmp_path / 'a.jsonl')!r}],"
            " standalone_mode=False)\n"
            "print('pandas' in sys.modules, 'keras' in sys.modules)\n"
            "import pandas\n"
            "from keras.src.trainers.data_adapters import array_slicing\n"
            "print(array_slicing.pandas is None)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "True", "True"]
    assert json.loads((tmp_path / "a.jsonl").read_text())["width"] == 8
    p = subprocess.run([sys.executable, "-c", "import pandas\n" + code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.split() == ["True", "True", "False"], p.stderr


def test_verbosity_options_after_the_command(run, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    for args in (["-q", "predict", run, tmp_path / "a.png"], ["predict", run, tmp_path / "a.png", "-q"],
                 ["predict", "-q", run, tmp_path / "a.png"]):
        r = _invoke(*args)
        assert r.exit_code == 0 and r.stderr == "" and json.loads(r.stdout)["image"] == str(tmp_path / "a.png")
    r = _invoke("predict", run, tmp_path / "a.png")
    assert r.stderr.startswith("predict: 1 instance(s) in 1 image(s)")


def test_quiet_terminal_in_a_real_process(run, tmp_path):
    """`kpconv -q predict` prints nothing on stderr: no TensorFlow, absl, CUDA or oneDNN start-up lines."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    cmd = [sys.executable, "-m", "kpconv.cli", "-q", "predict", str(run), str(tmp_path / "a.png")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0 and p.stderr == "" and json.loads(p.stdout)["width"] == 8
    p = subprocess.run(cmd[:3] + cmd[4:] + [str(tmp_path / "missing.png")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 2 and p.stderr.splitlines()[-1] == \
        "Error: Invalid value for 'INPUT...': Path '%s' does not exist." % (tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    p = subprocess.run(cmd + [str(bad)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1 and len(json.loads(p.stdout.splitlines()[0])["keypoints"]) == len(NAMES)
    assert [line.split(":")[1].strip() for line in p.stderr.splitlines()] == ["error", "error"]
    assert p.stderr.splitlines()[0].startswith(f"kpconv: error: {bad}: cannot read image")
