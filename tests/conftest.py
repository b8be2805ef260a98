"""Shared test fixtures: golden files (``pytest --update-golden`` rewrites them, on purpose)."""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files under tests/golden/ instead of comparing (review the diff!)")


class Golden:
    def __init__(self, update: bool):
        self.update = update

    def check(self, name: str, text: str) -> None:
        """Compare ``text`` with ``tests/golden/<name>`` exactly (or rewrite it with --update-golden).

        Golden text must hold no absolute paths or timestamps: normalize before calling (see
        ``relativize``)."""
        path = GOLDEN / name
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"golden file {path.relative_to(REPO)} is missing; create it with --update-golden")
        expected = path.read_text(encoding="utf-8")
        if text != expected:
            diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                                f"golden/{name}", "actual", n=2))
            pytest.fail(f"output differs from golden/{name} (rerun with --update-golden if intended):\n"
                        + diff[:6000])


@pytest.fixture
def golden(request) -> Golden:
    return Golden(request.config.getoption("--update-golden"))


def ingest_records(tmp_path, sources, **opts):
    """Ingest ``sources`` (format detected) into ``tmp_path/out.jsonl``: (result, header, records)."""
    from kpconv.data.formats.base import IngestOptions
    from kpconv.data.ingest import ingest
    from kpconv.data.manifest import read_manifest

    out = tmp_path / "out.jsonl"
    result = ingest([str(s) for s in sources], output=str(out), options=IngestOptions(**opts))
    header, records = read_manifest(str(out))
    return result, header, records


@pytest.fixture(scope="session")
def tiny_dense_run(tmp_path_factory):
    """One tiny trained run (``_shards.tiny_run``) for the whole session: the predict, output and runtime
    tests read it and never write into it (a test that needs it changed works on a copy, e.g.
    ``_shards.bbox_crop_copy``)."""
    pytest.importorskip("tensorflow")
    from _shards import tiny_run

    return tiny_run(tmp_path_factory.mktemp("tiny_dense_run"))


def relativize(text: str) -> str:
    """Replace this checkout's absolute path with ``<repo>`` so golden files are machine-independent."""
    return text.replace(REPO.as_posix(), "<repo>").replace(str(REPO), "<repo>")


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    from kpconv import progress

    monkeypatch.setattr(progress, "_enabled", False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
