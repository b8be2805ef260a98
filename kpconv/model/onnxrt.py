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
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from ..errors import ExportError, MissingDependency
from ..quiet import stdout_to_stderr

# ONNX opset: 17 is read by every onnxruntime since 1.13 (2022) and holds every op tf2onnx 1.17 emits
# for these models
ONNX_OPSET = 17
ONNX_HINT = "pip install 'kpconv[onnx]' (tf2onnx and onnxruntime)"


def require_onnx(what: str = "--format onnx") -> None:
    """Raise :class:`MissingDependency` (exit 2) unless tf2onnx and onnxruntime can be imported."""
    for name in ("tf2onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError as e:
            raise MissingDependency(f"{what} needs tf2onnx and onnxruntime ({e}): {ONNX_HINT}") from None


def to_onnx(function: Callable, input_hw: Sequence[int], output: str) -> bytes:
    """``function`` (a ``tf.function`` of one float32 (None, H, W, 3) tensor) as an ONNX model with input
    ``image`` float32 (None, H, W, 3) and one output named ``output``.

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

    def __call__(self, images) -> np.ndarray:
        x = np.ascontiguousarray(images, np.float32)
        return np.asarray(self.session.run([self.output], {self.input: x})[0], np.float32)
