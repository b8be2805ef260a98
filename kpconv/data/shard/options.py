"""The options of ``kpconv shard`` and the parsers of their text forms (the CLI's callbacks)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..images import ImageOptions

DEFAULT_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
DEFAULT_SHARD_SIZE = 64_000_000  # "64MB"
MAX_BYTES = 10 ** 15             # "1PB": any size above is a mistake
MAX_PIXELS = 1 << 26             # stored image size: 8192x8192 (192 MiB of RGB per image in memory)


@dataclass(frozen=True)
class ShardOptions:
    image: ImageOptions = field(default_factory=ImageOptions)
    split: Optional[Dict[str, float]] = None   # None: the source's split, else DEFAULT_SPLIT
    split_by: str = "auto"                     # what the hash keeps together: "group", "image" or "auto"
    shard_size: Optional[int] = None           # bytes aimed at per shard; None: DEFAULT_SHARD_SIZE and
                                               # at least MIN_SHARDS shards for big splits (see plan)
    num_shards: Optional[int] = None           # shards per split
    workers: int = 0                           # 0: number of CPUs
    seed: int = 0
    compression: str = "none"                  # "none" or "gzip"
    overwrite: bool = False
    resume: bool = False
    allow_outside_root: bool = False           # read manifest image paths that resolve outside images_root


def parse_image_size(text: str) -> Optional[Tuple[int, int]]:
    """``224`` -> (224, 224), ``320x240`` -> (320, 240) (width x height), ``none`` -> None."""
    t = text.strip().lower()
    if t == "none":
        return None
    try:
        values = [int(p) for p in t.split("x")]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v <= 65535 for v in values):
        raise ValueError(f"expected a size like 224 or 320x240 (width x height) or 'none', got {text!r}")
    if values[0] * values[-1] > MAX_PIXELS:
        raise ValueError(f"{text!r} is {values[0] * values[-1]} pixels per image, more than {MAX_PIXELS}")
    return (values[0], values[-1])


def parse_split(text: str) -> Dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` -> {"train": 0.8, ...} (fractions >= 0 that sum to 1)."""
    out: Dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not safe_name(name) or not 0 <= frac <= 1 or name in out:
            raise ValueError(f"expected name=fraction pairs like 'train=0.8,val=0.1,test=0.1' "
                             f"(names of letters, digits, '_' or '-', each once), got {item!r}")
        out[name] = frac
    total = sum(out.values())
    if abs(total - 1) > 1e-6:
        raise ValueError(f"the split fractions must sum to 1, got {total:g}")
    return out


_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def parse_bytes(text: str) -> int:
    """``64MB`` -> 64000000, ``1GiB`` -> 1073741824, ``500000`` -> 500000."""
    t = text.strip().lower()
    i = len(t)
    while i and t[i - 1].isalpha():
        i -= 1
    try:
        value = float(t[:i]) * _UNITS[t[i:]]
    except (ValueError, KeyError):
        value = 0
    if not 1 <= value <= MAX_BYTES:     # (also NaN and inf)
        raise ValueError(f"expected a size like 64MB, 500KB or 1GiB (at most 1PB), got {text!r}")
    return int(value)


def safe_name(name: str) -> bool:
    """A split name that can be part of a file name: letters, digits, '_' and '-'."""
    return bool(name) and all(c.isalnum() or c in "_-" for c in name) and name.isascii()
