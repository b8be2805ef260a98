"""kpconv: from keypoint annotations in any common format to TFRecord shards and a trained keypoint model.

The Python API, for notebooks (see ``docs/predict.md``)::

    import kpconv
    kpconv.ingest(["labels.csv"], output="data.jsonl", images="imgs/")
    kpconv.shard("data.jsonl", "shards/", kpconv.ShardOptions(image=kpconv.ImageOptions(size=(128, 128))))
    kpconv.train("shards/", "run/", kpconv.TrainOptions(weights="none", alpha=0.35, epochs=20))
    for p in kpconv.Predictor("run/").predict("clip.mp4"):
        print(p.frame, p.keypoints)

Two halves (``docs/architecture.md``): ``kpconv.data`` (no TensorFlow) and ``kpconv.model``.
``kpconv.ingest``, ``kpconv.shard`` and ``kpconv.train`` are the modules of those commands, callable (calling
one calls its function of the same name). The flat module names of earlier versions (``kpconv.pipeline``,
``kpconv.formats.coco`` ...) still import, as aliases of the modules' homes. Nothing is imported until first used.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import types

__version__ = "0.1.0"

_COMMANDS = {"ingest": "data.ingest", "shard": "data.shard", "train": "model.train"}
_LAZY = {"Predictor": "model.predict", "Prediction": "model.predict", "IngestOptions": "data.formats.base",
         "ShardOptions": "data.shard", "ImageOptions": "data.images", "TrainOptions": "model.train",
         "export_run": "model.export"}
# the flat layout of earlier versions -> the modules' homes (``import kpconv.pipeline`` keeps working)
_MOVED = {**{m: f"data.{m}" for m in ("formats", "imageinfo", "problems", "manifest", "images", "records",
                                       "tfrecord", "dataset_info", "workers", "jsonparse", "keypoints")},
          **{m: f"model.{m}" for m in ("pipeline", "losses", "run", "callbacks", "inference", "centroid",
                                        "multi", "evaluate", "metrics", "predict", "video", "tracking", "onnxrt",
                                        "export")},
          **_COMMANDS}
__all__ = ["ingest", "shard", "train", "Predictor", "Prediction", "IngestOptions", "ShardOptions",
           "ImageOptions", "TrainOptions", "export_run", "__version__"]


class _CallableModule(types.ModuleType):
    """A command's module that, called, runs its function of the same name."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rsplit(".", 1)[1])(*args, **kwargs)


def _home(fullname: str):
    """The new dotted name of an old flat one (``kpconv.formats.coco`` -> ``kpconv.data.formats.coco``)."""
    parts = fullname.split(".")
    if len(parts) > 1 and parts[0] == __name__ and parts[1] in _MOVED:
        return ".".join([__name__, _MOVED[parts[1]], *parts[2:]])
    return None


def _import(name: str):
    module = importlib.import_module(name)
    if name.rsplit(".", 1)[1] in _COMMANDS and type(module) is types.ModuleType:
        module.__class__ = _CallableModule
    return module


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import kpconv.<old name>`` gives the module at its home (the same object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        home = _home(fullname)
        return importlib.util.spec_from_loader(fullname, self, origin=home) if home else None

    def create_module(self, spec):
        module = _import(spec.origin)
        spec.loader_state = module.__spec__   # the import system sets the alias's spec on the module
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


sys.meta_path.insert(0, _Aliases())   # first: else a submodule of an aliased package would load twice


def __getattr__(name):
    if name in _MOVED:
        module = globals()[name] = _import(f"{__name__}.{_MOVED[name]}")
        return module
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in ("data", "model", "cli", "errors", "drawing", "inspect", "progress", "quiet", "proto"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
