"""kpconv.model.video: a later start seeks (keyframe before it, then decodes forward), and gives exactly the
frames, indices and times of decoding from the first frame."""
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from kpconv.model import video  # noqa: E402

FRAMES, FPS = 60, 25


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(FPS))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.gop_size = 12
        for i in range(FRAMES):
            arr = np.full((48, 64, 3), (i * 4) % 256, np.uint8)
            arr[rng.integers(0, 48), :] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_info_and_every_frame(clip):
    fps, count, size = video.info(str(clip))
    assert fps == FPS and count == FRAMES and size == (64, 48)
    got = list(video.frames(str(clip)))
    assert [i for i, _, _ in got] == list(range(FRAMES))
    assert [t for _, t, _ in got] == pytest.approx([i / FPS for i in range(FRAMES)])
    assert got[0][2].shape == (48, 64, 3) and got[0][2].dtype == np.uint8


@pytest.mark.parametrize("selection", [video.FrameSelection(start=37), video.FrameSelection(start=24, end=30),
                                       video.FrameSelection(3, start=41), video.FrameSelection(start=1.5),
                                       video.FrameSelection(start=12)])
def test_a_later_start_seeks_and_gives_the_same_frames(clip, selection, monkeypatch):
    whole = list(video.frames(str(clip), video.FrameSelection(1, None, selection.end)))   # from frame 0
    start = selection.start if isinstance(selection.start, int) else round(selection.start * FPS)
    expected = [x for x in whole if x[0] >= start][::selection.every]
    landed = []
    real = video._index_of
    monkeypatch.setattr(video, "_index_of", lambda *a: landed.append(real(*a)) or landed[-1])
    got = list(video.frames(str(clip), selection))
    with av.open(str(clip)) as c:   # the keyframes' indices (a constant rate: from the timestamps)
        st = c.streams.video[0]
        keys = sorted(round((p.pts - (st.start_time or 0)) * st.time_base * FPS) for p in c.demux(st)
                      if p.pts is not None and p.is_keyframe)
    assert landed and landed[0] == max(k for k in keys if k <= start)   # the keyframe before the start
    assert [i for i, _, _ in got] == [i for i, _, _ in expected]
    assert [t for _, t, _ in got] == pytest.approx([t for _, t, _ in expected])
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(got, expected))


def test_writer_round_trip(tmp_path):
    out = tmp_path / "o.mp4"
    w = video.VideoWriter(out, 10.0, (33, 20))   # odd width: padded to even
    for i in range(5):
        w.write(np.full((20, 33, 3), 40 * i, np.uint8))
    w.close()
    fps, count, size = video.info(str(out))
    assert fps == 10 and count == 5 and size == (34, 20)
    assert not list(tmp_path.glob(".*"))
