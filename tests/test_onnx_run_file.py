"""--runtime onnx from a run's own model.onnx (issue 17): the file's record of what it was made from
(kpconv.model.onnxrt.stamp), no TensorFlow on that path, a stale file never used, a read-only run directory.
Untrained tiny heatmap models (random weights: every runtime decodes the same)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")

from kpconv.model.inference import Inference  # noqa: E402
from kpconv.model.onnxrt import OnnxFunction, stamp, stamp_mismatch  # noqa: E402

NAMES = [f"k{i}" for i in range(4)]
HW = (64, 96)
REPO = Path(__file__).resolve().parents[1]


def _save_heatmap_model(path, seed):
    keras = pytest.importorskip("keras")
    from kpconv.model.network import ModelConfig, build_model
    from kpconv.model.run import save_model

    keras.utils.set_random_seed(seed)
    save_model(build_model(ModelConfig(len(NAMES), HW, backbone="unet", alpha=0.25, head="heatmap",
                                       head_channels=8)), path)


def _frames(n, hw=HW, seed=1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:hw[0], :hw[1]]
    out = []
    for _ in range(n):
        a = rng.integers(0, 40, hw + (3,)).astype(np.float32)
        cx, cy = rng.uniform(0.2, 0.8) * hw[1], rng.uniform(0.2, 0.8) * hw[0]
        a += 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (hw[0] / 10) ** 2))[..., None]
        out.append(np.clip(a, 0, 255).astype(np.uint8))
    return np.stack(out)


def _px(a, b, hw=HW):
    return float(np.max(np.hypot((a[..., 0] - b[..., 0]) * hw[1], (a[..., 1] - b[..., 1]) * hw[0])))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A single-model heatmap run directory as kpconv train writes one (model.keras, config.json), no model.onnx."""
    run = tmp_path_factory.mktemp("onnx_run") / "run"
    run.mkdir()
    _save_heatmap_model(run / "model.keras", seed=0)
    config = {"dataset": {"keypoints": NAMES, "skeleton": [], "flip_pairs": [[0, 1]], "image_size": [HW[1], HW[0]],
                          "preprocessing": {"size": [HW[1], HW[0]], "resize": "stretch", "crop": "none"}},
              "model": {"head": "heatmap"}, "options": {"augment": True, "augment_flip": 0.5},
              "calibration": {"params": [4.0, -2.0]}}
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture
def run(base_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def test_stamp_mismatch_tells_stale_from_another_variant():
    s = stamp("ab" * 32, [4.0, -2.0], [1, 0, 2], (64, 96))
    assert json.loads(s["kpconv.input_hw"]) == [64, 96] and json.loads(s["kpconv.flip_permutation"]) == [1, 0, 2]
    assert stamp_mismatch(s, s) is None
    assert stamp_mismatch({}, s) == "unstamped"
    assert stamp_mismatch(stamp("cd" * 32, [4.0, -2.0], [1, 0, 2], (64, 96)), s) == "model"
    assert stamp_mismatch(stamp("ab" * 32, [3.0, -2.0], [1, 0, 2], (64, 96)), s) == "model"
    assert stamp_mismatch(stamp("ab" * 32, [4.0, -2.0], None, (64, 96)), s) == "variant"
    assert stamp_mismatch(stamp("ab" * 32, [4.0, -2.0], [1, 0, 2], (32, 96)), s) == "variant"


@pytest.mark.slow
def test_export_file_is_run_as_it_is_with_tensorflows_keypoints(run):
    from kpconv.model.export import export_run

    export_run(run, "onnx", check_images=0)
    meta = OnnxFunction(run / "model.onnx").metadata
    inf = Inference.from_run(run, runtime="onnx")
    assert stamp_mismatch(meta, inf.onnx_stamp(HW)) is None
    assert json.loads(meta["kpconv.flip_permutation"]) == [1, 0, 2, 3]      # the run's default: flip test on
    x = _frames(5)
    got = inf(x)
    assert inf._trained is None and inf._model is None      # model.keras never loaded
    ref = Inference.from_run(run)(x)
    assert got.shape == ref.shape == (5, len(NAMES), 3)
    assert _px(got, ref) < 0.05 and np.allclose(got[..., 2], ref[..., 2], atol=1e-4)


@pytest.mark.slow
def test_predict_runtime_onnx_imports_no_tensorflow(run, tmp_path):
    """The whole command, in its own process: with the run's model.onnx, neither TensorFlow, Keras nor tf2onnx
    is imported (python -X importtime lists every import)."""
    from kpconv.model.video import VideoWriter

    Inference.from_run(run, runtime="onnx")(_frames(1))      # converts and writes run/model.onnx (none there)
    assert (run / "model.onnx").is_file()
    video = tmp_path / "clip.mp4"
    w = VideoWriter(video, 10, (HW[1], HW[0]))
    for a in _frames(4, seed=2):
        w.write(a)
    w.close()
    out = tmp_path / "p.jsonl"
    code = ("import sys; from kpconv.cli import main; sys.argv = ['kpconv', '-q', 'predict'] + sys.argv[1:]; "
            "main()")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", code, str(run), str(video), "--runtime", "onnx",
                        "-o", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and "kpconv.model.inference" in imported
    assert not {"tensorflow", "keras", "tf2onnx"} & imported
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["frame"] for p in lines] == [0, 1, 2, 3]


@pytest.mark.slow
def test_stale_file_is_converted_again_and_replaced(run, caplog):
    from kpconv.model.export import export_run

    export_run(run, "onnx", check_images=0)
    old = (run / "model.onnx").read_bytes()
    _save_heatmap_model(run / "model.keras", seed=7)       # trained again: the export is stale
    x = _frames(4)
    with caplog.at_level(logging.WARNING, logger="kpconv.model.inference"):
        got = Inference.from_run(run, runtime="onnx")(x)
    assert any("made from another model.keras" in r.getMessage() for r in caplog.records)
    ref = Inference.from_run(run)(x)
    assert _px(got, ref) < 0.05
    new = (run / "model.onnx").read_bytes()
    assert new != old                                      # rewritten, for the new model
    inf = Inference.from_run(run, runtime="onnx")
    assert _px(inf(x), ref) < 0.05 and inf._model is None  # and used as it is from then on


@pytest.mark.slow
def test_another_variant_is_converted_and_the_file_kept(run):
    from kpconv.model.export import export_run

    export_run(run, "onnx", check_images=0)
    old = (run / "model.onnx").read_bytes()
    x = _frames(3)
    got = Inference.from_run(run, runtime="onnx", flip_test=False)(x)          # no flip test: not the file's
    assert _px(got, Inference.from_run(run, flip_test=False)(x)) < 0.05
    x2 = _frames(2, hw=(32, 48))                                              # another input size
    inf = Inference.from_run(run, runtime="onnx")
    assert _px(inf(x2), Inference.from_run(run)(x2), hw=(32, 48)) < 0.05
    assert (run / "model.onnx").read_bytes() == old      # a valid export of another variant is not replaced


@pytest.mark.slow
def test_read_only_run_directory_still_predicts(run, monkeypatch):
    x = _frames(3)
    ref = Inference.from_run(run)(x)
    os.chmod(run, 0o555)
    try:
        if os.geteuid() == 0:       # root writes anyway: the check the library makes says no
            monkeypatch.setattr("kpconv.model.inference.os.access", lambda p, mode: False)
        got = Inference.from_run(run, runtime="onnx")(x)
    finally:
        os.chmod(run, 0o755)
    assert _px(got, ref) < 0.05
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.keras"]


@pytest.mark.parametrize("runtime", ["tf", "onnx"])
def test_a_run_without_model_keras_is_the_same_clear_error_in_both_runtimes(tmp_path, runtime):
    from kpconv.errors import TrainError

    (tmp_path / "config.json").write_text(json.dumps({"dataset": {"keypoints": ["a"], "image_size": [32, 32]},
                                                      "model": {"head": "heatmap"}}))
    with pytest.raises(TrainError, match="model.keras: no model file"):
        Inference.from_run(tmp_path, runtime=runtime)
