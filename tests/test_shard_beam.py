"""``kpconv shard --runner beam``: the same bytes as the local runner, Beam's FileSystems, failures, no Beam."""
from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from kpconv.cli import cli
from kpconv.errors import ManifestError
from kpconv.data.images import ImageOptions
from kpconv.data.shard import ShardOptions, shard
from test_shard_helpers import records, shard_bytes, synth_manifest

from kpconv.data.shard import beam as beam_runner
from kpconv.data.shard.beam import BeamFiles, BeamOptionError, pipeline_flags, shard_beam

try:
    import apache_beam  # noqa: F401
    HAVE_BEAM = True
except ImportError:
    HAVE_BEAM = False
needs_beam = pytest.mark.skipif(not HAVE_BEAM, reason="Apache Beam is not installed (pip install -e '.[dev]')")

IN_MEMORY = ["direct_running_mode=in_memory"]   # one process: fast, and monkeypatches reach the workers


def run(*args, **kw):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False, **kw)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """12 images of 160x120, two figures each (24 records)."""
    return synth_manifest(tmp_path_factory.mktemp("synth"), n_images=12, size=(160, 120), instances=2)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """10 images with one figure each, one image deleted after ingest (a skipped record)."""
    m = synth_manifest(tmp_path_factory.mktemp("broken"), n_images=10, size=(120, 90), instances=1, seed=3)
    images = sorted((m.parent / "data" / "images").iterdir())
    images[4].unlink()
    return m


def _info_shards(out):
    info = json.loads((out / "dataset_info.json").read_text())
    return {name: s["shards"] for name, s in info["splits"].items()}


@needs_beam
def test_cli_beam_direct_runner_multiprocessing_matches_local(synth, tmp_path):
    """The default: DirectRunner, multi_processing with --workers processes; byte-identical shards,
    skipped.jsonl and dataset_info.json."""
    base = ["shard", synth, "--image-size", "96x64", "--resize", "pad", "--num-shards", "3"]
    assert run(*base, "-o", tmp_path / "local", "--workers", "1").exit_code == 0
    r = run(*base, "-o", tmp_path / "beam", "--runner", "beam", "--workers", "2")
    assert r.exit_code == 0, r.output
    local, beam = shard_bytes(tmp_path / "local"), shard_bytes(tmp_path / "beam")
    assert sum(".tfrecord-" in n for n in local) >= 7
    assert local == beam
    assert _info_shards(tmp_path / "local") == _info_shards(tmp_path / "beam")
    # committed: no temporary file, no pending state or plan file left
    left = sorted(p.name for p in (tmp_path / "beam").iterdir()) + \
        sorted(p.name for p in (tmp_path / "beam" / ".kpconv-shard").iterdir())
    assert not [n for n in left if ".tmp" in n or "pending" in n or "beam-plan" in n]
    assert len(records(tmp_path / "beam")) == 24


@needs_beam
def test_filesystems_code_path_on_local_paths(broken, tmp_path):
    """force_filesystems sends every read and write through apache_beam FileSystems (the gs:// / s3://
    code), here on local paths: passthrough (image sizes through FileSystems metadata), gzip, a missing
    image skipped with the local runner's reason and message, the workers' local copy of the manifest."""
    opts = ShardOptions(image=ImageOptions(size=None), num_shards=None, compression="gzip", workers=1)
    local = shard(str(broken), tmp_path / "local", opts)
    beam = shard_beam(str(broken), tmp_path / "beam", opts, IN_MEMORY, force_filesystems=True)
    assert local.skipped == beam.skipped == 1
    assert shard_bytes(tmp_path / "local") == shard_bytes(tmp_path / "beam")
    skipped = json.loads((tmp_path / "beam" / "skipped.jsonl").read_text())
    assert skipped["reason"] == "missing_image"
    assert local.info == beam.info
    assert str(broken) in beam_runner._MANIFESTS   # the workers read a local copy of the manifest


@needs_beam
def test_beam_reads_stdin(synth, tmp_path):
    base = ["shard", "-", "--image-size", "64", "--num-shards", "2"]
    text = synth.read_text()
    # a relative images_root is resolved against the working directory for stdin: make it absolute
    assert json.loads(text.splitlines()[0])["images_root"].startswith("/")
    assert run(*base, "-o", tmp_path / "local", input=text).exit_code == 0
    r = run(*base, "-o", tmp_path / "beam", "--runner", "beam", *sum((["--beam-option", o] for o in IN_MEMORY), []),
            input=text)
    assert r.exit_code == 0, r.output
    assert shard_bytes(tmp_path / "local") == shard_bytes(tmp_path / "beam")
    assert not (tmp_path / "beam" / ".kpconv-shard" / "manifest.jsonl").exists()


@needs_beam
def test_failed_pipeline_commits_nothing_then_resume(synth, tmp_path, monkeypatch):
    """A worker error fails the pipeline: exit 1, no shard under a final name, no dataset_info.json, no
    temporary file; a rerun with --resume writes everything and matches the local runner."""
    base = ["shard", synth, "--image-size", "64", "--num-shards", "2"]
    real = beam_runner.write_shard

    def failing(task, *args, **kw):
        if task.split == "val":
            raise OSError(28, "No space left on device")
        return real(task, *args, **kw)

    monkeypatch.setattr(beam_runner, "write_shard", failing)
    out = tmp_path / "beam"
    r = run(*base, "-o", out, "--runner", "beam", "--beam-option", IN_MEMORY[0])
    assert r.exit_code == 1
    assert "the Beam pipeline failed" in r.output and "No space left on device" in r.output
    assert sorted(p.name for p in out.iterdir()) == [".kpconv-shard"]
    assert list((out / ".kpconv-shard").iterdir()) == []
    monkeypatch.setattr(beam_runner, "write_shard", real)
    r = run(*base, "-o", out, "--runner", "beam", "--beam-option", IN_MEMORY[0], "--resume")
    assert r.exit_code == 0, r.output
    assert run(*base, "-o", tmp_path / "local").exit_code == 0
    assert shard_bytes(out) == shard_bytes(tmp_path / "local")


@needs_beam
def test_resume_keeps_complete_shards(synth, tmp_path):
    base = ["shard", synth, "--image-size", "64", "--num-shards", "2", "--runner", "beam",
            "--beam-option", IN_MEMORY[0]]
    out = tmp_path / "beam"
    assert run(*base, "-o", out).exit_code == 0
    before = shard_bytes(out)
    victim = sorted(out.glob("train.tfrecord-*"))[0]
    victim.write_bytes(victim.read_bytes()[:-10])   # a damaged shard is rewritten, the others kept
    r = CliRunner().invoke(cli, [*map(str, base), "-o", str(out), "--resume"], catch_exceptions=False)
    assert r.exit_code == 0
    assert "wrote 1" in r.output
    assert shard_bytes(out) == before


def test_without_beam_exits_1_with_install_hint(synth, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)   # `import apache_beam` raises ImportError
    r = run("shard", synth, "-o", tmp_path / "out", "--runner", "beam")
    assert r.exit_code == 1
    assert "pip install 'kpconv[beam]'" in r.output
    assert not (tmp_path / "out").exists()
    assert run("shard", synth, "-o", tmp_path / "out", "--num-shards", "1").exit_code == 0   # local still works


def test_options(synth, tmp_path):
    assert pipeline_flags([], 3) == ["--runner=DirectRunner", "--direct_num_workers=3",
                                     "--direct_running_mode=multi_processing",
                                     "--default_sdk_harness_log_level=WARNING"]
    assert pipeline_flags(["runner=FlinkRunner", "flink_master=host:8081", "save_main_session"], 2) == [
        "--runner=FlinkRunner", "--flink_master=host:8081", "--save_main_session",
        "--default_sdk_harness_log_level=WARNING"]
    assert "--direct_running_mode=in_memory" in pipeline_flags(IN_MEMORY, 0)
    assert "--direct_running_mode=multi_processing" not in pipeline_flags(IN_MEMORY, 0)
    with pytest.raises(BeamOptionError, match="expected KEY=VALUE"):   # library callers: a typed error
        shard_beam(synth, tmp_path / "a", beam_options=["runner=DirectRunner", "not an option"])
    r = run("shard", synth, "-o", tmp_path / "a", "--runner", "beam", "--beam-option", "not an option")
    assert r.exit_code == 2 and "Invalid value for --beam-option: expected KEY=VALUE" in r.output
    r = run("shard", synth, "-o", tmp_path / "a", "--beam-option", "runner=FlinkRunner")
    assert r.exit_code == 2 and "needs --runner beam" in r.output
    assert not (tmp_path / "a").exists()


def test_remote_paths(synth, tmp_path):
    """The local runner refuses URLs; BeamFiles joins them as URLs (no network here: nothing is read)."""
    r = run("shard", "gs://bucket/data.jsonl", "-o", tmp_path / "a")
    assert r.exit_code == 1 and "--runner beam" in r.output
    r = run("shard", synth, "-o", "s3://bucket/shards")
    assert r.exit_code == 1 and "--runner beam" in r.output
    f = BeamFiles()
    assert f.join("gs://b/shards/", ".kpconv-shard", "x.json") == "gs://b/shards/.kpconv-shard/x.json"
    assert f.dirname("gs://b/data/manifest.jsonl") == "gs://b/data"
    assert f.join(str(tmp_path), "a") == str(tmp_path / "a")


@needs_beam
def test_manifest_missing_under_beam(tmp_path):
    with pytest.raises(ManifestError, match="manifest file does not exist"):
        shard_beam(str(tmp_path / "nope.jsonl"), tmp_path / "out", ShardOptions(), IN_MEMORY, force_filesystems=True)
    assert not (tmp_path / "out").exists()
