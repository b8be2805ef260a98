"""Who executes the shard tasks: ``Executor.run(tasks, job) -> {shard name: state}`` writes and commits each
task's shard, or raises. :class:`LocalExecutor` runs them in this process or a process pool;
:class:`kpconv.data.shard.beam.BeamExecutor` as a Beam pipeline."""
from __future__ import annotations

import os
import re
import signal
from typing import Dict, Protocol, Sequence

from ...errors import ManifestError, ShardError, os_error_text
from ...progress import progress
from ..workers import process_pool, stop
from .files import LOCAL
from .outdir import commit_shard
from .plan import ShardTask
from .writer import ShardJob, write_shard


class Executor(Protocol):
    files: object       # the LocalFiles (or subclass) that the tasks read and write through

    def run(self, tasks: Sequence[ShardTask], job: ShardJob) -> Dict[str, dict]:
        ...


def _write_and_commit(task: ShardTask, job: ShardJob) -> dict:
    state = write_shard(task, job)
    commit_shard(job.out_dir, state, job.files)
    return state


class LocalExecutor:
    """One shard after another in this process, or a process pool of ``workers`` (0: the CPUs)."""

    def __init__(self, workers: int = 0, files=None):
        self.workers = workers
        self.files = files or LOCAL

    def run(self, tasks: Sequence[ShardTask], job: ShardJob) -> Dict[str, dict]:
        workers = min(self.workers or os.cpu_count() or 1, len(tasks))
        if workers <= 1:
            return {t.name: _write_and_commit(t, job) for t in progress(tasks, desc="shards", unit="shard")}
        return _write_parallel(tasks, job, workers)


def _died(processes: dict, job: ShardJob) -> str:
    """The message for a broken pool: which worker died (the one not stopped by the pool's own SIGTERM),
    how, and the shard it was writing (its temporary file holds the worker's pid)."""
    dead = {pid: p.exitcode for pid, p in processes.items() if p.exitcode not in (None, 0, -signal.SIGTERM)}
    shards = []
    for name in job.files.list_dir(job.out_dir):
        m = _TMP.match(name)
        if m and int(m.group(2)) in dead:
            shards.append(m.group(1))
    how = ", ".join(f"pid {pid}: " + (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
                    for pid, code in sorted(dead.items()) if code is not None)
    what = f"while writing {', '.join(sorted(shards))}" if shards else "before it started a shard"
    return (f"a worker process died {what} ({how or 'killed, or out of memory?'}); complete shards are kept: "
            "rerun with --resume")


_TMP = re.compile(r"^\.(.+)\.tmp-(\d+)-[0-9a-f]+$")       # writer.write_shard's temporary file names


def _write_parallel(tasks: Sequence[ShardTask], job: ShardJob, workers: int) -> Dict[str, dict]:
    from concurrent.futures import FIRST_EXCEPTION, wait
    from concurrent.futures.process import BrokenProcessPool

    states = {}
    pool = process_pool(workers, preload=["kpconv.shard"])      # (forked unless TensorFlow is loaded)
    bar = None
    interrupted = False
    try:
        futures = {pool.submit(_write_and_commit, task, job): task for task in tasks}
        bar = progress(total=len(futures), desc="shards", unit="shard")
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                task = futures[fut]
                try:
                    states[task.name] = fut.result()
                except BrokenProcessPool:
                    processes = dict(getattr(pool, "_processes", None) or {})
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise ShardError(_died(processes, job)) from None
                except ManifestError as e:
                    raise ShardError(f"writing {task.name} failed: {e}") from None
                except OSError as e:
                    raise ShardError(f"{job.out_dir}: writing {task.name} failed: {os_error_text(e)}") from None
                if bar is not None:
                    bar.update(1)
        return states
    except KeyboardInterrupt:
        interrupted = True          # (Ctrl-C: the shards being written are not waited for)
        raise
    finally:
        if bar is not None:
            bar.close()
        stop(pool, kill=interrupted)
