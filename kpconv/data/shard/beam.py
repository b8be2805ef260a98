"""``kpconv shard --runner beam``: the shard tasks of :func:`kpconv.data.shard.shard` run as the Beam pipeline
``Create(task numbers) | Reshuffle | Map(write)``; each element writes a shard under a temporary name and a
``.pending.json`` state, and the driver commits them once the pipeline succeeded (docs/shard.md). Paths with a
scheme go through Beam's FileSystems (:class:`BeamFiles`)."""
from __future__ import annotations

import atexit
import json
import os
import re
import uuid
from dataclasses import replace
from typing import IO, Dict, List, Optional, Sequence

from ...errors import KpconvError, ShardError
from . import ShardOptions, ShardResult, shard
from .files import LOCAL, LocalFiles, is_url, spool
from .outdir import STATE_DIR, commit_shard, remove_temporaries
from .plan import ShardTask
from .writer import ShardJob, write_shard

INSTALL_HINT = "pip install 'kpconv[beam]'"
DIRECT_RUNNERS = ("DirectRunner", "direct", "BundleBasedDirectRunner", "SwitchingDirectRunner")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BeamMissing(KpconvError):
    """Apache Beam is not installed."""


class BeamOptionError(ShardError, ValueError):
    """A Beam pipeline option is not ``KEY=VALUE`` (the CLI: a usage error on ``--beam-option``)."""


def require_beam():
    """``apache_beam``, or BeamMissing saying what to install."""
    try:
        import apache_beam
    except ImportError as e:
        raise BeamMissing(f"--runner beam needs Apache Beam, which is not installed ({e}): {INSTALL_HINT}") from None
    return apache_beam


def parse_beam_option(text: str) -> str:
    """``KEY=VALUE`` (or ``KEY`` for a flag) -> the pipeline flag ``--KEY=VALUE``. Raises BeamOptionError."""
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not _KEY.match(key):
        raise BeamOptionError(f"expected KEY=VALUE (a Beam pipeline option, e.g. runner=FlinkRunner), got {text!r}")
    return f"--{key}={value}" if sep else f"--{key}"


def pipeline_flags(beam_options: Sequence[str], workers: int) -> List[str]:
    """The flags for ``PipelineOptions``: the user's ``--beam-option``s, and for the DirectRunner (the
    default) ``direct_num_workers=workers`` and ``direct_running_mode=multi_processing`` unless given."""
    flags = [parse_beam_option(o) for o in beam_options]
    given = {f[2:].partition("=")[0]: f.partition("=")[2] for f in flags}
    runner = given.get("runner") or "DirectRunner"
    if "runner" not in given:
        flags.append("--runner=DirectRunner")
    if runner in DIRECT_RUNNERS:
        if "direct_num_workers" not in given:
            flags.append(f"--direct_num_workers={workers or os.cpu_count() or 1}")
        if "direct_running_mode" not in given:
            flags.append("--direct_running_mode=multi_processing")
    if "default_sdk_harness_log_level" not in given:   # the SDK workers log every bundle at INFO
        flags.append("--default_sdk_harness_log_level=WARNING")
    return flags


# ------------------------------------------------------------------------------------------ files
class BeamFiles(LocalFiles):
    """:class:`kpconv.data.shard.files.LocalFiles` for paths with a scheme through Beam's FileSystems (any
    filesystem Beam has a plugin for: ``gs://`` with ``apache-beam[gcp]``, ``s3://`` with
    ``apache-beam[aws]``, ``hdfs://``...). ``force``: local paths through FileSystems too (tests)."""

    handles_urls = True

    def __init__(self, force: bool = False):
        self.force = force

    def is_remote(self, path) -> bool:
        return self.force or is_url(path)

    @staticmethod
    def _fs():
        from apache_beam.io.filesystems import FileSystems

        return FileSystems

    def is_file(self, path: str) -> bool:
        if not self.is_remote(path):
            return super().is_file(path)
        return self._fs().exists(path) and not (not is_url(path) and os.path.isdir(path))

    def open_read(self, path: str) -> IO[bytes]:
        if not self.is_remote(path):
            return super().open_read(path)
        from apache_beam.io.filesystem import CompressionTypes

        fs = self._fs()
        try:
            return fs.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        except OSError:  # BeamIOError is an OSError; say "missing" as the local runner does
            if not fs.exists(path):
                raise FileNotFoundError(2, "No such file", path) from None
            raise

    def open_image(self, path: str, root: Optional[str] = None) -> IO[bytes]:
        if not self.is_remote(path):
            return super().open_image(path, root)
        return self.open_read(path)

    def create(self, path: str) -> IO[bytes]:
        if not self.is_remote(path):
            return super().create(path)
        from apache_beam.io.filesystem import CompressionTypes

        return self._fs().create(path, compression_type=CompressionTypes.UNCOMPRESSED)

    def sync(self, f) -> None:
        if hasattr(f, "fileno") and not self.force:
            try:
                f.fileno()
            except (OSError, ValueError):  # a remote stream: it is committed when closed
                f.flush()
                return
            super().sync(f)
        else:
            f.flush()

    def rename(self, src: str, dst: str) -> None:
        if not self.is_remote(dst):
            return super().rename(src, dst)
        self._fs().rename([src], [dst])

    def delete(self, path: str) -> None:
        if not self.is_remote(path):
            return super().delete(path)
        fs = self._fs()
        if fs.exists(path):
            fs.delete([path])

    def delete_tree(self, path: str) -> None:
        if not self.is_remote(path):
            return super().delete_tree(path)
        paths = self._match(path)
        if paths:
            self._fs().delete(paths)

    def size(self, path: str) -> int:
        if not self.is_remote(path):
            return super().size(path)
        fs = self._fs()
        if not fs.exists(path):
            raise FileNotFoundError(2, "No such file", path)
        return fs.get_filesystem(path).metadata(path).size_in_bytes

    def _match(self, path: str) -> List[str]:
        """Every file under the directory or prefix ``path``."""
        return [m.path for m in self._fs().match([self.join(path, "**")])[0].metadata_list]

    def list_dir(self, path: str) -> List[str]:
        if not self.is_remote(path) or not is_url(path):
            return super().list_dir(path)   # local directories (also with force)
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix):].split("/", 1)[0] for p in self._match(path) if p.startswith(prefix)})

    def makedirs(self, path: str) -> None:
        if not is_url(path):
            super().makedirs(path)          # object stores have no directories

    def write_atomic(self, path: str, data: bytes) -> None:
        if not self.is_remote(path):
            return super().write_atomic(path, data)
        name = path.rstrip("/").rsplit("/", 1)[-1]
        tmp = self.join(self.dirname(path), f".{name}.tmp-{uuid.uuid4().hex}")
        try:
            with self.create(tmp) as f:
                f.write(data)
            self.rename(tmp, path)
        except BaseException:
            self.delete(tmp)
            raise

    def sync_dir(self, path: str) -> None:
        if not is_url(path):
            super().sync_dir(path)


# --------------------------------------------------------------------------------------- pipeline
_PLANS: Dict[str, List[ShardTask]] = {}   # per worker process: the plan file's tasks
_MANIFESTS: Dict[str, str] = {}           # per worker process: remote manifest -> local copy


def _load_plan(path: str, files: LocalFiles) -> List[ShardTask]:
    tasks = _PLANS.get(path)
    if tasks is None:
        text = files.read_text(path)
        tasks = _PLANS[path] = [ShardTask(**json.loads(line)) for line in text.splitlines()]
    return tasks


def _pending(out: str, name: str, files: LocalFiles) -> str:
    return files.join(out, STATE_DIR, f"{name}.pending.json")


def _local_manifest(manifest: str, files: LocalFiles) -> str:
    """A local copy of a manifest that FileSystems reads (once per worker process): a shard's records are
    spread over the whole manifest, and one ranged read per record from an object store would be slow."""
    path = _MANIFESTS.get(manifest)
    if path is None or not os.path.exists(path):
        with files.open_read(manifest) as src:
            path = _MANIFESTS[manifest] = spool(src, "kpconv-manifest-")
        atexit.register(LOCAL.delete, path)
    return path


def _write_task(index: int, plan_path: str, job: ShardJob) -> str:
    """One pipeline element: write shard ``index`` of the plan file under a temporary name."""
    files = job.files
    task = _load_plan(plan_path, files)[index]
    if files.is_remote(job.manifest):   # (write_shard still checks every line against the plan's fingerprint)
        job = replace(job, manifest=_local_manifest(job.manifest, files))
    state = write_shard(task, job)
    files.write_atomic(_pending(job.out_dir, task.name, files), json.dumps(state, sort_keys=True).encode())
    return task.name


class BeamExecutor:
    """Runs the shard tasks as a Beam pipeline (the ``Executor`` of :func:`kpconv.data.shard.shard`).
    Raises BeamOptionError for a malformed option, then BeamMissing when Apache Beam is not installed,
    before anything is read or written."""

    def __init__(self, beam_options: Sequence[str] = (), workers: int = 0, force_filesystems: bool = False):
        self.flags = pipeline_flags(beam_options, workers)
        self.beam = require_beam()
        self.files = BeamFiles(force=force_filesystems)

    def run(self, todo: Sequence[ShardTask], job: ShardJob) -> Dict[str, dict]:
        from apache_beam.options.pipeline_options import PipelineOptions

        beam, files, out = self.beam, self.files, job.out_dir
        plan_path = files.join(out, STATE_DIR, f"beam-plan-{uuid.uuid4().hex}.jsonl")
        files.write_atomic(plan_path, "".join(json.dumps(t.__dict__) + "\n" for t in todo).encode())
        try:
            try:
                with beam.Pipeline(options=PipelineOptions(self.flags)) as p:
                    (p | "Tasks" >> beam.Create(list(range(len(todo))))
                       | "Spread" >> beam.Reshuffle()
                       | "WriteShard" >> beam.Map(_write_task, plan_path, job))
            except KpconvError:
                raise
            except Exception as e:  # the runner's own wrapping of a worker's error: keep it, as a ShardError
                raise ShardError(f"the Beam pipeline failed ({type(e).__name__}); no shard was committed, "
                                 f"rerun (with --resume to keep earlier complete shards): {e}") from e
            states = {}
            for task in todo:
                try:
                    state = json.loads(files.read_text(_pending(out, task.name, files)))
                except (OSError, ValueError) as e:
                    raise ShardError(f"the Beam pipeline finished without writing {task.name}: {e}") from None
                states[task.name] = state
            for task in todo:   # all written: now rename them into place
                commit_shard(out, states[task.name], files)
            return states
        finally:
            files.delete(plan_path)
            for task in todo:
                files.delete(_pending(out, task.name, files))
            remove_temporaries(out, files)   # failed or duplicated attempts


def shard_beam(manifest: str, out_dir, options: ShardOptions = ShardOptions(), beam_options: Sequence[str] = (),
               *, force_filesystems: bool = False) -> ShardResult:
    """:func:`kpconv.data.shard.shard` run as an Apache Beam pipeline; ``beam_options``: ``KEY=VALUE`` pipeline options
    (default: the DirectRunner, ``options.workers`` processes). Raises BeamOptionError for a malformed option and
    BeamMissing without Apache Beam."""
    return shard(manifest, out_dir, options, executor=BeamExecutor(beam_options, options.workers, force_filesystems))
