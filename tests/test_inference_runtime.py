"""kpconv.model.inference.Inference's runtimes (--runtime tf|onnx) and the multi-instance predictor's batching:
untrained tiny heatmap models (random weights: the decode and the two stages run the same either way)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
av = pytest.importorskip("av")
from click.testing import CliRunner  # noqa: E402

from kpconv.cli import cli  # noqa: E402
from kpconv.model.inference import Inference  # noqa: E402
from kpconv.model.network import ModelConfig, build_model  # noqa: E402
from kpconv.model.video import VideoWriter  # noqa: E402

NAMES = [f"k{i}" for i in range(5)]


def _heatmap_model(k, hw, seed=0):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(seed)
    return build_model(ModelConfig(k, hw, backbone="unet", alpha=0.25, head="heatmap", head_channels=8))


def _frames(n, hw, seed=1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    out = []
    for _ in range(n):      # smooth blobs, not noise: clear heatmap peaks
        a = rng.integers(0, 40, (hw[0], hw[1], 3)).astype(np.float32)
        for _ in range(2):
            cx, cy = rng.uniform(0.2, 0.8) * hw[1], rng.uniform(0.2, 0.8) * hw[0]
            a += 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (hw[0] / 10) ** 2))[..., None]
        out.append(np.clip(a, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_onnx_runtime_gives_the_keypoints_of_tensorflow():
    model = _heatmap_model(len(NAMES), (64, 96))
    x = _frames(5, (64, 96))
    ref = Inference(model, [4.0, -2.0], batch_size=4)(x)
    got = Inference(model, [4.0, -2.0], batch_size=4, runtime="onnx")(x)
    assert got.shape == ref.shape == (5, len(NAMES), 3)
    # pixels of the 96x64 input: float32 round-off only
    assert np.max(np.hypot((got[..., 0] - ref[..., 0]) * 96, (got[..., 1] - ref[..., 1]) * 64)) < 0.05
    assert np.allclose(got[..., 2], ref[..., 2], atol=1e-4)
    hm_tf = Inference(model, heatmaps=True)(x)
    hm_onnx = Inference(model, heatmaps=True, runtime="onnx")(x)
    assert hm_onnx.shape == hm_tf.shape and np.allclose(hm_onnx, hm_tf, atol=1e-4)


def test_tf_runtime_is_one_graph_for_every_batch_size_and_agrees_with_xla():
    """--runtime tf runs a graph traced once for any batch size (no XLA compile per shape); XLA
    (jit_compile=True, the way before) gives the same keypoints within float32 round-off."""
    model = _heatmap_model(len(NAMES), (64, 96))
    x = _frames(6, (64, 96))
    inf = Inference(model, [4.0, -2.0], batch_size=4)
    got = np.concatenate([inf(x[:1]), inf(x[1:])])      # batches of 1, then 4 and 1
    assert got.shape == (6, len(NAMES), 3)
    # uint8 frames go in as they are (the graph casts them): one graph for them, one for float input
    assert list(inf._compiled) == [((64, 96), True)]
    assert inf._compiled[((64, 96), True)].experimental_get_tracing_count() == 1
    xf = x.astype(np.float32)
    assert np.array_equal(np.concatenate([inf(xf[:1]), inf(xf[1:])]), got)
    assert list(inf._compiled) == [((64, 96), True), ((64, 96), False)]
    xla = Inference(model, [4.0, -2.0], batch_size=4, jit_compile=True)
    ref = xla(x)
    assert xla._compiled[((64, 96), False)].experimental_get_tracing_count() == 2    # XLA: shapes 4 and 2 (padded)
    assert np.max(np.hypot((got[..., 0] - ref[..., 0]) * 96, (got[..., 1] - ref[..., 1]) * 64)) < 0.05
    assert np.allclose(got[..., 2], ref[..., 2], atol=1e-4)
    assert Inference(model, runtime="onnx", jit_compile=True).jit_compile is False   # (tf's option only)


def test_unknown_or_missing_runtime_is_an_error(monkeypatch):
    from kpconv.errors import MissingDependency, TrainError

    model = _heatmap_model(2, (32, 32))
    with pytest.raises(TrainError, match="unknown runtime 'tflite'"):
        Inference(model, runtime="tflite")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r"--runtime onnx needs .*kpconv\[onnx\]"):
        Inference(model, runtime="onnx")


def _video(path: Path, frames) -> Path:
    w = VideoWriter(path, 10, (frames.shape[2], frames.shape[1]))
    for a in frames:
        w.write(a)
    w.close()
    return path


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    """A two-stage run directory as kpconv train writes one, with untrained tiny models."""
    from kpconv.model.run import save_model

    run = tmp_path_factory.mktemp("multi_rt") / "run"
    run.mkdir()
    save_model(_heatmap_model(1, (64, 64), seed=1), run / "centroid.keras")
    save_model(_heatmap_model(len(NAMES), (32, 32), seed=2), run / "model.keras")
    config = {"dataset": {"keypoints": NAMES, "skeleton": [], "flip_pairs": [], "image_size": None},
              "calibration": {"params": [4.0, -2.0]}, "score": "product",
              "stages": [{"name": "centroid", "model": "centroid.keras", "scale": 0.5, "stride": 4,
                          "peak_threshold": 0.0, "max_instances": 2},
                         {"name": "instance", "model": "model.keras", "crop": 32, "scale": 1.0, "stride": 4}]}
    (run / "config.json").write_text(json.dumps(config))
    return run


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_multi_instance_predict_both_runtimes_and_read_ahead(multi_run, tmp_path):
    from kpconv.model.multi import MultiPredictor
    from kpconv.model.video import FrameSelection

    frames = _frames(6, (96, 128), seed=3)
    video = _video(tmp_path / "clip.mp4", frames)
    p = MultiPredictor(multi_run, batch_size=4)
    preds = list(p.predict(str(video)))
    # every frame predicted once, in order, through the producer thread; batches of 4 then 2
    assert sorted({q.frame for q in preds}) == list(range(6))
    assert [q.frame for q in preds] == sorted(q.frame for q in preds)
    assert all(len(q.keypoints) == len(NAMES) for q in preds)
    # the library call equals find() on the decoded frames
    from kpconv.model.video import frames as decode

    decoded = np.stack([a for _, _, a in decode(str(video))])
    direct = [f for fs in p.find(decoded[:4]) + p.find(decoded[4:]) for f in fs]
    assert np.allclose([q.keypoints for q in preds], [f.keypoints for f in direct], atol=1e-4)
    # --runtime onnx: both stages in onnxruntime, the same instances and keypoints
    runner = CliRunner()
    for rt in ("tf", "onnx"):
        r = runner.invoke(cli, ["-q", "predict", str(multi_run), str(video), "--runtime", rt, "-o",
                                str(tmp_path / f"{rt}.jsonl")])
        assert r.exit_code == 0, r.output
    a, b = _jsonl(tmp_path / "tf.jsonl"), _jsonl(tmp_path / "onnx.jsonl")
    assert [(x["frame"], x["instance"]) for x in a] == [(x["frame"], x["instance"]) for x in b]
    ka = np.array([[x["keypoints"][n] for n in NAMES] for x in a], np.float64)
    kb = np.array([[x["keypoints"][n] for n in NAMES] for x in b], np.float64)
    assert np.median(np.hypot(*(ka - kb)[..., :2].reshape(-1, 2).T)) < 0.01
    # a selection reaches the producer thread
    assert {q.frame for q in p.predict(str(video), frames=FrameSelection(start=2, end=4))} == {2, 3}


def test_predict_runtime_onnx_without_onnxruntime_exits_2(multi_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    img = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(_frames(1, (64, 64))[0]).save(img)
    r = CliRunner().invoke(cli, ["predict", str(multi_run), str(img), "--runtime", "onnx"])
    assert r.exit_code == 2 and "pip install 'kpconv[onnx]'" in r.output


# ---------------------------------------------------------------- whole frames resized by the video decoder
def _pil_resize(a, size):
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.BILINEAR), np.float32)


def test_video_frames_scaled_by_the_decoder_match_pillow(tmp_path):
    from kpconv.model import video

    frames = _frames(3, (96, 128), seed=4)
    path = _video(tmp_path / "v.mp4", frames)
    full = [a for _, _, a in video.frames(str(path))]
    small = [a for _, _, a in video.frames(str(path), size=(64, 48))]
    assert [a.shape for a in small] == [(48, 64, 3)] * 3 and small[0].dtype == np.uint8
    for f, s in zip(full, small):
        # swscale's bilinear (antialiased when shrinking) against Pillow's: within a few levels of 255
        assert np.abs(s.astype(np.float32) - _pil_resize(f, (64, 48))).mean() < 3.0


@pytest.fixture(scope="module")
def dense_run(tiny_dense_run):
    """The session's tiny trained run (conftest.py), read only."""
    return tiny_dense_run


def test_prepare_a_frame_the_decoder_resized(dense_run):
    from kpconv.model.inference import image_options

    inf = Inference.from_run(dense_run)
    inf.config["dataset"]["preprocessing"].update(resize="pad", size=[32, 32])
    inf.options = image_options(inf.config)
    frame = _frames(1, (64, 96), seed=5)[0]
    assert inf.scaled_size(96, 64) == (32, 21)
    ref, t_ref, wh = inf.prepare(frame)
    small = _pil_resize(frame, (32, 21)).round().astype(np.uint8)
    got, t_got, wh2 = inf.prepare(small, None, (96, 64))
    assert wh == wh2 == (96, 64) and got.shape == ref.shape == (32, 32, 3)
    assert np.allclose(t_got, t_ref)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1          # the same Pillow resize; padding 128
    assert (got[:5] == 128).all() and (got[-5:] == 128).all()
    with pytest.raises(ValueError, match="not the whole-frame resize"):
        inf.prepare(small[:, :30], None, (96, 64))


@pytest.mark.slow
def test_predict_video_decoder_resize_agrees_with_pillow(dense_run, tmp_path):
    from kpconv.model.predict import Predictor

    video = _video(tmp_path / "v.mp4", _frames(6, (96, 128), seed=6))
    p = Predictor(dense_run)
    assert p.inference.scaled_size(128, 96) == (32, 32)      # (the tiny run's 32x32 shards, stretched)
    out = {}
    for way in (True, False):
        p.decoder_resize = way
        out[way] = np.array([q.keypoints for q in p.predict(str(video))])
    assert out[True].shape == out[False].shape == (6, 5, 3)
    d = np.hypot(*(out[True][..., :2] - out[False][..., :2]).reshape(-1, 2).T)
    # a regression head (continuous in its input): frames of 128x96, keypoints within 0.1 px (0.011 measured)
    assert d.max() < 0.1, d
