"""The model half: the tf.data pipeline, the network (``network.py``), training, inference, evaluation,
prediction, tracking, export (``docs/architecture.md``). TensorFlow is imported by the modules that
need it, when they are imported."""
import importlib
import importlib.util


def __getattr__(name):
    # the names of the flat layout's ``kpconv.model`` module (build_model, HeatmapDecode ...). Not a submodule's
    # name: ``from . import centroid`` asks for the attribute before it imports the submodule, and that must not
    # import the network (Keras and TensorFlow, 2-3 s) where nothing needs it (kpconv predict --runtime onnx)
    if name.startswith("__") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.network"), name)
