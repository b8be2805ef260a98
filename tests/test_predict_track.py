"""kpconv predict --track (track ids in every format), -o out.slp (read back with sleap-io) and --draw
colouring each instance."""
import csv
import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from kpconv.cli import cli
from kpconv.model.predict import Prediction

from test_predict_outputs import NAMES2, _write  # noqa: E402  (one writer helper for the output tests)


def _tracked():
    return [Prediction("clip.mp4", 100, 80, [[10, 20, 0.9], [30, 40, 0.1]], frame=0, time=0.0, instance=0, track=1),
            Prediction("clip.mp4", 100, 80, [[50, 60, 0.8], [70, 8, 0.7]], frame=0, time=0.0, instance=1, track=0),
            Prediction("clip.mp4", 100, 80, [[1, 2, 0.3], [3, 4, 0.2]], frame=1, time=0.1, instance=0, track=-1)]




def test_track_ids_in_every_format():
    opts = dict(multi=True, tracks=True, individuals=None, index="frame")
    rows = [json.loads(x) for x in _write("jsonl", _tracked(), **opts).splitlines()]
    assert [(r["instance"], r["track"]) for r in rows] == [(0, 1), (1, 0), (0, -1)]
    table = list(csv.DictReader(io.StringIO(_write("csv", _tracked(), **opts))))
    assert [r["track"] for r in table] == ["1", "0", "-1"]
    assert [r["track_id"] for r in json.loads(_write("coco", _tracked(), **opts))] == [1, 0, -1]
    dlc = list(csv.reader(io.StringIO(_write("dlc", _tracked(), **opts))))
    # individuals named by track, tracks first by id; the untracked instance keeps individualN
    assert dlc[1][1::6] == ["track_0", "track_1", "individual1"]
    # DeepLabCut's pixel convention: kpconv's coordinates - 0.5
    assert dlc[4][1:4] == ["49.500", "59.500", "0.8000"] and dlc[4][7:10] == ["9.500", "19.500", "0.9000"]
    assert dlc[5][1:13] == [""] * 12 and dlc[5][13:16] == ["0.500", "1.500", "0.3000"]


# ------------------------------------------------------------------ end to end, on a tiny trained run
@pytest.fixture(scope="module")
def crop_run(tiny_dense_run, tmp_path_factory):
    """The session's tiny run (conftest.py), as if its shards had been cut to each instance's box (--crop bbox,
    no padding): a copy."""
    from _shards import bbox_crop_copy

    return bbox_crop_copy(tiny_dense_run, tmp_path_factory.mktemp("track") / "run")


FRAMES = 7


@pytest.fixture(scope="module")
def two_animals(tmp_path_factory):
    """A black 96x64 video of 7 frames and two boxes per frame: A moves right 2 px a frame, B stays;
    from frame 3 on the boxes file lists B first (instance 0 is then B)."""
    pytest.importorskip("av")
    from kpconv.model.video import VideoWriter

    base = tmp_path_factory.mktemp("two")
    video = base / "clip.mp4"
    w = VideoWriter(video, 10, (96, 64))
    for _ in range(FRAMES):
        w.write(np.zeros((64, 96, 3), np.uint8))
    w.close()
    lines = ["image,x,y,w,h,score"]
    for f in range(FRAMES):
        a, b = f"{f},{4 + 2 * f},10,30,40,0.9", f"{f},60,10,30,40,0.8"
        lines += [a, b] if f < 3 else [b, a]
    boxes = base / "boxes.csv"
    boxes.write_text("\n".join(lines) + "\n")
    return video, boxes


@pytest.mark.slow
def test_track_follows_the_animals_not_their_order(crop_run, two_animals, tmp_path):
    video, boxes = two_animals
    r = CliRunner().invoke(cli, ["predict", str(crop_run), str(video), "--boxes", str(boxes), "--track",
                                 "--track-distance", "30"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 2 * FRAMES
    by_box = {}
    for x in rows:
        by_box.setdefault("A" if x["bbox"][0] < 50 else "B", set()).add(x["track"])
    assert by_box == {"A": {0}, "B": {1}}          # A and B keep their ids though the order swaps
    assert [x["instance"] for x in rows[6:8]] == [0, 1] and rows[6]["bbox"][0] == 60

    # the same ids in DeepLabCut's table (individuals named by track) and in a SLEAP file
    r = CliRunner().invoke(cli, ["predict", str(crop_run), str(video), "--boxes", str(boxes), "--track",
                                 "--track-distance", "30", "--format", "dlc"])
    table = list(csv.reader(io.StringIO(r.stdout)))
    assert table[1][1] == "track_0" and table[1][-1] == "track_1" and len(table) == 4 + FRAMES
    sio = pytest.importorskip("sleap_io")
    out = tmp_path / "pred.slp"
    r = CliRunner().invoke(cli, ["predict", str(crop_run), str(video), "--boxes", str(boxes), "--track",
                                 "--track-distance", "30", "-o", str(out)])
    assert r.exit_code == 0, r.output
    labels = sio.load_slp(str(out))
    assert sorted(t.name for t in labels.tracks) == ["track_0", "track_1"]
    assert len(labels.labeled_frames) == FRAMES and all(len(lf.instances) == 2 for lf in labels.labeled_frames)
    lf = sorted(labels.labeled_frames, key=lambda f: f.frame_idx)[6]
    inst = {i.track.name: i for i in lf.instances}
    a = next(x for x in rows if x["frame"] == 6 and x["track"] == 0)
    from _shards import NAMES

    xy = np.array([a["keypoints"][n][:2] for n in NAMES])
    assert np.allclose(inst["track_0"].numpy(), xy - 0.5, atol=2e-3)      # SLEAP's pixel convention
    assert np.allclose(inst["track_0"].numpy(scores=True)[:, 2], [a["keypoints"][n][2] for n in NAMES], atol=1e-3)


@pytest.mark.slow
def test_draw_colours_each_instance(crop_run, tmp_path):
    from PIL import Image

    from kpconv.drawing import PALETTE

    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(tmp_path / "c.png")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("c.png,2,2,40,50,0.9\nc.png,50,2,40,50,0.8\n")
    r = CliRunner().invoke(cli, ["predict", str(crop_run), str(tmp_path / "c.png"), "--boxes", str(boxes),
                                 "--draw", str(tmp_path / "drawn"), "--min-confidence", "0", "-o", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 0, r.output
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "c.png"))
    # each box's left edge in its instance's colour (white boxes and side colours for one instance)
    for colour, x in zip(PALETTE[:2], (2, 50)):
        assert np.all(drawn[5:50, x] == colour, axis=-1).sum() > 20, (colour, x)


def test_track_options_need_track(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    r = CliRunner().invoke(cli, ["predict", str(tmp_path / "run"), str(tmp_path / "a.png"), "--max-tracks", "2"])
    assert r.exit_code == 2 and "options of --track" in r.output


def test_slp_without_sleap_io_is_a_clear_option_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sleap_io", None)
    (tmp_path / "run").mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    r = CliRunner().invoke(cli, ["predict", str(tmp_path / "run"), str(tmp_path / "a.png"), "-o", str(tmp_path / "p.slp")])
    assert r.exit_code == 2 and "pip install 'kpconv[sleap]'" in r.output
