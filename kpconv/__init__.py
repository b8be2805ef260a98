"""kpconv: from keypoint annotations in any common format to TFRecord shards and a trained regressor.

The Python API, for notebooks (see ``docs/predict.md``)::

    import kpconv
    kpconv.ingest(["labels.csv"], output="data.jsonl", images="imgs/")
    kpconv.shard("data.jsonl", "shards/", kpconv.ShardOptions(image=kpconv.ImageOptions(size=(128, 128))))
    kpconv.train("shards/", "run/", kpconv.TrainOptions(weights="none", alpha=0.35, epochs=20))
    for p in kpconv.Predictor("run/").predict("clip.mp4"):
        print(p.frame, p.keypoints)

``kpconv.ingest``, ``kpconv.shard`` and ``kpconv.train`` are the modules of those commands, callable:
calling one calls its function of the same name (``kpconv.ingest.ingest`` ...), so
``from kpconv import shard`` still gives the module. Importing this package is cheap: nothing is
imported until first used, and TensorFlow only by the modules that need it (``kpconv.pipeline``,
``kpconv.model``, ``kpconv.train``, ``kpconv.predict``), never by ``kpconv.cli`` at start-up.
"""
import importlib
import sys
import types

__version__ = "0.1.0"

_CALLABLE_MODULES = ("ingest", "shard", "train")
_LAZY = {"Predictor": "predict", "Prediction": "predict", "IngestOptions": "formats.base",
         "ShardOptions": "shard", "ImageOptions": "images", "TrainOptions": "train", "export_run": "export"}
__all__ = ["ingest", "shard", "train", "Predictor", "Prediction", "IngestOptions", "ShardOptions",
           "ImageOptions", "TrainOptions", "export_run", "__version__"]


class _CallableModule(types.ModuleType):
    """A command's module that, called, runs its function of the same name."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # the import system sets each submodule on its package: make the command modules callable
        if name in _CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name):
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if not name.startswith("_"):
        try:   # any submodule, imported on first use: kpconv.video.FrameSelection
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package
