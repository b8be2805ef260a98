"""Keypoint metadata helpers: flip pairs inferred from names, parsing of name lists and pairs."""
from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

# Patterns whose group "s" is the side marker of a left name; the partner name has the marker
# swapped (left -> right, l -> r, L -> R, case kept) and must exist (compared case-insensitively).
_SEP = r"[_\-\s.]"
_SIDE_RULES = [
    re.compile(r"(?i)(?P<s>left)"),                                       # left_eye, front_left, LeftHand
    re.compile(rf"(?i)(?:^|(?<={_SEP}))(?P<s>l)(?={_SEP})"),              # l_eye, eye.l.tip
    re.compile(rf"(?i)(?<={_SEP})(?P<s>l)$"),                             # eye_L
    re.compile(r"^(?P<s>L)(?=[A-Z])"),                                    # LEye (OpenPose style)
    re.compile(r"^(?P<s>L)(?=[a-z])"),                                    # Lknee
    re.compile(r"(?<=[a-z])(?P<s>L)$"),                                   # earL
    re.compile(r"(?<=[a-z])(?P<s>L)(?=\d+$)"),                            # forelegL4 (SLEAP's fly skeleton)
    re.compile(rf"(?:^|(?<={_SEP}))[A-Z](?P<s>L)(?={_SEP}|$)"),           # FL_paw, paw_HL
    re.compile(rf"(?:^|(?<={_SEP}))(?P<s>L)[A-Z](?={_SEP}|$)"),           # LF_paw, paw_LH
]
_RIGHT = {"left": "right", "l": "r"}


def _swap_case_like(src: str, word: str) -> str:
    if src.isupper():
        return word.upper()
    if src[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def infer_flip_pairs(names: Sequence[str]) -> List[Tuple[int, int]]:
    """Pairs (left index, right index) found from names such as ``left_eye``/``right_eye``,
    ``front_left``/``front_right``, ``l_knee``/``r_knee``, ``LeftHand``/``RightHand``,
    ``ear_L``/``ear_R``, ``earL``/``earR``, ``forelegL4``/``forelegR4``, ``Lknee``/``Rknee``, ``FL_paw``/``FR_paw``
    (case-insensitive)."""
    lower = {n.lower(): i for i, n in enumerate(names)}
    pairs = []
    used = set()
    for i, name in enumerate(names):
        if i in used:
            continue
        for pattern in _SIDE_RULES:
            for m in pattern.finditer(name):
                src = m.group("s")
                partner = name[:m.start("s")] + _swap_case_like(src, _RIGHT[src.lower()]) + name[m.end("s"):]
                j = lower.get(partner.lower())
                if j is not None and j != i and j not in used:
                    pairs.append((i, j))
                    used.update((i, j))
                    break
            if i in used:
                break
    return sorted(pairs)


def parse_names(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ValueError("expected comma-separated keypoint names, e.g. 'nose,left_eye,right_eye'")
    if len(set(names)) != len(names):
        raise ValueError("keypoint names must be unique")
    return names


def parse_pairs(text: str, dash: bool = False,
                expected: str = "pairs like 'left_eye:right_eye,left_ear:right_ear'") -> List[Tuple[str, str]]:
    """``a:b,c:d`` (with ``dash`` also ``a-b``, where no ``:`` is given) -> [("a", "b"), ("c", "d")]"""
    pairs = []
    for item in text.split(","):
        parts = [p.strip() for p in item.split("-" if dash and ":" not in item else ":")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"expected {expected}, got {item!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def parse_edges(text: str) -> List[Tuple[str, str]]:
    """``a-b,b-c`` (or ``a:b,b:c``, for names that hold a ``-``) -> [("a", "b"), ("b", "c")]"""
    return parse_pairs(text, True, "edges like 'nose-left_eye,nose-right_eye' (or 'a:b' when a name holds a '-')")


def pairs_to_indices(pairs: Sequence[Tuple[str, str]], names: Sequence[str]) -> List[Tuple[int, int]]:
    index = {n: i for i, n in enumerate(names)}
    out = []
    for a, b in pairs:
        missing = [n for n in (a, b) if n not in index]
        if missing:
            raise ValueError(f"unknown keypoint name(s) {', '.join(missing)}; known: {', '.join(names)}")
        out.append((index[a], index[b]))
    return out


def remap_pairs(pairs: Sequence[Tuple[int, int]], old: Sequence[str], new: Sequence[str]) -> List[Tuple[int, int]]:
    """Index pairs over ``old`` names re-expressed over ``new`` names; pairs with a dropped name go."""
    index = {n: i for i, n in enumerate(new)}
    out = []
    for a, b in pairs:
        ia, ib = index.get(old[a]), index.get(old[b])
        if ia is not None and ib is not None:
            out.append((ia, ib))
    return out
