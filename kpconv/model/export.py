"""``kpconv export``: a trained run's ``model.keras`` as a SavedModel, a TFLite or an ONNX model (:data:`FORMATS`;
docs/predict.md).

Every format holds the model in its inference form (the heatmap head's decoding and calibrated confidence
included), traced once (:func:`_serve_function`): float32 ``(None, H, W, 3)`` pixels in ``[0, 255]`` in,
``(None, K, 3)`` out (``x, y`` normalized to the stored image, confidence). A run trained with mixed precision
is rebuilt in float32 first (TFLite has no bfloat16 kernels). Every export is checked in its own runtime against
``model.keras`` (run by :class:`kpconv.model.inference.Inference`) on a few shard images:
:attr:`ExportResult.max_diff_px` is the largest keypoint distance, in pixels of the stored image.
"""
from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import ExportError
from .onnxrt import OnnxFunction, require_onnx, to_onnx
from ..quiet import stdout_to_stderr

FORMATS = ("savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx")
# in the run directory
DEFAULT_OUTPUT = {"savedmodel": "saved_model", "tflite": "model.tflite", "tflite-fp16": "model-fp16.tflite",
                  "tflite-int8": "model-int8.tflite", "onnx": "model.onnx"}
CALIBRATION_IMAGES = 100


@dataclass
class ExportResult:
    format: str
    path: str                          # "-" for stdout
    bytes: int = 0                     # size of a TFLite model
    max_diff_px: Optional[float] = None
    mean_diff_px: Optional[float] = None
    median_diff_px: Optional[float] = None
    checked: int = 0                   # shard images compared with model.keras
    image_size: Tuple[int, int] = (0, 0)   # stored image (width, height)


def _float32_policies(obj):
    """A Keras config with every dtype policy replaced by float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(obj.get("config"), dict):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_policies(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_policies(v) for v in obj]
    return obj


def float32_model(model):
    """``model`` itself when it computes in float32, else the same model rebuilt in float32 with its weights."""
    if all(getattr(layer, "dtype_policy", None) is None or layer.dtype_policy.name == "float32"
           for layer in model._flatten_layers()):
        return model
    clone = model.__class__.from_config(_float32_policies(model.get_config()))
    clone.set_weights(model.get_weights())
    return clone


def _serve_function(model, h: int, w: int):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, h, w, 3), tf.float32, name="image")])
    def serve(images):
        return model(images, training=False)

    return serve


def _save_savedmodel(model, target: Path, image_hw) -> None:
    import tensorflow as tf

    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    # tf.saved_model.save of a traced call, not model.export: Keras 3.15's export computes wrong values
    # for the spatial head (a nested backbone with several outputs), checked in tests/test_export.py
    serve = _serve_function(model, *image_hw)
    module = tf.Module()
    module.model = model
    module.serve = serve
    with stdout_to_stderr():
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": serve})
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _tflite_bytes(model, fmt: str, calibration: Optional[np.ndarray], image_hw) -> bytes:
    import tensorflow as tf
    from tensorflow.lite.python.convert_phase import ConverterError
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    # from the traced function with its variables frozen into constants, not from_keras_model (which
    # prints every TensorSpec on stdout) nor from the SavedModel (whose variables stay unset)
    frozen = convert_variables_to_constants_v2(_serve_function(model, *image_hw).get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if fmt == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative():
            for i in range(len(calibration)):
                yield [calibration[i:i + 1]]

        converter.representative_dataset = representative
    try:
        with stdout_to_stderr(), warnings.catch_warnings():
            # "Statistics for quantized inputs were expected": the input stays float32 on purpose
            warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
            # the debugger's own tf.lite.Interpreter: still the one TensorFlow ships
            warnings.filterwarnings("ignore", ".*tf.lite.Interpreter is deprecated", UserWarning)
            if fmt == "tflite-int8":
                # the heatmap decoding (HeatmapDecode: argmax, sub-pixel refinement, calibrated confidence) stays
                # float32: quantized, its log and quadratic fit moved the points by 1.7 px (median) from
                # model.keras on mirror-mouse video frames; in float 0.48 px, for 2.3 KB less (a 320x240
                # run, benchmarks/bench_predict.py). The int8 body's own error remains: docs/predict.md.
                # DIV stays float32 (the heatmap decode's sub-pixel offset): TFLite's int8 DIV kernel
                # aborts ("div.cc: data[i] != 0 was not true") when a denominator quantizes to 0, which
                # frames unlike the calibration images give: a heatmap run trained on 32x32 synthetic
                # shards crashed on mirror-mouse's video frames; with DIV in float it runs them, with the
                # same difference from the model on its shards (1.4 px) and size (130,936 bytes, 131,472 before)
                debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=representative,
                    debug_options=tf.lite.experimental.QuantizationDebugOptions(
                        denylisted_ops=["DIV"], denylisted_nodes=_decode_nodes(frozen)))
                return debugger.get_nondebug_quantized_model()
            return converter.convert()
    except ConverterError as e:
        raise ExportError(f"the TFLite converter failed for --format {fmt}: {str(e).splitlines()[0]}") from e


def _decode_nodes(frozen) -> list:
    """The names of the TFLite ops (their output tensors) of the ``decode`` layer
    (:class:`kpconv.model.network.HeatmapDecode`) in the float conversion of ``frozen``: the nodes an int8
    export keeps in float32."""
    import re

    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interp = tf.lite.Interpreter(model_content=tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())
    layer = re.compile(r"^[^/]+/decode(_\d+)?/")
    # and the op that writes the output (the decoding's last op, renamed after the traced function's output):
    # quantized, it stores x, y in [0, 1] in 256 steps (1.25 px on a 320-pixel-wide image)
    names = {d["name"] for d in interp.get_output_details()}
    for op in interp._get_ops_details():   # (the interpreter's only listing of ops and their tensors)
        for t in op["outputs"]:
            name = interp._get_tensor_details(t, 0)["name"]
            if layer.match(name):
                names.add(name)
    return sorted(names)


def run_tflite(model_content: bytes, images: np.ndarray) -> np.ndarray:
    """Run a TFLite model (float32 in and out) on ``images`` (B, H, W, 3)."""
    import tensorflow as tf

    with warnings.catch_warnings():   # "tf.lite.Interpreter is deprecated": still the one TensorFlow ships
        warnings.simplefilter("ignore", UserWarning)
        interp = tf.lite.Interpreter(model_content=model_content)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], images.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], images.astype(np.float32))
    interp.invoke()
    return np.asarray(interp.get_tensor(interp.get_output_details()[0]["index"]), np.float32)


def shard_images(shard_dir, n: int) -> np.ndarray:
    """Up to ``n`` stored images (float32 pixels) of the shards: the validation split when there is
    one (images the model did not fit), else the first split; shards of ``--image-size none``: those of the
    first batch's size only."""
    from . import pipeline
    from ..data.dataset_info import read_dataset_info

    info = read_dataset_info(shard_dir, any_size=True)
    splits = [s for s in ("val", "validation", "test") if s in info.splits and info.splits[s].num_records]
    splits += [s for s in info.splits if info.splits[s].num_records and s not in splits]
    if not splits:
        raise ExportError(f"{shard_dir}: the shards hold no records")
    out, have = [], 0
    for split in splits:
        for images, _ in pipeline.load(shard_dir, split, min(n, 64)):
            if out and images.shape[1:] != out[0].shape[1:]:
                continue
            out.append(images.numpy())
            have += len(out[-1])
            if have >= n:
                return np.concatenate(out)[:n]
    return np.concatenate(out)[:n]


def export_run(run_dir, fmt: str = "savedmodel", output: Optional[str] = None, shard_dir=None,
               check_images: int = 8) -> ExportResult:
    """Export ``run_dir/model.keras`` as ``fmt`` (see :data:`FORMATS`) to ``output`` (default in the run
    directory; ``-``: a TFLite model to stdout) and compare it with ``model.keras`` on
    ``check_images`` images of the run's shards (or ``shard_dir``)."""
    from .inference import Inference
    from ..data.manifest import atomic_output

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}' (known: {', '.join(FORMATS)})")
    if output == "-" and fmt == "savedmodel":
        raise ExportError("a SavedModel is a directory: it cannot be written to stdout")
    if fmt == "onnx":
        require_onnx()
    run = Path(run_dir)
    inference = Inference.from_run(run)
    config = inference.config
    model = float32_model(inference.model)
    # the shards' size: the heatmap head takes any size, an export has one input shape (a run of frames at
    # their own size, --image-size none: the SavedModel takes any size, the others the check images')
    w, h = config["dataset"]["image_size"] or (None, None)

    images = None
    wanted = max(check_images, CALIBRATION_IMAGES if fmt == "tflite-int8" else 0)
    if wanted:
        shards = Path(shard_dir or config["dataset"].get("shard_dir") or "")
        if not (shards / "dataset_info.json").is_file():
            raise ExportError(f"{shards}: the run's shards are not there (needed to "
                              + ("calibrate int8" if fmt == "tflite-int8" else "check the export")
                              + "): give them with --shards DIR" + ("" if fmt == "tflite-int8" else " or use --check 0"))
        images = shard_images(shards, wanted)
        if w is None and fmt != "savedmodel":
            h, w = images.shape[1:3]
    if w is None and fmt != "savedmodel":
        raise ExportError(f"{run}: its frames have no one size (--image-size none): a {fmt} export needs the "
                          f"shards' images for its input size (give them with --shards DIR)")

    target = Path(output) if output and output != "-" else run / DEFAULT_OUTPUT[fmt]
    result = ExportResult(fmt, "-" if output == "-" else str(target), image_size=(w, h))
    if fmt == "savedmodel":
        _save_savedmodel(model, target, (h, w))
        run_export = None
        if check_images:
            import tensorflow as tf

            loaded = tf.saved_model.load(str(target))
            run_export = lambda x: loaded.serve(tf.constant(x)).numpy()  # noqa: E731
    else:
        if fmt == "onnx":   # converted from the traced function the other formats export
            # what it is made from, in its metadata: kpconv predict --runtime onnx runs it only while that holds
            data = to_onnx(_serve_function(model, h, w), (h, w), "keypoints", metadata=inference.onnx_stamp((h, w)))
            run_export = OnnxFunction(data)
        else:
            data = _tflite_bytes(model, fmt, images, (h, w))
            run_export = lambda x: run_tflite(data, x)  # noqa: E731
        result.bytes = len(data)
        with atomic_output("-" if output == "-" else str(target), "wb") as f:
            f.write(data)
    if check_images and images is not None:
        # the export includes the decoding: its (B, K, 3) output is compared with Inference's
        x = images[:check_images]
        ref, got = inference(x), run_export(np.asarray(x, np.float32))
        xw, xh = x.shape[2], x.shape[1]
        result.image_size = (xw, xh)
        d = np.hypot((got[..., 0] - ref[..., 0]) * xw, (got[..., 1] - ref[..., 1]) * xh)
        result.max_diff_px, result.mean_diff_px, result.median_diff_px = (float(np.max(d)), float(np.mean(d)),
                                                                          float(np.median(d)))
        result.checked = len(x)
    return result
