"""``kpconv shard``: manifest -> deterministic TFRecord shards, planned first (:mod:`.plan`), then written in
parallel (:mod:`.writer`, :mod:`.runners`, :mod:`.beam`) into OUT_DIR (:mod:`.outdir`). A shard's bytes depend
only on the manifest and the options, so ``--resume`` keeps a shard whose fingerprint and sha256 match."""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional

from ...errors import Location, ManifestError, NothingToWrite, ShardError, os_error_text
from . import outdir
from .files import LocalFiles, is_url, spool
from .options import ShardOptions, parse_bytes, parse_image_size, parse_split
from .plan import make_plan, shard_count, split_of
from .runners import Executor, LocalExecutor
from .writer import ShardJob

__all__ = ["ShardOptions", "ShardResult", "parse_bytes", "parse_image_size", "parse_split", "shard", "shard_count",
           "split_of"]


@dataclass
class ShardResult:
    out_dir: object             # a Path, or the URL as given
    info: dict                  # what dataset_info.json holds
    written: int = 0            # records in the dataset
    skipped: int = 0
    changed: int = 0            # records written with keypoints made unlabelled (changed.jsonl)
    kept_shards: int = 0        # shards kept by --resume
    written_shards: int = 0
    notes: List[str] = field(default_factory=list)      # decisions worth saying (e.g. --split-by auto)
    warnings: List[str] = field(default_factory=list)   # split problems, also in dataset_info.json


def shard(manifest: str, out_dir, options: ShardOptions = ShardOptions(), *,
          executor: Optional[Executor] = None) -> ShardResult:
    """Convert the manifest (a path, or ``-``: stdin) into shards under ``out_dir``, the plan frozen before
    ``out_dir`` is touched; ``executor`` runs the tasks (default :class:`LocalExecutor`). Raises ShardError,
    ManifestError or NothingToWrite, and then writes no ``dataset_info.json``."""
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
    spool_path = spool(sys.stdin.buffer, "kpconv-stdin-") if manifest == "-" else None
    try:
        name = "<stdin>" if spool_path else str(manifest)
        plan = make_plan(spool_path or name, name, options, files)
        if not plan.tasks:
            raise NothingToWrite(f"{name}: the manifest holds no record")
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
            if spool_path and files.is_remote(out):      # remote workers cannot read this machine's spool
                job = replace(job, manifest=files.join(out, outdir.STATE_DIR, "manifest.jsonl"))
                with open(spool_path, "rb") as src, files.create(job.manifest) as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
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
        if spool_path:
            os.unlink(spool_path)
    return ShardResult(out if is_url(out) else Path(out), info, written=info["records"],
                       skipped=info["skipped"]["records"], changed=info["changed"]["records"], kept_shards=len(plan.tasks) - len(todo),
                       written_shards=len(todo), notes=plan.notes, warnings=plan.warnings)
