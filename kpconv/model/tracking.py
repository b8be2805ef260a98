"""Identities across video frames: a frame-to-frame tracker and the identity-switch count.

Tracking is a step after inference (as in SLEAP and sleap-nn): it sees each frame's instances, never the
images. :meth:`Tracker.step` pairs the active tracks with the frame's instances by
``scipy.optimize.linear_sum_assignment`` on a cost: the mean distance over the keypoints confident in both
(confidence >= ``min_confidence``; a track's pose is the last confident position of each keypoint), else the
distance between their centres (given, or the mean of the confident keypoints). A pair costing more than
``max_distance`` (the gate, in the keypoints' units) is never matched. A track missed in a frame stays
matchable by its last pose for ``memory`` more frames; an unmatched instance starts a new track (ids 0, 1, 2,
... in order of creation). With ``max_tracks`` no track beyond that number is made: the unmatched instances
take the tracks not matched in this frame, without the gate, closest first; any left get -1 (no track).
The same frames give the same ids. :func:`identity_switches` counts MOT identity switches.

Example::

    tracker = Tracker(max_distance=50, memory=5)
    for frame in frames:                         # each: a list of (K, 3) arrays, x, y, confidence
        ids = tracker.step(frame)                # one track id per instance, in order
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

NO_TRACK = -1


@dataclass
class _Track:
    id: int
    pose: np.ndarray            # (K, 2): last confident position of each keypoint, NaN where never confident
    centre: Optional[np.ndarray]
    last_frame: int


@dataclass
class Tracker:
    """Links instances from frame to frame (see the module docstring). Call :meth:`step` once per
    frame, in order, frames without instances included (they age the tracks)."""

    max_distance: float
    memory: int = 5
    min_confidence: float = 0.5
    max_tracks: Optional[int] = None
    frame: int = field(default=-1, init=False)
    _tracks: List[_Track] = field(default_factory=list, init=False, repr=False)
    _next_id: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if not (self.max_distance > 0):
            raise ValueError(f"max_distance: expected a distance > 0, got {self.max_distance!r}")
        if self.memory < 0:
            raise ValueError(f"memory: expected a number of frames >= 0, got {self.memory!r}")
        if self.max_tracks is not None and self.max_tracks < 1:
            raise ValueError(f"max_tracks: expected None or >= 1, got {self.max_tracks!r}")

    @property
    def active(self) -> List[int]:
        """Ids of the tracks the next frame can still match (missed in at most ``memory`` frames)."""
        return [t.id for t in self._tracks if self.frame + 1 - t.last_frame <= self.memory + 1]

    def step(self, keypoints: Sequence[np.ndarray], centres: Optional[Sequence[Optional[Sequence[float]]]] = None
             ) -> List[int]:
        """Track ids for this frame's instances (``keypoints``: one (K, 3) array of x, y, confidence per
        instance; ``centres``: optionally one (x, y) or None per instance)."""
        self.frame += 1
        poses = [np.asarray(k, dtype=np.float64).reshape(-1, 3) for k in keypoints]
        if centres is not None and len(centres) != len(poses):
            raise ValueError(f"centres: expected one per instance ({len(poses)}), got {len(centres)}")
        inst_pose = [np.where((p[:, 2:3] >= self.min_confidence) & np.isfinite(p[:, :2]), p[:, :2], np.nan)
                     for p in poses]
        inst_centre = [self._centre(inst_pose[i], None if centres is None else centres[i]) for i in range(len(poses))]
        ids = [NO_TRACK] * len(poses)
        live = [t for t in self._tracks if self.frame - t.last_frame <= self.memory + 1]
        matched = self._assign(live, inst_pose, inst_centre, list(range(len(poses))), gate=True)
        for ti, i in matched:
            ids[i] = live[ti].id
        left = [i for i in range(len(poses)) if ids[i] == NO_TRACK]
        n_new = len(left) if self.max_tracks is None else max(0, min(len(left), self.max_tracks - len(self._tracks)))
        if self.max_tracks is not None and len(left) > n_new:
            used = {ids[i] for i in range(len(poses))}
            free = [t for t in self._tracks if t.id not in used]
            # the closest of the unmatched instances first take the free tracks, then new ones are made
            for ti, i in self._assign(free, inst_pose, inst_centre, left, gate=False):
                ids[i] = free[ti].id
            left = [i for i in left if ids[i] == NO_TRACK]
            n_new = max(0, min(len(left), self.max_tracks - len(self._tracks)))
        for i in left[:n_new]:
            ids[i] = self._next_id
            self._tracks.append(_Track(self._next_id, np.full((poses[i].shape[0], 2), np.nan), None, self.frame))
            self._next_id += 1
        by_id: Dict[int, _Track] = {t.id: t for t in self._tracks}
        for i, tid in enumerate(ids):
            if tid == NO_TRACK:
                continue
            t = by_id[tid]
            pose = inst_pose[i]
            if t.pose.shape != pose.shape:
                raise ValueError(f"instance {i}: {pose.shape[0]} keypoints, the track's have {t.pose.shape[0]}")
            seen = ~np.isnan(pose[:, 0])
            t.pose[seen] = pose[seen]
            t.centre = inst_centre[i]
            t.last_frame = self.frame
        return ids

    def _centre(self, pose: np.ndarray, given) -> Optional[np.ndarray]:
        if given is not None:
            c = np.asarray(given, dtype=np.float64).reshape(2)
            if np.isfinite(c).all():
                return c
        seen = ~np.isnan(pose[:, 0])
        return pose[seen].mean(0) if seen.any() else None

    def _cost(self, track: _Track, pose: np.ndarray, centre: Optional[np.ndarray]) -> float:
        both = ~np.isnan(track.pose[:, 0]) & ~np.isnan(pose[:, 0]) if track.pose.shape == pose.shape else None
        if both is not None and both.any():
            return float(np.linalg.norm(track.pose[both] - pose[both], axis=1).mean())
        if track.centre is not None and centre is not None:
            return float(np.linalg.norm(track.centre - centre))
        return np.inf

    def _assign(self, tracks: List[_Track], poses, centres, instances: List[int], gate: bool
                ) -> List[Tuple[int, int]]:
        """(index in ``tracks``, instance) pairs of the cheapest assignment; pairs above the gate (or with
        no distance at all) are left out."""
        if not tracks or not instances:
            return []
        from scipy.optimize import linear_sum_assignment

        cost = np.array([[self._cost(t, poses[i], centres[i]) for i in instances] for t in tracks])
        allowed = np.isfinite(cost) & ((cost <= self.max_distance) if gate else True)
        if not allowed.any():
            return []
        big = (cost[allowed].max() + 1.0) * (cost.size + 1)     # more than any assignment of allowed pairs
        rows, cols = linear_sum_assignment(np.where(allowed, cost, big))
        return [(int(r), instances[c]) for r, c in zip(rows, cols) if allowed[r, c]]


def track(frames: Iterable[Sequence[np.ndarray]], max_distance: float, memory: int = 5, min_confidence: float = 0.5,
          max_tracks: Optional[int] = None, centres: Optional[Iterable[Sequence]] = None) -> List[List[int]]:
    """Track ids of every frame's instances (a :class:`Tracker` run over ``frames`` in order)."""
    tracker = Tracker(max_distance, memory, min_confidence, max_tracks)
    if centres is None:
        return [tracker.step(f) for f in frames]
    return [tracker.step(f, c) for f, c in zip(frames, centres)]


def identity_switches(frames: Iterable[Iterable[Tuple[Hashable, Optional[int]]]]) -> int:
    """Identity switches (CLEAR MOT, Bernardin & Stiefelhagen 2008), for ``frames`` in time order, each
    the (true identity, predicted track id) pairs of the instances matched to the ground truth in that
    frame (a predicted track of None or -1: the true instance was missed; it is left out). A switch is
    counted each time a true identity is matched to a track other than the one it was last matched
    to, in any earlier frame (a gap in between does not reset it)."""
    last: Dict[Hashable, int] = {}
    switches = 0
    for pairs in frames:
        for true_id, pred in pairs:
            if pred is None or pred == NO_TRACK:
                continue
            if true_id in last and last[true_id] != pred:
                switches += 1
            last[true_id] = pred
    return switches
