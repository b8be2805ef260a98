"""``kpconv shard``: manifest -> deterministic TFRecord shards, planned first, then written in parallel.

The pieces, one module each:

- :mod:`.options`: :class:`ShardOptions` and the parsers of the option texts;
- :mod:`.plan`: scan the manifest, assign splits, order and cut them into shard tasks (frozen before
  OUT_DIR is touched), and the one :func:`~.plan.fingerprint` of a shard;
- :mod:`.writer`: one shard task -> one shard file (records converted by :mod:`kpconv.images` and
  encoded by :mod:`kpconv.records`);
- :mod:`.outdir`: OUT_DIR's lifecycle: prepare, commit each shard, ``--resume``, ``dataset_info.json`` last;
- :mod:`.runners` (local processes) and :mod:`.beam` (Apache Beam), behind one small ``Executor`` interface;
- :mod:`.files`: every file operation, so that the Beam runner can read and write ``gs://``, ``s3://``...

The bytes of every shard depend only on the manifest and the options (not on ``--workers``, the runner,
timing or the run), so ``--resume`` keeps a shard whose state matches its fingerprint and sha256.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional

from ..errors import Location, ManifestError, NothingToWrite, ShardError, os_error_text
from . import outdir
from .files import LocalFiles, is_url
from .options import (DEFAULT_SHARD_SIZE, DEFAULT_SPLIT, SPLIT_BY, ShardOptions, parse_bytes, parse_image_size,
                      parse_split)
from .outdir import SKIPPED_FILE, STATE_DIR
from .plan import Plan, ShardTask, make_plan, shard_count, split_of
from .runners import Executor, LocalExecutor
from .writer import ShardJob, write_shard

__all__ = ["DEFAULT_SHARD_SIZE", "DEFAULT_SPLIT", "SPLIT_BY", "SKIPPED_FILE", "STATE_DIR", "Executor", "LocalExecutor",
           "LocalFiles", "Plan", "ShardJob", "ShardOptions", "ShardResult", "ShardTask", "is_url", "make_plan",
           "parse_bytes", "parse_image_size", "parse_split", "shard", "shard_count", "split_of", "write_shard"]


@dataclass
class ShardResult:
    out_dir: object             # a Path, or the URL as given
    info: dict                  # what dataset_info.json holds
    written: int = 0            # records in the dataset
    skipped: int = 0
    kept_shards: int = 0        # shards kept by --resume
    written_shards: int = 0
    notes: List[str] = field(default_factory=list)      # decisions worth saying (e.g. --split-by auto)
    warnings: List[str] = field(default_factory=list)   # split problems, also in dataset_info.json


def shard(manifest: str, out_dir, options: ShardOptions = ShardOptions(), *,
          executor: Optional[Executor] = None) -> ShardResult:
    """Convert the manifest at ``manifest`` (a path, or ``-`` for stdin) into shards under ``out_dir``.

    ``executor`` runs the shard tasks (default: :class:`LocalExecutor` with ``options.workers``; the Beam
    runner passes :class:`kpconv.shard.beam.BeamExecutor`). The manifest is validated and the plan frozen
    before OUT_DIR is touched.

    Raises ShardError (existing output, failed worker), ManifestError (malformed manifest) or
    NothingToWrite (every record skipped); in each case ``dataset_info.json`` is not written.
    """
    executor = executor or LocalExecutor(options.workers)
    files: LocalFiles = executor.files
    out = str(out_dir)
    if not files.handles_urls:
        for p in (manifest, out):
            if is_url(p):
                raise ShardError(f"{p}: not a local path: use --runner beam, which reads and writes gs://, "
                                 "s3://, hdfs://... through Apache Beam")
    if manifest != "-" and not files.is_file(manifest):
        raise ManifestError("manifest file does not exist", Location(str(manifest)))
    spool = _spool_stdin() if manifest == "-" else None
    try:
        plan = make_plan(spool or str(manifest), "<stdin>" if spool else str(manifest), options, files)
        if not plan.tasks:
            raise NothingToWrite(f"{'<stdin>' if spool else manifest}: the manifest holds no record")
        created = not files.is_remote(out) and not os.path.exists(out)
        outdir.prepare(out, plan, options, files)
        states, todo = {}, []
        for task in plan.tasks:
            kept = outdir.kept_state(out, task, files) if options.resume else None
            if kept is not None:
                states[task.name] = kept
            else:
                todo.append(task)
        if todo:
            job = ShardJob(plan.manifest, plan.images_root, len(plan.header.keypoints), out, options, files)
            if spool and files.is_remote(out):      # remote workers cannot read this machine's spool
                job = replace(job, manifest=_upload(spool, files.join(out, STATE_DIR, "manifest.jsonl"), files))
            try:
                states.update(executor.run(todo, job))
            finally:
                if job.manifest != plan.manifest:
                    files.delete(job.manifest)
        try:
            info = outdir.finish(out, plan, states, options, files)
        except NothingToWrite:
            outdir.discard(out, plan, created, files)
            raise
    except OSError as e:    # OUT_DIR read-only, a full disk, a file-size limit, a directory at a shard's name...
        raise ShardError(f"{'' if e.filename is not None else out + ': '}cannot write the shards: "
                         f"{os_error_text(e)}") from None
    finally:
        if spool:
            os.unlink(spool)
    return ShardResult(out if is_url(out) else Path(out), info, written=info["records"],
                       skipped=info["skipped"]["records"], kept_shards=len(plan.tasks) - len(todo),
                       written_shards=len(todo), notes=plan.notes, warnings=plan.warnings)


def _spool_stdin() -> str:
    """stdin copied to a local temporary file (the plan and the writers read it by offset)."""
    fd, path = tempfile.mkstemp(prefix="kpconv-stdin-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _upload(local: str, remote: str, files: LocalFiles) -> str:
    with open(local, "rb") as src, files.create(remote) as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    return remote
