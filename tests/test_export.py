"""kpconv export: every format runs in TensorFlow / tf.lite.Interpreter and matches model.keras, also
for a run trained with mixed precision; stdout stays empty unless -o -."""
import importlib.util
import json
import sys
import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from click.testing import CliRunner  # noqa: E402

from kpconv.cli import cli  # noqa: E402
from kpconv.model.export import shard_images  # noqa: E402
from kpconv.model.inference import Inference  # noqa: E402
from kpconv.model.network import load_model  # noqa: E402

from _shards import NAMES, write_shards  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp_shards")
    write_shards(out, {"train": 16, "val": 8}, size=(32, 32))
    return out


def _train(shards, run, *extra):
    r = CliRunner().invoke(cli, ["-q", "train", str(shards), "-o", str(run), "--weights", "none", "--alpha", "0.35",
                                 "--epochs", "1", "--batch-size", "8", "--no-augment", *extra])
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory):
    return _train(shards, tmp_path_factory.mktemp("exp") / "run", "--head", "spatial")


def _interpret(path_or_bytes, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kw = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": str(path_or_bytes)}
        interp = tf.lite.Interpreter(**kw)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


# largest keypoint difference allowed, in stored-image pixels (32x32)
TOLERANCE = {"tflite": 1e-3, "tflite-fp16": 0.1, "tflite-int8": 1.5}


def _onnx(path_or_bytes, x):
    """An ONNX export run by onnxruntime, as its users run it."""
    ort = pytest.importorskip("onnxruntime")
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["keypoints"]
    return session.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def reference(run, shards):
    """8 shard images and model.keras's keypoints on them, as the export check runs it (a TensorFlow graph),
    once for every format: the same as Keras's own call."""
    x = shard_images(shards, 8)
    ref = Inference.from_run(run)(x)[..., :2]
    assert np.allclose(ref, load_model(run / "model.keras")(x, training=False).numpy(), atol=1e-5)
    return x, ref


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx"])
def test_export_matches_model_keras(run, reference, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
    out = tmp_path / ("sm" if fmt == "savedmodel" else f"{fmt}.onnx" if fmt == "onnx" else f"{fmt}.tflite")
    r = CliRunner().invoke(cli, ["export", str(run), "--format", fmt, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"export: {fmt} -> {out}")
    assert lines[1].startswith("  largest difference from model.keras on 8 shard image(s): ")
    reported = float(lines[1].split(": ")[1].split()[0])
    x, ref = reference
    if fmt == "savedmodel":
        sm = tf.saved_model.load(str(out))
        got = sm.serve(tf.constant(x)).numpy()
    elif fmt == "onnx":
        got = _onnx(out, x)
        assert not list(tmp_path.glob(".*tmp"))
    else:
        got = _interpret(out, x)
    assert got.shape == (8, len(NAMES), 3) and np.all(got[..., 2] == 1.0)    # x, y, confidence (none: 1)
    diff = np.max(np.hypot(*(np.moveaxis(got[..., :2] - ref, -1, 0) * 32)))
    assert diff <= TOLERANCE.get(fmt, 1e-3) and diff == pytest.approx(reported, rel=0.01, abs=1e-6)


def test_export_to_stdout_and_errors(run, tmp_path):
    r = CliRunner().invoke(cli, ["-q", "export", str(run), "--format", "tflite", "-o", "-", "--check", "0"])
    assert r.exit_code == 0, r.output
    data = r.stdout_bytes
    assert data[4:8] == b"TFL3" and r.stderr == ""
    x = np.zeros((1, 32, 32, 3), np.float32)
    assert np.allclose(_interpret(data, x)[..., :2], load_model(run / "model.keras")(x, training=False).numpy(),
                       atol=1e-4)
    r = CliRunner().invoke(cli, ["export", str(run), "-o", "-"])
    assert r.exit_code == 2 and "a SavedModel is a directory" in r.output
    if importlib.util.find_spec("tf2onnx"):
        r = CliRunner().invoke(cli, ["-q", "export", str(run), "--format", "onnx", "-o", "-", "--check", "0"])
        assert r.exit_code == 0 and r.stderr == "", r.output
        assert np.allclose(_onnx(r.stdout_bytes, x)[..., :2], load_model(run / "model.keras")(x, training=False).numpy(),
                           atol=1e-4)
    with pytest.MonkeyPatch.context() as mp:     # no tf2onnx: exit 2 naming the extra
        mp.setitem(sys.modules, "tf2onnx", None)
        r = CliRunner().invoke(cli, ["export", str(run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
        assert r.exit_code == 2 and "pip install 'kpconv[onnx]'" in r.output and not (tmp_path / "m.onnx").exists()
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("config.json", "model.keras"):
        (moved / name).write_bytes((run / name).read_bytes())
    cfg = json.loads((moved / "config.json").read_text())
    cfg["dataset"]["shard_dir"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(cfg))
    r = CliRunner().invoke(cli, ["export", str(moved), "--format", "tflite-int8"])
    assert r.exit_code == 1 and "the run's shards are not there (needed to calibrate int8): give them with --shards" \
        in r.output
    r = CliRunner().invoke(cli, ["export", str(moved), "--format", "tflite", "--check", "0"])
    assert r.exit_code == 0 and (moved / "model.tflite").is_file()


def test_mixed_precision_run_exports_in_float32(shards, tmp_path):
    run = _train(shards, tmp_path / "run", "--mixed-precision", "--head", "dense", "--export", "tflite")
    assert (run / "model.tflite").is_file()
    x = shard_images(shards, 4)
    ref = load_model(run / "model.keras")(x, training=False).numpy().astype(np.float32)
    # bfloat16 compute on the CPU has ~3 significant digits: a fraction of a pixel at 32x32
    assert np.max(np.abs(_interpret(run / "model.tflite", x)[..., :2] - ref)) * 32 < 0.5
    r = CliRunner().invoke(cli, ["export", str(run), "--format", "tflite-int8", "-o", str(tmp_path / "q.tflite")])
    assert r.exit_code == 0, r.output
    assert _interpret(tmp_path / "q.tflite", x).shape == (4, len(NAMES), 3)


def test_mixed_precision_trains_the_heatmap_head(shards, tmp_path):
    """The default head under --mixed-precision on the CPU (bfloat16): it stopped with an XLA traceback
    ("floating point types of different precisions") in the upsampling's gradient."""
    run = _train(shards, tmp_path / "run", "--mixed-precision", "--head", "heatmap", "--crop-size", "0")
    out = Inference.from_run(run)(shard_images(shards, 2))
    assert out.shape == (2, len(NAMES), 3) and np.all(np.isfinite(out))


def test_heatmap_head_exports_its_decoded_points_and_confidence(shards, tmp_path):
    """The heatmap head's export holds the decoding and the calibrated confidence: the same
    (B, K, 3) as the run's inference model, at the shards' size."""
    pytest.importorskip("tf2onnx")
    run = _train(shards, tmp_path / "run", "--head", "heatmap", "--crop-size", "0", "--export", "tflite",
                 "--export", "onnx")
    x = shard_images(shards, 4)
    ref = Inference.from_run(run)(x)
    loaded = tf.saved_model.load(str(run / "saved_model"))    # kept: its variables live as long as it does
    sm = loaded.serve(tf.constant(x)).numpy()
    lite = _interpret(run / "model.tflite", x)
    onnx = _onnx(run / "model.onnx", x)
    for got in (sm, lite, onnx):
        assert got.shape == (4, len(NAMES), 3)
        assert np.max(np.abs(got[..., :2] - ref[..., :2])) * 32 < 0.05 and np.allclose(got[..., 2], ref[..., 2],
                                                                                         atol=1e-3)
    # int8: the body quantized, the decoding (argmax, sub-pixel fit, confidence) kept in float32
    r = CliRunner().invoke(cli, ["export", str(run), "--format", "tflite-int8", "-o", str(tmp_path / "q.tflite")])
    assert r.exit_code == 0, r.output
    assert "(median " in r.stderr and ", mean " in r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interp = tf.lite.Interpreter(model_path=str(tmp_path / "q.tflite"))
    types = {}
    for op in interp._get_ops_details():
        for t in op["outputs"]:
            d = interp._get_tensor_details(t, 0)
            # the int8 heatmaps may be moved (QUANTIZE requantizes, RESHAPE, GATHER) without loss; every
            # computation of the decoding and the op that packs x, y, confidence are in float32
            kind = ("decode" if "/decode" in d["name"] and op["op_name"] not in ("QUANTIZE", "RESHAPE", "GATHER")
                    else "pack" if op["op_name"] == "PACK" else "body")
            types.setdefault(kind, set()).add(np.dtype(d["dtype"]).name)
    assert types["decode"] <= {"float32", "int32", "bool"} and types["pack"] == {"float32"} and "int8" in types["body"]
    assert _interpret(tmp_path / "q.tflite", x).shape == (4, len(NAMES), 3)
