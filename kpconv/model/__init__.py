"""The model half: the tf.data pipeline, the network (``network.py``), training, inference, evaluation,
prediction, tracking, export (``docs/architecture.md``). TensorFlow is imported by the modules that
need it, when they are imported."""
import importlib


def __getattr__(name):
    # the names of the flat layout's ``kpconv.model`` module (build_model, HeatmapDecode ...)
    return getattr(importlib.import_module(f"{__name__}.network"), name)
