"""The .slp writer for predictions: read back with sleap-io."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from PIL import Image

sio = pytest.importorskip("sleap_io")

from kpconv.errors import AnnotationError, OutputError  # noqa: E402
from kpconv.data.formats.sleap import SlpPrediction, write_slp  # noqa: E402
from test_formats_sleap import tiny_video  # noqa: E402

NAMES = ["head", "tail", "eyeL", "eyeR"]


def kps(x, y, conf=(0.9, 0.8, 0.7, 0.6)):
    return [[x, y, conf[0]], [x + 4, y, conf[1]], [x, y + 4, conf[2]], [x + 4, y + 4, conf[3]]]


def test_written_file_reads_back(tmp_path):
    tiny_video(tmp_path / "tiny.mp4")
    for name, size in (("a.png", (30, 20)), ("b.png", (30, 20)), ("c.png", (16, 16))):
        Image.new("L", size).save(tmp_path / name)
    video = str(tmp_path / "tiny.mp4")
    nan_kp = kps(10.5, 5.5)
    nan_kp[1] = [float("nan"), float("nan"), 0.0]
    preds = [
        SlpPrediction(video, kps(1.5, 2.5), frame=3, score=0.95, track="0"),
        SlpPrediction(video, nan_kp, frame=3, track="1"),
        SlpPrediction(video, kps(2.5, 2.5, (0.9, 0.2, 0.9, 0.9)), frame=4, score=0.9, track="0"),
        SlpPrediction(str(tmp_path / "a.png"), kps(3, 3), size=(30, 20)),
        SlpPrediction(str(tmp_path / "c.png"), kps(4, 4), size=(16, 16)),
        SlpPrediction(str(tmp_path / "b.png"), kps(5, 5), size=(30, 20)),
    ]
    out = tmp_path / "out" / "pred.slp"
    assert write_slp(str(out), preds, NAMES, skeleton=[(0, 1), (0, 2), (0, 3)], flip_pairs=[(2, 3)],
                     min_confidence=0.5) == 6
    assert sorted(os.listdir(out.parent)) == ["pred.slp"]       # no temporary left
    labels = sio.load_slp(str(out))
    sk = labels.skeletons[0]
    assert sk.node_names == NAMES and sk.edge_inds == [(0, 1), (0, 2), (0, 3)] and sk.symmetry_inds == [(2, 3)]
    assert sorted(t.name for t in labels.tracks) == ["0", "1"]
    assert [v.filename for v in labels.videos] == [video, [str(tmp_path / "a.png"), str(tmp_path / "b.png")],
                                                    [str(tmp_path / "c.png")]]
    frames = {(labels.videos.index(lf.video), lf.frame_idx): lf for lf in labels.labeled_frames}
    assert sorted(frames) == [(0, 3), (0, 4), (1, 0), (1, 1), (2, 0)]
    first, second = frames[(0, 3)].instances
    assert all(isinstance(i, sio.PredictedInstance) for lf in labels.labeled_frames for i in lf.instances)
    # kpconv's (1.5, 2.5) is the centre of pixel (1, 2): SLEAP's (1, 2)
    np.testing.assert_allclose(first.numpy()[0], [1.0, 2.0])
    np.testing.assert_allclose(first.points["score"], [0.9, 0.8, 0.7, 0.6])
    assert first.score == pytest.approx(0.95) and first.track.name == "0"
    assert math.isnan(second.numpy()[1, 0])                     # NaN point: missing
    assert second.score == pytest.approx((0.9 + 0.7 + 0.6) / 4)  # no score given: the mean confidence
    assert second.track.name == "1"
    low = frames[(0, 4)].instances[0]
    assert math.isnan(low.numpy()[1, 0]) and not math.isnan(low.numpy()[0, 0])   # below min_confidence
    assert low.track is first.track
    np.testing.assert_allclose(frames[(1, 1)].instances[0].numpy()[0], [4.5, 4.5])   # b.png: 2nd of size 30x20


def test_missing_source_is_located_and_nothing_written(tmp_path):
    out = tmp_path / "pred.slp"
    with pytest.raises(AnnotationError, match="no such file") as e:
        write_slp(str(out), [SlpPrediction(str(tmp_path / "gone.mp4"), kps(1, 1), frame=0)], NAMES)
    assert str(tmp_path / "gone.mp4") in str(e.value)
    assert not out.exists()


def test_wrong_keypoint_count_and_unwritable_output(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="expected 4 x"):
        write_slp(str(tmp_path / "p.slp"), [SlpPrediction(str(tmp_path / "a.png"), [[1, 1, 1]])], NAMES)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError):
        write_slp(str(tmp_path / "file" / "p.slp"), [SlpPrediction(str(tmp_path / "a.png"), kps(1, 1))], NAMES)
    assert not (tmp_path / "p.slp").exists()
