"""The frame-to-frame tracker and the identity-switch count, on synthetic tracks."""
from __future__ import annotations

import numpy as np
import pytest

from kpconv.model.tracking import NO_TRACK, Tracker, identity_switches, track

K = 4
OFFSETS = np.array([[0, 0], [6, 0], [0, 6], [6, 6]], float)     # a small square "animal"


def pose(x, y, conf=1.0):
    p = np.zeros((K, 3))
    p[:, :2] = OFFSETS + [x, y]
    p[:, 2] = conf
    return p


def crossing(n=40, step=3.0, gap=10.0):
    """A walks left to right at y = 0, B right to left at y = gap: their paths cross (in x) halfway."""
    a = [(10 + step * t, 0.0) for t in range(n)]
    b = [(10 + step * (n - 1 - t), gap) for t in range(n)]
    return a, b


def switches(ids_per_frame, truth_per_frame):
    return identity_switches([list(zip(t, p)) for t, p in zip(truth_per_frame, ids_per_frame)])


def test_crossing_tracks_keep_their_ids():
    a, b = crossing()
    frames, truth = [], []
    for t, (pa, pb) in enumerate(zip(a, b)):
        order = [("A", pa), ("B", pb)] if t % 2 == 0 else [("B", pb), ("A", pa)]   # instance order shuffles
        frames.append([pose(*p) for _, p in order])
        truth.append([name for name, _ in order])
    ids = track(frames, max_distance=20)
    assert {ids[0][0], ids[0][1]} == {0, 1}
    assert switches(ids, truth) == 0
    by_name = {name: i for name, i in zip(truth[0], ids[0])}
    assert all(by_name[n] == i for f_t, f_i in zip(truth, ids) for n, i in zip(f_t, f_i))


def test_a_greedy_nearest_match_would_switch_but_the_assignment_does_not():
    # both move 9 px right: the closest pair (B, the instance at 9, 1 px) taken first, greedily, would
    # leave A the instance at 19; the assignment minimises the sum (9 + 9 < 1 + 19)
    tracker = Tracker(max_distance=50)
    assert tracker.step([pose(0, 0), pose(10, 0)]) == [0, 1]
    assert tracker.step([pose(9, 0), pose(19, 0)]) == [0, 1]


def test_unconfident_keypoints_are_ignored():
    tracker = Tracker(max_distance=10, min_confidence=0.5)
    assert tracker.step([pose(0, 0), pose(100, 0)]) == [0, 1]
    wild = pose(2, 0)
    wild[1] = [500, 500, 0.1]           # an unconfident keypoint far away does not count
    assert tracker.step([pose(101, 0), wild]) == [1, 0]


def test_centre_when_no_keypoint_in_common():
    tracker = Tracker(max_distance=10)
    first = pose(0, 0)
    first[2:, 2] = 0          # only keypoints 0, 1 confident
    second = pose(1, 0)
    second[:2, 2] = 0         # only keypoints 2, 3: nothing in common, the centres decide
    assert tracker.step([first]) == [0]
    assert tracker.step([second], centres=[(4, 3)]) == [0]
    # no confident keypoint and no centre: nothing to match on, a new track
    assert tracker.step([pose(0, 0, conf=0.0)]) == [1]


def test_gate_makes_a_new_track():
    tracker = Tracker(max_distance=10)
    assert tracker.step([pose(0, 0)]) == [0]
    assert tracker.step([pose(30, 0)]) == [1]           # too far: not the same animal
    assert tracker.step([pose(31, 0), pose(1, 0)]) == [1, 0]


@pytest.mark.parametrize("memory, expected", [(5, [0, 1]), (3, [0, 1]), (2, [2, 1])])
def test_memory_rematches_a_track_that_vanished(memory, expected):
    tracker = Tracker(max_distance=10, memory=memory)
    assert tracker.step([pose(0, 0), pose(50, 50)]) == [0, 1]
    for t in range(3):                               # A hidden for 3 frames, B walks on
        assert tracker.step([pose(50 + t, 50)]) == [1]
    assert tracker.active == ([0, 1] if memory >= 3 else [1])
    assert tracker.step([pose(2, 0), pose(53, 50)]) == expected


def test_max_tracks_reuses_the_free_track():
    tracker = Tracker(max_distance=10, memory=1, max_tracks=2)
    assert tracker.step([pose(0, 0), pose(50, 0)]) == [0, 1]
    assert tracker.step([pose(50, 0)]) == [1]
    for _ in range(3):
        tracker.step([pose(50, 0)])                  # track 0 retired
    # far from anything, but two animals are all there is: it is track 0 again
    assert tracker.step([pose(200, 200), pose(50, 0)]) == [0, 1]
    # a third instance in one frame: no track for it
    assert tracker.step([pose(200, 200), pose(50, 0), pose(400, 0)]) == [0, 1, NO_TRACK]


def test_deterministic():
    rng = np.random.default_rng(0)
    frames = [[pose(*rng.uniform(0, 100, 2)) for _ in range(rng.integers(0, 5))] for _ in range(50)]
    assert track(frames, max_distance=30) == track(frames, max_distance=30)


def test_options_checked():
    with pytest.raises(ValueError, match="max_distance"):
        Tracker(max_distance=0)
    with pytest.raises(ValueError, match="memory"):
        Tracker(max_distance=1, memory=-1)
    with pytest.raises(ValueError, match="centres"):
        Tracker(max_distance=1).step([pose(0, 0)], centres=[])


def test_identity_switches():
    # A tracked as 0 then 1 (a switch), B as 1 then 0 (another), a miss in between does not count
    frames = [[("A", 0), ("B", 1)], [("A", None), ("B", 1)], [("A", 1), ("B", 0)], [("A", 1), ("B", 0)]]
    assert identity_switches(frames) == 2
    assert identity_switches([[("A", 0)], [], [("A", 0)]]) == 0
    # a gap does not reset: A back on its old track after being on another counts both changes
    assert identity_switches([[("A", 0)], [("A", 3)], [("A", -1)], [("A", 0)]]) == 2


def test_swapped_ids_count_as_switches():
    a, b = crossing(n=10)
    frames = [[pose(*pa), pose(*pb)] for pa, pb in zip(a, b)]
    ids = track(frames, max_distance=20)
    truth = [["A", "B"]] * 10
    swapped = ids[:5] + [list(reversed(f)) for f in ids[5:]]
    assert switches(ids, truth) == 0 and switches(swapped, truth) == 2


@pytest.mark.slow
def test_two_flies_ground_truth_with_noise_keeps_identities():
    from pathlib import Path

    sio = pytest.importorskip("sleap_io")
    slp = Path("/work/shared/datasets/two-flies/clip.slp")
    if not slp.is_file():
        pytest.skip("two-flies dataset not present")
    labels = sio.load_slp(str(slp), open_videos=False)
    rng = np.random.default_rng(0)
    frames, truth = [], []
    for lf in sorted(labels.labeled_frames, key=lambda f: f.frame_idx):
        insts = list(lf.user_instances)
        rng.shuffle(insts)
        poses = []
        for inst in insts:
            xy = inst.numpy()
            conf = np.isfinite(xy).all(1).astype(float)
            poses.append(np.c_[np.nan_to_num(xy) + rng.normal(0, 5, xy.shape), conf])
        frames.append(poses)
        truth.append([inst.track.name for inst in insts])
    ids = track(frames, max_distance=60, memory=5)      # a fly is ~70 px long
    assert len({i for f in ids for i in f}) == 2
    assert switches(ids, truth) == 0
