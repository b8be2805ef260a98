"""Every file operation of ``kpconv shard``, behind one object (:class:`LocalFiles`), so that the Beam runner
can swap the filesystem (:class:`kpconv.data.shard.beam.BeamFiles`: ``gs://``, ``s3://``...)."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, List, Optional

from ...errors import ShardError
from ..imageinfo import open_image
from ..manifest import atomic_output

_URL = re.compile(r"^[A-Za-z][-A-Za-z0-9+.]*://")


def is_url(path) -> bool:
    """``gs://b/x``, ``s3://b/x``, ``hdfs://x``...: a path for a filesystem other than the local one."""
    return bool(_URL.match(str(path)))


def spool(src: IO[bytes], prefix: str) -> str:
    """``src`` copied into a new local temporary file (the caller removes it); returns its path."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 22)
    except BaseException:
        os.unlink(path)
        raise
    return path


class LocalFiles:
    """The local filesystem. ``handles_urls``: whether paths with a scheme can be read and written."""

    handles_urls = False

    def is_remote(self, path: str) -> bool:
        """True when ``path`` goes through another filesystem than the local one."""
        return False

    def join(self, base: str, *parts: str) -> str:
        if is_url(base):
            return "/".join([base.rstrip("/"), *parts])
        return str(Path(base, *parts))

    def dirname(self, path: str) -> str:
        """The absolute directory of a file."""
        if is_url(path):
            return path.rsplit("/", 1)[0]
        return str(Path(path).resolve().parent)

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def open_read(self, path: str) -> IO[bytes]:
        return open(path, "rb")

    def open_image(self, path: str, root: Optional[str] = None) -> IO[bytes]:
        """SourceImage's opener: :func:`kpconv.data.imageinfo.open_image` (a regular file, size-capped, inside
        ``root`` once symlinks are resolved unless ``root`` is None; FileNotFoundError / OSError / BadImage);
        unbuffered, as an image is read whole (one read of its size instead of chunks through a buffer)."""
        return open_image(path, root)

    def create(self, path: str) -> IO[bytes]:
        return open(path, "wb")

    def sync(self, f) -> None:
        f.flush()
        os.fsync(f.fileno())

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def delete_tree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def size(self, path: str) -> int:
        """Raises OSError."""
        return os.stat(path).st_size

    def list_dir(self, path: str) -> List[str]:
        """Names of the entries of a directory ([] when it does not exist); ShardError when it is a file."""
        if os.path.exists(path) and not os.path.isdir(path):
            raise ShardError(f"{path}: exists and is not a directory")
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def write_atomic(self, path: str, data: bytes) -> None:
        """The whole file under its name, or nothing (temporary file + rename), with the usual permissions."""
        with atomic_output(path, "wb") as f:
            f.write(data)

    def read_text(self, path: str) -> str:
        """Raises OSError, UnicodeDecodeError."""
        with self.open_read(path) as f:
            return f.read().decode("utf-8")

    def sync_dir(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


LOCAL = LocalFiles()
