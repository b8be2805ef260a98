"""Progress bars on stderr (tqdm): shown only when stderr is a terminal and not ``--quiet``."""
from __future__ import annotations

import sys

_enabled = None  # None: decide by whether stderr is a terminal


def set_enabled(value) -> None:
    global _enabled
    _enabled = value


def enabled() -> bool:
    if _enabled is not None:
        return bool(_enabled)
    return sys.stderr.isatty()


def progress(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` on stderr when enabled, else the iterable unchanged."""
    if not enabled():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, leave=False, dynamic_ncols=True, **kwargs)
