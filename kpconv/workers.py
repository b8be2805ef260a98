"""Worker processes that never outlive the process that owns their pool (docs/safety.md): every pool passes
:func:`die_with_parent` as its ``initializer``, so that a ``kill -9`` of the command leaves no worker waiting on
its task queue forever. :func:`later` runs a function in a pool kept for the life of the process."""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from typing import Callable, Dict, Tuple

from .errors import KpconvError

_PR_SET_PDEATHSIG = 1


def die_with_parent(owner_pid: int) -> None:
    """Make this worker process die when ``owner_pid`` (the process that created its pool) does."""
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


_POOLS: Dict[Tuple[int, str], object] = {}


def later(processes: int, fn: Callable, *args) -> Callable[[], object]:
    """Starts ``fn(*args)`` in a pool of ``processes`` worker processes (0: nothing starts; it runs in
    this process when waited for) and returns the function that waits for its result (or raises its
    exception). The pool is made on first use, forked when :func:`can_fork`, and shut down at exit."""
    if processes < 1:
        return lambda: fn(*args)
    import multiprocessing

    method = "fork" if can_fork() else "forkserver"
    pool = _POOLS.get((processes, method))
    if pool is None:
        import atexit
        from concurrent.futures import ProcessPoolExecutor

        pool = _POOLS[(processes, method)] = ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context(method), initializer=die_with_parent,
            initargs=(os.getpid(),))
        atexit.register(pool.shutdown)
    future = pool.submit(fn, *args)

    def wait():
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool:
            _POOLS.pop((processes, method), None)
            raise WorkerDied(f"a helper process of kpconv died while running {fn.__name__} (killed, or out of "
                             "memory); run again, or with --workers 1 to do without helpers") from None
    return wait


class WorkerDied(KpconvError):
    """A process of a :func:`later` pool ended without finishing its work."""
