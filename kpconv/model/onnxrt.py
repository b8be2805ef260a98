"""ONNX conversion and ONNX Runtime: one traced ``tf.function`` converted by ``tf2onnx`` and run by
``onnxruntime`` (CPU). :mod:`kpconv.model.export` writes such a model to a file (``kpconv export --format onnx``);
:class:`kpconv.model.inference.Inference` runs one in memory (``kpconv predict --runtime onnx``), converted once
per input size when it is first needed (about 1-2 s per model on 2 CPU cores).

Why a second runtime at all: on this project's 2-core CPU, the same graph runs faster in onnxruntime
than compiled by TensorFlow (XLA): the mirror-mouse heatmap model 295 frames/s against 107, the
two-flies centroid model about 3.7x and the centred-instance model about 1.3x (benchmarks/bench_predict.py,
benchmarks/bench_multi.py; docs/benchmarks.md). The outputs agree within float32 round-off. (Those figures
are against XLA; ``--runtime tf`` now runs a TensorFlow graph, about twice XLA's rate on this CPU, which
narrows the gap: mirror-mouse's model 85 against 69 frames/s in one loaded run, docs/benchmarks.md "Start-up".)

Provenance (:func:`stamp`, :func:`stamp_mismatch`): every file converted here records in its ``metadata_props``
what it was made from: ``model.keras``'s sha256, the calibration, the test-time flip permutation and the input
size. A run directory's ``model.onnx`` is run as it is (onnxruntime only, no TensorFlow imported) only when
that record matches the run and the input; a file made from another ``model.keras`` is never used.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sys
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from ..errors import ExportError, MissingDependency
from ..quiet import stdout_to_stderr

# ONNX opset: 17 is read by every onnxruntime since 1.13 (2022) and holds every op tf2onnx 1.17 emits
# for these models
ONNX_OPSET = 17
ONNX_HINT = "pip install 'kpconv[onnx]' (tf2onnx and onnxruntime)"


def _installed(name: str) -> bool:
    # found without importing it (tf2onnx imports TensorFlow: 2-3 s that a run's own model.onnx never needs)
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def require_onnx(what: str = "--format onnx") -> None:
    """Raise :class:`MissingDependency` (exit 2) unless tf2onnx and onnxruntime are installed (neither is
    imported here)."""
    for name in ("tf2onnx", "onnxruntime"):
        if not _installed(name):
            raise MissingDependency(f"{what} needs tf2onnx and onnxruntime (no module named '{name}'): {ONNX_HINT}")


# ------------------------------------------------------------------------------------------- provenance
STAMP_KEYS = ("kpconv.model_sha256", "kpconv.calibration", "kpconv.flip_permutation", "kpconv.input_hw")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stamp(model_sha256: str, calibration: Optional[Sequence[float]], flip_permutation: Optional[Sequence[int]],
          input_hw: Sequence[int]) -> Dict[str, str]:
    """What an ONNX model of a run is made from, as its ``metadata_props`` (strings): ``model.keras``'s sha256,
    the calibration parameters, the test-time flip permutation (null: none) and the input (height, width)."""
    return {"kpconv.model_sha256": model_sha256,
            "kpconv.calibration": json.dumps(None if calibration is None else [float(v) for v in calibration]),
            "kpconv.flip_permutation": json.dumps(None if flip_permutation is None else [int(v) for v in flip_permutation]),
            "kpconv.input_hw": json.dumps([int(v) for v in input_hw])}


def stamp_mismatch(metadata: Dict[str, str], wanted: Dict[str, str]) -> Optional[str]:
    """None when ``metadata`` (an ONNX model's) records ``wanted``, else what differs: ``"unstamped"`` (no
    record: not written by this kpconv), ``"model"`` (another model.keras or calibration: stale) or
    ``"variant"`` (the same model for another input size or test-time flip)."""
    if not all(k in metadata for k in STAMP_KEYS):
        return "unstamped"
    if any(metadata[k] != wanted[k] for k in ("kpconv.model_sha256", "kpconv.calibration")):
        return "model"
    if any(metadata[k] != wanted[k] for k in STAMP_KEYS):
        return "variant"
    return None


def to_onnx(function: Callable, input_hw: Sequence[int], output: str,
            metadata: Optional[Dict[str, str]] = None) -> bytes:
    """``function`` (a ``tf.function`` of one float32 (None, H, W, 3) tensor) as an ONNX model with input
    ``image`` float32 (None, H, W, 3) and one output named ``output``; ``metadata`` (:func:`stamp`) in its
    ``metadata_props``.

    ``tf2onnx.convert.from_function`` freezes the variables itself. Checked with tf2onnx 1.17 /
    TensorFlow 2.21 / Keras 3.15 on the three heads (heatmap with its decoding, spatial, dense) and the
    multi-instance centroid model: every op converts at opset 17, no workaround needed."""
    import tensorflow as tf
    import tf2onnx

    h, w = int(input_hw[0]), int(input_hw[1])
    spec = [tf.TensorSpec((None, h, w, 3), tf.float32, name="image")]
    tf2onnx.logging.set_level(logging.ERROR)   # its INFO lines ("Using tensorflow=...") on every conversion
    try:
        with stdout_to_stderr():
            proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=ONNX_OPSET)
    except Exception as e:   # noqa: BLE001 - tf2onnx raises bare Exceptions/ValueErrors for unsupported ops
        raise ExportError(f"tf2onnx could not convert the model (opset {ONNX_OPSET}): "
                          f"{(str(e).splitlines() or [type(e).__name__])[0]}") from e
    # the traced function's output is named after its last op (Identity:0): call it what it is
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [output if o == old else o for o in node.output]
        node.input[:] = [output if i == old else i for i in node.input]
    proto.graph.output[0].name = output
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


class OnnxFunction:
    """An ONNX model (bytes or a path) in an ``onnxruntime`` CPU session: ``f(images float32 (B, H, W, 3))``
    -> its first output as float32."""

    def __init__(self, model):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # its threads sleep between calls instead of spinning: predict runs a decoding thread and TensorFlow ops
        # (crops, resizes) beside the model, and spinning threads took their cores: two-flies' both stages
        # 27-30 frames/s without spinning against 12-17 with it, taking turns in one process on a shared
        # 2-core machine (load average 7)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.metadata: Dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, images) -> np.ndarray:
        x = np.ascontiguousarray(images, np.float32)
        return np.asarray(self.session.run([self.output], {self.input: x})[0], np.float32)
