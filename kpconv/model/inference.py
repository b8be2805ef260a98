"""The one inference owner: frames in, keypoints with a calibrated confidence out.

:class:`Inference` holds a model in its inference form (``(B, K, 3)``: ``x, y`` normalized to the
stored image and a confidence, :func:`kpconv.model.network.inference_model`) and runs it through one traced
graph function per input size (``tf.function`` with an ``input_signature`` of any batch size: one trace, no
retrace when the batch size changes), in batches of ``batch_size``. ``kpconv predict``, ``kpconv eval``, the
per-epoch validation metrics, the calibration, export's check and the benchmarks all call it; nothing
else calls the Keras model for inference.

Graph mode, not XLA (``jit_compile=False``, the default): on this project's 2-core CPU the same model runs
about twice as fast as a TensorFlow graph (TensorFlow's oneDNN kernels) as compiled by XLA, and its first
call takes about 0.2 s against XLA's 1-3 s of compiling, which was most of ``kpconv predict``'s start-up
beyond TensorFlow's import (docs/benchmarks.md, bench_predict; the keypoints agree within 3e-4 px, float
rounding). ``jit_compile=True`` keeps the XLA way for comparison (benchmarks/bench_predict.py measures
both): one compiled function per input size, a shorter batch padded to a power of two so that few shapes
ever compile.

Preprocessing (:meth:`Inference.prepare`) is the shards' (the run's ``config.json`` records it from
``dataset_info.json``): the crop (``bbox`` with the shard's padding, or the whole frame), the resize
(``stretch`` or ``pad``) by :func:`kpconv.data.images.layout` and the same Pillow calls as
:func:`kpconv.data.images.render`, done on the decoded array. The shards store JPEG (quality 95); the JPEG
round trip is kept only as an option (``jpeg=True``, the pixels of kpconv 0.1's predict): on
mirror-mouse's 90 labelled frames (a 10-minute heatmap run, benchmarks/bench_predict.py) the mean
error is 11.15 px with it and 11.18 px without (0.3 %).

Runtimes (``runtime``): ``"tf"`` (the default) runs the model as a TensorFlow graph; ``"onnx"`` converts the
same traced function once per input size with ``tf2onnx`` and runs it in ``onnxruntime``
(:mod:`kpconv.model.onnxrt`; ``kpconv predict --runtime onnx``, needs ``kpconv[onnx]``): faster on CPUs
(docs/benchmarks.md), the same keypoints within float32 round-off (tests/test_inference_runtime.py). Never
chosen silently: a missing ``onnxruntime`` is an error, not a switch back to TensorFlow. A run's own
``model.onnx`` (``kpconv export --format onnx``) is run as it is when its record (:func:`kpconv.model.onnxrt.stamp`:
``model.keras``'s sha256, the calibration, the flip permutation, the input size) matches: then neither TensorFlow
nor Keras is imported (:meth:`Inference.from_run` loads ``model.keras`` only when a conversion needs it). Any
other input size or flip setting is converted as above; when the run directory holds no ``model.onnx``, or a
stale one (made from another ``model.keras`` or calibration: a warning says so), the conversion is written
there (atomically, only where the directory is writable) for the next start.

Test-time flip (``flip_test``, :func:`flip_permutation`): the heatmaps of the frame and of its mirror,
left/right keypoints swapped, averaged before decoding (:class:`kpconv.model.network.FlipTestAverage`). On by
default for a heatmap run trained with flips (flip pairs and ``augment_flip`` > 0): measured better on
mirror-mouse (docs/training.md, "Test-time flip").
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np


def image_options(config: dict):
    """The shards' :class:`kpconv.data.images.ImageOptions`, from a run's ``config.json``."""
    from ..data.images import ImageOptions

    pre = config["dataset"].get("preprocessing") or {}
    size = pre["size"] if "size" in pre else config["dataset"]["image_size"]   # None: each frame's own size
    return ImageOptions(size=None if size is None else (int(size[0]), int(size[1])), resize=pre.get("resize") or "stretch",
                        crop=pre.get("crop") or "none", crop_pad=float(pre.get("crop_pad") or 0.0))


def flip_permutation(config: Optional[dict], flip_test: Optional[bool] = None) -> Optional[List[int]]:
    """The keypoint permutation of a test-time flip for a run (``config``: its ``config.json``), or None for
    none. ``flip_test`` None (the default): on for a heatmap run trained with flips (flip pairs and
    ``augment_flip`` > 0); True: on (the heatmap head only); False: off."""
    from ..errors import TrainError

    if flip_test is False or (config is None and not flip_test):
        return None
    if config is None:
        raise TrainError("test-time flip: the run's config is needed (its keypoints and flip pairs)")
    head = config["model"].get("head", "heatmap")
    pairs = config["dataset"].get("flip_pairs") or []
    if head != "heatmap":
        if flip_test:
            raise TrainError(f"--flip-test: the {head} head has no heatmaps to average (the heatmap head has)")
        return None
    opts = config.get("options") or {}
    if flip_test is None and not (pairs and opts.get("augment", True) and float(opts.get("augment_flip") or 0) > 0):
        return None
    perm = list(range(len(config["dataset"]["keypoints"])))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


RUNTIMES = ("tf", "onnx")
ONNX_FILE = "model.onnx"      # in the run directory: kpconv export --format onnx's default output

log = logging.getLogger(__name__)


class Inference:
    """A model ready for inference.

    ``model`` is a Keras model as trained (heatmaps or coordinates out); ``calibration`` the heatmap
    head's confidence parameters (``config.json``'s ``calibration.params``). ``config`` (a run's) is
    needed only for :meth:`prepare` and :meth:`keypoints`, and for the default of ``flip_test``
    (:func:`flip_permutation`; a list: the permutation itself). ``jit_compile``: ``runtime="tf"`` compiled
    by XLA instead of run as a graph (slower on CPUs, see the module's docstring)."""

    run_dir: Optional[Path] = None     # from_run's: where model.keras and model.onnx are

    def __init__(self, model, calibration: Optional[Sequence[float]] = None, config: Optional[dict] = None,
                 batch_size: int = 16, jpeg: bool = False, flip_test: Union[None, bool, Sequence[int]] = None,
                 heatmaps: bool = False, runtime: str = "tf", jit_compile: bool = False):
        from ..errors import TrainError

        if runtime not in RUNTIMES:
            raise TrainError(f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
        if runtime == "onnx":
            from .onnxrt import require_onnx

            require_onnx("--runtime onnx")
        self.runtime = runtime
        self.jit_compile = bool(jit_compile) and runtime == "tf"

        self.flip_permutation = (list(flip_test) if isinstance(flip_test, (list, tuple))
                                 else flip_permutation(config, flip_test))
        # heatmaps=True: the model's heatmaps as they are, (B, h, w, K) (the multi-instance centroid stage finds
        # several peaks in one heatmap, kpconv.model.centroid.find_peaks); no flip test there
        self.heatmaps = heatmaps
        self.calibration = None if calibration is None else [float(v) for v in calibration]
        self._trained = model       # None (from_run, runtime onnx): model.keras is loaded when first needed
        self._model = None
        if model is not None:
            self._model = self._inference_form(model)
        self.config = config
        self.options = image_options(config) if config is not None else None
        self.batch_size = int(batch_size)
        self.jpeg = jpeg
        self._compiled: Dict[Tuple[Tuple[int, int], bool], object] = {}

    @classmethod
    def from_run(cls, run_dir, batch_size: int = 16, jpeg: bool = False,
                 flip_test: Optional[bool] = None, runtime: str = "tf", jit_compile: bool = False) -> "Inference":
        """The run's ``model.keras`` ready for inference. ``runtime="onnx"``: ``model.keras`` is loaded (and
        TensorFlow imported) only if the run's ``model.onnx`` does not serve (see the module's docstring)."""
        from ..errors import TrainError
        from .run import MODEL_FILE, open_run, read_config

        if runtime == "onnx":   # (model.keras must be there: the ONNX file's record is checked against it)
            config, model = read_config(run_dir), None
            if not (Path(run_dir) / MODEL_FILE).is_file():
                raise TrainError(f"{Path(run_dir) / MODEL_FILE}: no model file")
        else:
            config, model = open_run(run_dir)
        params = (config.get("calibration") or {}).get("params")
        inf = cls(model, params, config, batch_size=batch_size, jpeg=jpeg, flip_test=flip_test, runtime=runtime,
                  jit_compile=jit_compile)
        inf.run_dir = Path(run_dir)
        return inf

    @property
    def model(self):
        """The Keras model in its inference form (``(B, K, 3)`` out; ``heatmaps=True``: as trained)."""
        if self._model is None:
            from .run import MODEL_FILE, import_keras_without_pandas
            from . import network as kmodel

            import_keras_without_pandas()
            self._trained = kmodel.load_model(self.run_dir / MODEL_FILE)
            self._model = self._inference_form(self._trained)
        return self._model

    def _inference_form(self, model):
        from . import network as kmodel

        return model if self.heatmaps else kmodel.inference_model(model, self.calibration, self.flip_permutation)

    # ----------------------------------------------------------------------------- ONNX provenance
    def onnx_stamp(self, hw: Tuple[int, int]) -> Dict[str, str]:
        """What an ONNX conversion of this run's model for input (h, w) is made from
        (:func:`kpconv.model.onnxrt.stamp`): ``kpconv export --format onnx`` records it in the file."""
        from .onnxrt import file_sha256, stamp
        from .run import MODEL_FILE

        return stamp(file_sha256(self.run_dir / MODEL_FILE), self.calibration, self.flip_permutation, hw)

    def _onnx_function(self, hw: Tuple[int, int]):
        """The run's ``model.onnx`` when it was made for this (its record matches), else the model converted
        now (and written to ``model.onnx`` when there is none there or a stale one)."""
        from .onnxrt import OnnxFunction, stamp_mismatch, to_onnx

        path = None if self.run_dir is None or self.heatmaps else self.run_dir / ONNX_FILE
        wanted = problem = None
        if path is not None:
            wanted = self.onnx_stamp(hw)
            if path.is_file():
                fn = OnnxFunction(path)
                problem = stamp_mismatch(fn.metadata, wanted)
                if problem is None:
                    return fn
                if problem == "model":
                    log.warning(f"{path}: made from another model.keras or calibration than the run's now: not "
                                f"used; converting model.keras again")
        import tensorflow as tf   # (tf2onnx and onnxruntime: checked by __init__'s require_onnx)

        model = self.model
        spec = [tf.TensorSpec((None,) + tuple(hw) + (3,), tf.float32, name="image")]
        traced = tf.function(lambda x: model(x, training=False), input_signature=spec)
        data = to_onnx(traced, hw, "heatmaps" if self.heatmaps else "keypoints", metadata=wanted)
        if path is not None and (problem == "model" or not path.exists()):
            self._write_onnx(path, data)
        return OnnxFunction(data)

    @staticmethod
    def _write_onnx(path: Path, data: bytes) -> None:
        """``data`` to ``path`` atomically, for the next start; a run directory that is not writable is left
        as it is (the conversion is used in memory)."""
        from ..data.manifest import atomic_output
        from ..errors import OutputError

        if not os.access(path.parent, os.W_OK):
            return
        try:
            with atomic_output(str(path), "wb") as f:
                f.write(data)
        except OutputError as e:
            log.warning(f"{e}: the conversion is used without being kept")

    # ---------------------------------------------------------------------------------- the model
    def _function(self, hw: Tuple[int, int], uint8: bool = False):
        key = (tuple(hw), uint8)
        fn = self._compiled.get(key)
        if fn is None and self.runtime == "onnx" and not uint8:
            fn = self._compiled[key] = self._onnx_function(tuple(hw))
        if fn is None:
            import tensorflow as tf

            model = self.model
            spec = [tf.TensorSpec((None,) + tuple(hw) + (3,), tf.uint8 if uint8 else tf.float32, name="image")]
            if uint8:   # the graph casts: a quarter of the bytes in, no float copy made in Python before each call
                fn = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), input_signature=spec)
            elif self.jit_compile:
                fn = tf.function(lambda x: model(x, training=False), jit_compile=True, reduce_retracing=True)
            else:   # one graph for every batch size
                fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
            self._compiled[key] = fn
        return fn

    def __call__(self, images) -> np.ndarray:
        """``images`` (B, H, W, 3) pixels in [0, 255] (any dtype, a tensor or an array) -> (B, K, 3)
        float32: ``x, y`` normalized to the image and the confidence (``heatmaps=True``: the heatmaps)."""
        x = np.asarray(images)
        # uint8 frames (predict's) go to the graph as they are: the float conversion in numpy was 0.2-0.5 ms
        # a frame of single-threaded work while the model waited (640x480 video, docs/benchmarks.md)
        uint8 = x.dtype == np.uint8 and self.runtime == "tf" and not self.jit_compile
        if not uint8:
            x = x.astype(np.float32, copy=False)
        n = len(x)
        if n == 0:
            raise ValueError("no images")
        fn = self._function(x.shape[1:3], uint8)
        bs = self.batch_size
        out = []
        for i in range(0, n, bs):
            chunk = x[i:i + bs]
            m = len(chunk)
            if m < bs and self.jit_compile:
                # padded to a power of two: at most log2(batch_size) + 1 compiled shapes per size (the graph
                # and onnxruntime take any batch without compiling)
                full = min(bs, 1 << (m - 1).bit_length())
                chunk = np.concatenate([chunk, np.zeros((full - m,) + chunk.shape[1:], chunk.dtype)])
            out.append(np.asarray(fn(chunk), np.float32)[:m])
        return np.concatenate(out)

    def infer(self, images) -> Tuple[np.ndarray, np.ndarray]:
        """``(xy (B, K, 2)`` normalized to the image, ``confidence (B, K))``."""
        out = self(images)
        return out[..., :2], out[..., 2]

    # ---------------------------------------------------------------------------- preprocessing
    def scaled_size(self, width: int, height: int) -> Optional[Tuple[int, int]]:
        """The size (w, h) that whole frames of ``width`` x ``height`` are resized to before the shards'
        padding, or None when they are not resized. A video reader can deliver frames at that size
        (:func:`kpconv.model.video.frames`'s ``size``, FFmpeg's swscale) for :meth:`prepare`'s ``original``."""
        from ..data.images import layout

        lay = layout(width, height, [0.0, 0.0, width, height], self.options)
        rw, rh = lay.placed[2:]
        x0, y0, x1, y1 = lay.crop
        return None if (rw, rh) == (x1 - x0, y1 - y0) else (int(rw), int(rh))

    def prepare(self, frame: np.ndarray, bbox_px: Optional[Sequence[float]] = None,
                original: Optional[Tuple[int, int]] = None):
        """``(stored image (h, w, 3) uint8, stored_to_original transform, original (w, h))`` for an RGB
        uint8 frame (H, W, 3), cropped to ``bbox_px`` (x, y, w, h in its pixels) with a ``bbox`` run.
        ``original`` (w, h): ``frame`` is a whole frame of that size already resized to
        :meth:`scaled_size` (by the video decoder): only the padding is left to do."""
        from PIL import Image

        from ..data.images import BACKGROUND, layout

        opts = self.options
        h, w = frame.shape[:2]
        if original is not None:
            if bbox_px is not None or self.scaled_size(*original) != (w, h):
                raise ValueError(f"a frame resized to {w}x{h} is not the whole-frame resize of "
                                 f"{original[0]}x{original[1]} for these shards")
            w, h = original
        lay = layout(w, h, list(bbox_px) if bbox_px is not None else [0.0, 0.0, w, h], opts)
        x0, y0, x1, y1 = lay.crop
        ox, oy, rw, rh = lay.placed
        if original is not None:
            x0, y0, x1, y1 = 0, 0, rw, rh      # the content is the frame as it is
        if (rw, rh) == (x1 - x0, y1 - y0) and lay.placed == (0, 0) + lay.out and not self.jpeg:
            return np.ascontiguousarray(frame[y0:y1, x0:x1]), lay.transform, (w, h)
        if (rw, rh) == (x1 - x0, y1 - y0) and not self.jpeg:   # padding only: numpy, no image copies
            canvas = np.empty((lay.out[1], lay.out[0], 3), np.uint8)
            canvas[...] = np.asarray(BACKGROUND, np.uint8)
            canvas[oy:oy + rh, ox:ox + rw] = frame[y0:y1, x0:x1]
            return canvas, lay.transform, (w, h)
        im = Image.fromarray(frame)
        if (rw, rh) == (x1 - x0, y1 - y0):
            content = im.crop((x0, y0, x1, y1)) if (x0, y0, x1, y1) != (0, 0) + im.size else im
        else:
            content = im.resize((rw, rh), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
        if lay.placed != (0, 0) + lay.out:
            canvas = Image.new("RGB", lay.out, BACKGROUND)
            canvas.paste(content, (ox, oy))
            content = canvas
        if self.jpeg:   # the shards' encoding, as kpconv.data.images.render writes it
            buf = io.BytesIO()
            content.save(buf, "JPEG", quality=opts.quality)
            content = Image.open(io.BytesIO(buf.getvalue()))
        return np.asarray(content.convert("RGB"), np.uint8), lay.transform, (w, h)

    def keypoints(self, stored: np.ndarray, transforms) -> Tuple[np.ndarray, np.ndarray]:
        """Prepared images (B, h, w, 3) and their transforms -> ``(xy (B, K, 2)`` in original pixels,
        ``confidence (B, K))``."""
        from .metrics import to_original

        xy, conf = self.infer(stored)
        size = self.options.size or (stored.shape[2], stored.shape[1])   # (None: the frames' own size)
        px = to_original(xy, np.tile([[size[0], size[1]]], (len(stored), 1)), np.asarray(transforms))
        return px, conf
