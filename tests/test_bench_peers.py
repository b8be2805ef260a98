"""benchmarks/bench_peers.py's label conversion (no peer installed): YOLO-pose label rows and the pixel
conventions, both ways."""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_peers  # noqa: E402
from kpconv.data.formats.base import continuous_offset  # noqa: E402
from kpconv.data.formats.sleap import PIXEL_ORIGIN  # noqa: E402


def test_sleap_offset_is_kpconvs():
    assert bench_peers.SLEAP_OFFSET == continuous_offset(PIXEL_ORIGIN) == 0.5
    assert bench_peers.YOLO_OFFSET == 0.0


def test_to_peer_and_back():
    pts = [[10.5, 20.5, 2], [0.0, 0.0, 0], [3.25, 4.0, 1]]
    # kpconv's pixel (10, 20) centre is (10.5, 20.5); SLEAP calls it (10, 20)
    assert bench_peers.to_peer(pts, 0.5) == [[10.0, 20.0, 2], None, [2.75, 3.5, 1]]
    back = bench_peers.from_peer([[10.0, 20.0, 0.9], None, [2.75, 3.5, 0.1], [math.nan, math.nan, 0.0]], 0.5)
    assert back == [[10.5, 20.5, 0.9], None, [3.25, 4.0, 0.1], None]
    assert bench_peers.to_peer(pts, bench_peers.YOLO_OFFSET)[0] == [10.5, 20.5, 2]


def test_yolo_label_line():
    # 200 x 100 image; labelled points span x 40..120, y 20..60 (longer side 80): margin 0.1 -> 8 px
    pts = [[40.0, 20.0, 2], [0.0, 0.0, 0], [120.0, 60.0, 1]]
    line = bench_peers.yolo_label_line(pts, 200, 100, 0.1)
    v = line.split()
    assert v[0] == "0" and len(v) == 5 + 3 * 3
    cx, cy, w, h = map(float, v[1:5])
    assert (cx, cy, w, h) == pytest.approx(((32 + 128) / 2 / 200, (12 + 68) / 2 / 100, 96 / 200, 56 / 100))
    assert v[5:8] == ["0.200000", "0.200000", "2"]
    assert v[8:11] == ["0", "0", "0"]
    assert v[11:14] == ["0.600000", "0.600000", "1"]


def test_yolo_box_clipped_to_the_image():
    box = bench_peers.keypoint_box([[1.0, 2.0, 2], [99.0, 48.0, 2]], 100, 50, 0.25)
    assert box == [0.0, 0.0, 100.0, 50.0]
    assert bench_peers.keypoint_box([[0.0, 0.0, 0]], 100, 50, 0.1) is None
    with pytest.raises(ValueError):
        bench_peers.yolo_label_line([[0.0, 0.0, 0]], 100, 50, 0.1)


def test_yolo_data_yaml_flip_idx():
    import json

    plain = json.loads(bench_peers.yolo_data_yaml(Path("/d"), 3, [0, 1, 2]))
    assert plain["kpt_shape"] == [3, 3] and "flip_idx" not in plain
    assert plain["val"] == "images/train"        # the test images never reach training
    assert json.loads(bench_peers.yolo_data_yaml(Path("/d"), 3, [1, 0, 2]))["flip_idx"] == [1, 0, 2]
    assert bench_peers.link_name("a/b/c.png") == "a__b__c.png"
