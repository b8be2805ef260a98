"""SLEAP reader: .slp files made here with sleap-io (a tiny video, image files, embedded images), frame
extraction, identities from tracks, the pixel convention, bad files; one check on two-flies (slow)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

sio = pytest.importorskip("sleap_io")

from kpconv.data import formats  # noqa: E402
from kpconv.cli import cli  # noqa: E402
from kpconv.errors import AnnotationError  # noqa: E402
from kpconv.data.formats.base import IngestOptions  # noqa: E402
from kpconv.data.ingest import ingest  # noqa: E402
from kpconv.data.manifest import read_manifest  # noqa: E402
from test_schemas import manifest_errors  # noqa: E402

TWO_FLIES = Path("/work/shared/datasets/two-flies/clip.slp")
VW, VH = 32, 24         # the tiny video
IW, IH = 30, 20         # the image-sequence video
NODES = ["head", "tail", "eyeL", "eyeR"]


def tiny_video(path: Path, frames: int = 6) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = VW, VH, "yuv420p"
        for i in range(frames):
            a = np.full((VH, VW, 3), 20 + i * 40, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_slp(folder: Path, name: str = "labels.slp", embed=False, symmetries=True) -> Path:
    """video 0 (tiny.mp4): frame 2 with tracked alice (eyeL NaN) and bob and a predicted instance; frame 4
    with only a predicted instance. video 1 (three PNGs): frame 1 with one untracked instance."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_video(folder / "tiny.mp4")
    images = []
    for i in range(3):
        images.append(folder / "seq" / f"img{i}.png")
        images[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((IH, IW), 50 * i, np.uint8)).save(images[-1])
    sk = sio.Skeleton(nodes=list(NODES), edges=[("head", "tail"), ("head", "eyeL"), ("head", "eyeR")],
                      symmetries=[("eyeL", "eyeR")] if symmetries else [])
    video = sio.Video.from_filename(str(folder / "tiny.mp4"))
    seq = sio.Video.from_filename([str(p) for p in images])
    alice, bob = sio.Track("alice"), sio.Track("bob")
    a = sio.Instance.from_numpy(np.array([[1, 2], [3, 4], [np.nan, np.nan], [5, 6]], float), skeleton=sk, track=alice)
    b = sio.Instance.from_numpy(np.array([[10, 12], [13, 14], [15, 16], [17, 18]], float), skeleton=sk, track=bob)
    pred = sio.PredictedInstance.from_numpy(np.array([[1, 2], [3, 4], [5, 5], [5, 6]], float),
                                            point_scores=np.ones(4), score=0.9, skeleton=sk)
    pred2 = sio.PredictedInstance.from_numpy(np.array([[1, 2], [3, 4], [5, 5], [5, 6]], float),
                                             point_scores=np.ones(4), score=0.8, skeleton=sk)
    c = sio.Instance.from_numpy(np.array([[0, 0], [29, 19], [3, 3], [4, 4]], float), skeleton=sk)
    labels = sio.Labels(labeled_frames=[
        sio.LabeledFrame(video=video, frame_idx=2, instances=[a, b, pred]),
        sio.LabeledFrame(video=video, frame_idx=4, instances=[pred2]),
        sio.LabeledFrame(video=seq, frame_idx=1, instances=[c])])
    path = folder / name
    sio.save_slp(labels, str(path), embed="user" if embed else False, verbose=False)
    return path


def run(tmp_path, sources, **kw):
    out = kw.pop("output", tmp_path / "out" / "m.jsonl")
    opts = IngestOptions(**kw.pop("options", {}))
    result = ingest([str(s) for s in sources], output=str(out), fmt=kw.pop("fmt", "auto"), options=opts, **kw)
    header, records = read_manifest(str(out))
    return result, header, records


def test_detected_and_read(tmp_path):
    slp = make_slp(tmp_path / "proj")
    assert formats.detect([slp]).name == "sleap"
    result, header, records = run(tmp_path, [slp])
    assert result.format == "sleap"
    assert header.keypoints == NODES
    assert header.skeleton == [(0, 1), (0, 2), (0, 3)]
    assert header.flip_pairs == [(2, 3)]
    frames = tmp_path / "out" / "m-frames"          # default: beside the manifest
    assert header.images_root == frames.as_posix()
    assert header.source["tracks"] == ["alice", "bob"]
    assert [(r.image, r.instance, r.group) for r in records] == [
        ("tiny/frame_000002.png", "alice", "tiny"), ("tiny/frame_000002.png", "bob", "tiny"),
        ("seq/frame_000001.png", "0", "seq")]
    # SLEAP's (1, 2) is the centre of pixel (1, 2): kpconv's (1.5, 2.5); the NaN point is not labelled
    assert records[0].keypoints[0] == [round(1.5 / VW, 6), round(2.5 / VH, 6), 2]
    assert records[0].keypoints[2] == [0.0, 0.0, 0]
    assert records[2].keypoints[1] == [round(29.5 / IW, 6), round(19.5 / IH, 6), 2]
    # predicted instances: skipped and counted, located
    assert result.report.counts == {"predicted": 2}
    assert str(result.report.first[0].location) == f"{slp}: record video 0 frame 2 instance 2"
    # only labelled frames are extracted (frame 4 holds only a predicted instance)
    assert sorted(p.relative_to(frames).as_posix() for p in frames.rglob("*.png")) == [
        "seq/frame_000001.png", "tiny/frame_000002.png"]
    assert manifest_errors((tmp_path / "out" / "m.jsonl").read_text().splitlines()) == []


def test_stdout_frames_beside_the_slp(tmp_path):
    slp = make_slp(tmp_path / "proj", "labels.pkg.slp", embed=True)
    r = CliRunner().invoke(cli, ["ingest", str(slp)])
    assert r.exit_code == 0
    header = json.loads(r.stdout.splitlines()[0])
    assert header["images_root"] == (tmp_path / "proj" / "labels-frames").as_posix()
    assert (tmp_path / "proj" / "labels-frames" / "tiny" / "frame_000002.png").is_file()


def test_extracted_frames_hold_the_pixels(tmp_path):
    slp = make_slp(tmp_path / "proj")
    run(tmp_path, [slp])
    frames = tmp_path / "out" / "m-frames"
    seq = np.asarray(Image.open(frames / "seq/frame_000001.png"))
    assert seq.shape == (IH, IW) and (seq == 50).all()
    tiny = np.asarray(Image.open(frames / "tiny/frame_000002.png")).astype(int)
    assert tiny.shape == (VH, VW) and abs(tiny.mean() - 100) < 4     # frame 2 was painted 100 (lossy codec)


def test_embedded_images(tmp_path):
    slp = make_slp(tmp_path / "proj", "labels.pkg.slp", embed=True)
    os.remove(tmp_path / "proj" / "tiny.mp4")           # the .pkg.slp carries its frames
    result, header, records = run(tmp_path, [slp])
    assert [(r.image, r.instance) for r in records] == [
        ("tiny/frame_000002.png", "alice"), ("tiny/frame_000002.png", "bob"), ("video1/frame_000001.png", "0")]
    frames = Path(header.images_root)
    assert (np.asarray(Image.open(frames / "video1/frame_000001.png")) == 50).all()


def test_frames_dir_option_and_reuse(tmp_path):
    slp = make_slp(tmp_path / "proj")
    frames = tmp_path / "frames"
    r = CliRunner().invoke(cli, ["ingest", str(slp), "-o", str(tmp_path / "a.jsonl"), "--frames-dir", str(frames)])
    assert r.exit_code == 0, r.output
    png = frames / "tiny" / "frame_000002.png"
    before = png.stat().st_mtime_ns
    assert sorted(p.name for p in frames.iterdir()) == ["seq", "tiny"]
    # a second ingest reuses the frames already extracted from the same video
    r = CliRunner().invoke(cli, ["ingest", str(slp), "-o", str(tmp_path / "b.jsonl"), "--frames-dir", str(frames)])
    assert r.exit_code == 0, r.output
    assert png.stat().st_mtime_ns == before
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # the folder holds another video's frames now: a located error, nothing replaced
    os.utime(tmp_path / "proj" / "tiny.mp4", ns=(1, 1))
    r = CliRunner().invoke(cli, ["ingest", str(slp), "-o", str(tmp_path / "c.jsonl"), "--frames-dir", str(frames)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "record video 0" in r.output and "holds frames of another video" in r.output
    assert not (tmp_path / "c.jsonl").exists() and png.stat().st_mtime_ns == before


def test_untracked_instances_avoid_track_names(tmp_path):
    sk = sio.Skeleton(nodes=["a", "b"])
    folder = tmp_path / "p"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "x.png")
    video = sio.Video.from_filename([str(folder / "x.png")])
    pts = np.array([[1, 1], [2, 2]], float)
    insts = [sio.Instance.from_numpy(pts, skeleton=sk), sio.Instance.from_numpy(pts, skeleton=sk, track=sio.Track("0"))]
    sio.save_slp(sio.Labels(labeled_frames=[sio.LabeledFrame(video=video, frame_idx=0, instances=insts)]),
                 str(folder / "l.slp"), verbose=False)
    _, _, records = run(tmp_path, [folder / "l.slp"])
    assert sorted(r.instance for r in records) == ["0", "1"]


def test_not_visible_points_are_unlabelled_and_counted(tmp_path):
    sk = sio.Skeleton(nodes=["a", "b"])
    folder = tmp_path / "p"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "x.png")
    video = sio.Video.from_filename([str(folder / "x.png")])
    inst = sio.Instance.from_numpy(np.array([[1, 1], [2, 2]], float), skeleton=sk)
    inst.points["visible"][1] = False
    sio.save_slp(sio.Labels(labeled_frames=[sio.LabeledFrame(video=video, frame_idx=0, instances=[inst])]),
                 str(folder / "l.slp"), verbose=False)
    result, _, records = run(tmp_path, [folder / "l.slp"])
    assert records[0].keypoints[1] == [0.0, 0.0, 0] and records[0].keypoints[0][2] == 2
    assert result.report.counts == {"not_visible": 1}
    assert "b" in result.report.first[0].message


def test_no_symmetries_infers_flip_pairs_from_names(tmp_path):
    slp = make_slp(tmp_path / "proj", symmetries=False)
    _, header, _ = run(tmp_path, [slp])
    assert header.flip_pairs == [(2, 3)]        # eyeL / eyeR


def test_keypoints_subset(tmp_path):
    slp = make_slp(tmp_path / "proj")
    _, header, records = run(tmp_path, [slp], options={"keypoints": ["tail", "head"]})
    assert header.keypoints == ["tail", "head"] and header.skeleton == [(1, 0)]
    assert records[0].keypoints[1][:2] == [round(1.5 / VW, 6), round(2.5 / VH, 6)]
    with pytest.raises(AnnotationError, match="'nose' not among the skeleton's nodes"):
        run(tmp_path, [slp], options={"keypoints": ["nose"]})


def test_missing_video_is_located(tmp_path):
    slp = make_slp(tmp_path / "proj")
    os.remove(tmp_path / "proj" / "tiny.mp4")
    r = CliRunner().invoke(cli, ["ingest", str(slp), "-o", str(tmp_path / "m.jsonl")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{slp}: record video 0: video file" in r.output and "tiny.mp4" in r.output and "not found" in r.output
    assert not (tmp_path / "m.jsonl").exists()
    assert not (tmp_path / "m-frames").exists()        # the frames folder made for nothing is gone again


def test_video_found_beside_the_slp(tmp_path):
    slp = make_slp(tmp_path / "proj")
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(slp, moved / slp.name)
    os.replace(tmp_path / "proj" / "tiny.mp4", moved / "tiny.mp4")
    _, _, records = run(tmp_path, [moved / slp.name])
    assert records[0].image == "tiny/frame_000002.png"


@pytest.mark.parametrize("content", ["text", "truncated", "other-hdf5"])
def test_bad_files_are_located_errors(tmp_path, content):
    bad = tmp_path / "bad.slp"
    if content == "text":
        bad.write_text("not hdf5\n")
    elif content == "truncated":
        good = make_slp(tmp_path / "proj").read_bytes()
        bad.write_bytes(good[:len(good) // 2])
    else:
        import h5py

        with h5py.File(bad, "w") as f:
            f["something"] = np.zeros(3)
    r = CliRunner().invoke(cli, ["ingest", "-f", "sleap", str(bad), "-o", str(tmp_path / "m.jsonl")])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output and f"{bad}: " in r.output
    assert not (tmp_path / "m.jsonl").exists()
    if content == "text":        # auto-detection does not take it for a SLEAP file
        r = CliRunner().invoke(cli, ["ingest", str(bad), "-o", str(tmp_path / "m.jsonl")])
        assert r.exit_code == 1 and "cannot tell the annotation format" in r.output


def test_frame_folder_names_stay_inside(tmp_path):
    folder = tmp_path / "p"
    (folder / "..weird name!").mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "..weird name!" / "x.png")
    sk = sio.Skeleton(nodes=["a"])
    video = sio.Video.from_filename([str(folder / "..weird name!" / "x.png")])
    inst = sio.Instance.from_numpy(np.array([[1, 1]], float), skeleton=sk)
    sio.save_slp(sio.Labels(labeled_frames=[sio.LabeledFrame(video=video, frame_idx=0, instances=[inst])]),
                 str(folder / "l.slp"), verbose=False)
    _, header, records = run(tmp_path, [folder / "l.slp"])
    assert records[0].image == "weird_name/frame_000000.png"
    assert (Path(header.images_root) / records[0].image).is_file()


@pytest.mark.slow
def test_two_flies(tmp_path):
    if not TWO_FLIES.is_file():
        pytest.skip("two-flies dataset not present")
    result, header, records = run(tmp_path, [TWO_FLIES])
    assert len(records) == 3000 and result.skipped == 0
    assert header.keypoints[:3] == ["head", "thorax", "abdomen"] and len(header.keypoints) == 13
    assert header.source["tracks"] == ["female", "male"]
    assert sorted({r.instance for r in records}) == ["female", "male"]
    assert all(sorted(r.instance for r in records[i:i + 2]) == ["female", "male"] for i in range(0, 3000, 2))
    assert sum(p[2] == 0 for r in records for p in r.keypoints) == 637
    # wings, legs and eyes are left/right pairs by name
    names = header.keypoints
    assert {(names[a], names[b]) for a, b in header.flip_pairs} == {
        ("wingL", "wingR"), ("forelegL4", "forelegR4"), ("midlegL4", "midlegR4"), ("hindlegL4", "hindlegR4"),
        ("eyeL", "eyeR")}
    assert len(list(Path(header.images_root, "clip").glob("frame_*.png"))) == 1500
    first = json.loads(Path(tmp_path / "out" / "m.jsonl").read_text().splitlines()[1])
    assert first["image"] == "clip/frame_000000.png" and first["width"] == 1024
