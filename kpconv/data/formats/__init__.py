"""Annotation readers, one module per format, behind a registry.

``get(name)`` returns a reader class; ``detect(sources)`` picks one by content for ``--format auto``.
Nothing outside this package branches on a format name.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Dict, List, Sequence, Type

from ...errors import FormatDetectionError
from .base import PIXEL_ORIGINS, Reader

_REGISTRY: Dict[str, Type[Reader]] = {}
# The format names, for option choices without importing every reader (a test keeps it in step).
KNOWN = ("coco", "csv", "cvat", "dlc", "dlib", "kpconv-json", "label-studio", "labelme", "sleap", "yolo")
# Modules imported on first use, in detection order (most specific first).
_MODULES = ("sleap", "kpconv_json", "coco", "cvat", "dlib", "label_studio", "dlc", "labelme", "yolo", "csv_table")


def register(cls: Type[Reader]) -> Type[Reader]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no format name")
    if cls.pixel_origin not in PIXEL_ORIGINS:   # (each reader states its source's convention, see base.py)
        raise TypeError(f"{cls.__name__}: pixel_origin {cls.pixel_origin!r} is not one of {', '.join(PIXEL_ORIGINS)}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def names() -> List[str]:
    _load_all()
    return list(_REGISTRY)      # in the import order of _MODULES


def get(name: str) -> Type[Reader]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FormatDetectionError(
            f"unknown format {name!r}; known formats: {', '.join(names())}") from None


def detect(sources: Sequence[Path]) -> Type[Reader]:
    """The one reader whose ``detect`` accepts ``sources``; a clear error when none or several do."""
    _load_all()
    hits = [cls for cls in _REGISTRY.values() if cls.detect(sources)]
    shown = ", ".join(str(s) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
    if not hits:
        expected = "; ".join(f"{cls.name}: {cls.expects}" for cls in _REGISTRY.values())
        raise FormatDetectionError(
            f"cannot tell the annotation format of {shown}; use --format with one of: {', '.join(names())}. "
            f"Each format expects: {expected}")
    if len(hits) > 1:
        raise FormatDetectionError(
            f"{shown} could be any of: {', '.join(c.name for c in hits)}; choose one with --format")
    return hits[0]
