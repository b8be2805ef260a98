"""A quiet terminal for the TensorFlow commands: :func:`quiet_tensorflow` sets the log levels before TensorFlow is
imported; as its C++ code still writes start-up lines straight to descriptor 2, :func:`filter_stderr` puts a
pipe there and a thread forwards every other line. ``kpconv -v`` keeps everything."""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
from typing import Optional

# absl/glog lines from C++: "I0000 00:00:1796086446.819205    5057 port.cc:153] ..." (info and warning
# always; errors only those of the GPU probing that any CPU-only machine prints)
_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:. ]+\d+ \S+:\d+\] "
    rb"|E\d{4} [\d:. ]+\d+ (cuda\w*|cudart_stub|cuda_\w+|gpu_\w+|tensorrt\w*)\.cc:\d+\] "
    rb"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|fully_quantize: \d+, inference_type: "
    rb"|WARNING:(absl|tensorflow):"
    rb"|\S+\.py:\d+: (UserWarning|DeprecationWarning|FutureWarning): .*(keras|tensorflow|absl)"
    rb")")
# Python logging's default format below ERROR ("WARNING:root:...", "INFO:__main__:..."): Apache Beam's
# workers are processes of their own that log so, whatever this process's log levels (kpconv -q shard)
_PYTHON_LOG = re.compile(rb"^(DEBUG|INFO|WARNING):[\w.]+:")
_installed: Optional["_Filter"] = None


def quiet_tensorflow(verbose: bool = False) -> None:
    """Log levels for TensorFlow, absl and Keras, before TensorFlow is imported (no-op with verbose)."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def filter_stderr(python_logs: bool = False) -> bool:
    """Filter TensorFlow's start-up lines (with ``python_logs`` also Python log lines below ERROR, children's too)
    out of descriptor 2 for the rest of the process, when ``sys.stderr`` is descriptor 2 itself; returns
    whether the filter is on. Whether stderr is a terminal (progress bars) is decided before."""
    global _installed
    if _installed is not None:
        _installed.python_logs = _installed.python_logs or python_logs
        return True
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return False
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is an OSError
        return False
    from . import progress

    if progress._enabled is None:
        progress.set_enabled(sys.stderr.isatty())
    _installed = _Filter(python_logs)
    atexit.register(_installed.stop)
    return True


def _maybe_noise(partial: bytes) -> bool:
    """Whether an unfinished line could still become a noise line (so it is held back)."""
    if not partial:
        return False
    if partial[:1] in (b"I", b"W", b"E") and (len(partial) == 1 or partial[1:2].isdigit()):
        return True
    return any(p.startswith(partial[:len(p)]) for p in (b"WARNING: All log", b"WARNING:absl:", b"WARNING:tensorflow:",
                                                        b"To enable the following",
                                                        b"INFO: Created TensorFlow Lite", b"fully_quantize:"))


class _Filter:
    def __init__(self, python_logs: bool = False):
        self.python_logs = python_logs
        sys.stderr.flush()
        self.real = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self.read_fd = r
        self.thread = threading.Thread(target=self._pump, name="kpconv-stderr-filter", daemon=True)
        self.thread.start()

    def _emit(self, data: bytes) -> None:
        while data:
            n = os.write(self.real, data)
            data = data[n:]

    def _pump(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            parts = re.split(rb"(\r\n|\n|\r)", buf)
            buf = parts.pop()                   # the unfinished line
            out = []
            for i in range(0, len(parts), 2):
                line, end = parts[i], parts[i + 1]
                if not (_NOISE.match(line) or self.python_logs and _PYTHON_LOG.match(line)):
                    out.append(line + end)
            if buf and not _maybe_noise(buf) and not (self.python_logs and buf[:1] in (b"D", b"I", b"W")):
                out.append(buf)
                buf = b""
            if out:
                self._emit(b"".join(out))
        if buf and not _NOISE.match(buf):
            self._emit(buf)
        os.close(self.read_fd)

    def stop(self) -> None:
        """Restore descriptor 2 and forward what is left (at exit)."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.real, 2)       # closes the pipe's write end: the thread reads the rest, then EOF
        self.thread.join(timeout=5)
        os.close(self.real)


@contextlib.contextmanager
def stdout_to_stderr():
    """Inside: whatever TensorFlow prints (Python or C++) goes to stderr, so stdout keeps only data."""
    with contextlib.redirect_stdout(sys.stderr):
        saved = None
        try:
            if sys.__stdout__ is not None and sys.__stdout__.fileno() == 1:
                sys.__stdout__.flush()
                saved = os.dup(1)
                os.dup2(2, 1)
        except (AttributeError, OSError, ValueError):
            saved = None
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)
