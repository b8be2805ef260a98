"""The top-level Python API: cheap to import, the command modules callable, the names documented."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_import_kpconv_is_cheap_and_lazy():
    code = ("import sys, kpconv; assert 'tensorflow' not in sys.modules and 'kpconv.model.predict' not in sys.modules; "
            "kpconv.Predictor; kpconv.TrainOptions; assert 'tensorflow' not in sys.modules; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr


def test_command_modules_are_callable_and_still_modules(tmp_path):
    import kpconv
    from kpconv import shard as shard_module
    from kpconv.data.ingest import ingest as ingest_function
    from kpconv.model.train import TrainOptions

    assert callable(kpconv.ingest) and callable(kpconv.shard) and callable(kpconv.train)
    assert shard_module.ShardOptions is kpconv.ShardOptions and kpconv.TrainOptions is TrainOptions
    assert kpconv.data.ingest.ingest is ingest_function
    # calling the module calls its function: an ingest of a tiny CSV table
    from PIL import Image

    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("image,nose_x,nose_y\na.png,1,2\n")
    result = kpconv.ingest([str(tmp_path / "labels.csv")], output=str(tmp_path / "m.jsonl"))
    assert result.written == 1 and (tmp_path / "m.jsonl").is_file()


def test_api_names_are_documented():
    import kpconv

    doc = (REPO / "docs" / "predict.md").read_text()
    for name in ("kpconv.ingest(", "kpconv.shard(", "kpconv.train(", "kpconv.Predictor(", ".predict("):
        assert name in doc
    for name in kpconv.__all__:
        assert getattr(kpconv, name) is not None


def test_the_flat_layouts_module_names_still_import():
    """kpconv.pipeline, kpconv.formats.coco ... (the layout before kpconv/data and kpconv/model) are the
    modules at their homes, the same objects; kpconv.model still answers the old network module's names."""
    import importlib

    import kpconv
    import kpconv.data.formats.coco
    import kpconv.data.manifest

    assert importlib.import_module("kpconv.formats.coco") is kpconv.data.formats.coco
    assert importlib.import_module("kpconv.manifest") is kpconv.data.manifest
    assert kpconv.data.manifest.__spec__.name == "kpconv.data.manifest"
    from kpconv.manifest import Record
    assert Record is kpconv.data.manifest.Record
    assert importlib.import_module("kpconv.ingest") is kpconv.ingest and callable(kpconv.ingest)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("kpconv.no_such_module")
