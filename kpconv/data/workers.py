"""Worker processes that never outlive the process owning their pool (docs/safety.md: :func:`die_with_parent`)
and leave Ctrl-C to it (:func:`stop`)."""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from typing import Sequence

_PR_SET_PDEATHSIG = 1


def die_with_parent(owner_pid: int) -> None:
    """Make this worker process die when ``owner_pid`` (the process that created its pool) does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # (Ctrl-C is the owner's to handle: it stops the workers)
    armed = _set_pdeathsig()
    if not process_alive(owner_pid):
        os._exit(1)                 # the owner died before the worker was set up
    if armed and os.getppid() == owner_pid:
        return
    threading.Thread(target=_watch, args=(owner_pid,), name="kpconv-owner-watch", daemon=True).start()


def _set_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(pid: int) -> None:
    try:
        select.select([os.pidfd_open(pid)], [], [])     # readable once the process has ended
    except (AttributeError, OSError):                    # no pidfd: poll the pid
        while process_alive(pid):
            time.sleep(0.5)
    os._exit(1)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def can_fork() -> bool:
    """Whether worker processes may be forked: TensorFlow (not fork-safe) is not loaded. Else they are
    started by a fork server, which re-imports the ``__main__`` module of a script."""
    import multiprocessing

    return "tensorflow" not in sys.modules and "fork" in multiprocessing.get_all_start_methods()


def process_pool(processes: int, preload: Sequence[str] = ()):
    """A ``ProcessPoolExecutor`` of ``processes`` workers, each started with :func:`die_with_parent`: forked
    when :func:`can_fork`, else by a fork server that imports the modules ``preload`` once."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("fork" if can_fork() else "forkserver")
    if preload and ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(list(preload))
    return ProcessPoolExecutor(processes, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),))


def stop(pool, kill: bool = False) -> None:
    """Shut a process pool down: running tasks finish, the others are cancelled; ``kill`` kills the workers first
    (only where results are small: one killed while writing a long result leaves the pool waiting)."""
    if kill:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            try:
                process.kill()
            except (OSError, ValueError):   # already gone, or closed
                pass
    pool.shutdown(wait=True, cancel_futures=True)

