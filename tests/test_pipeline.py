"""kpconv.model.pipeline: reading shards, targets, determinism, keypoint-aware augmentation."""
import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from kpconv.model import pipeline  # noqa: E402
from kpconv.data.dataset_info import read_dataset_info  # noqa: E402
from kpconv.errors import DatasetInfoError, TrainError  # noqa: E402

from _shards import FLIP_PAIRS, NAMES, write_shards  # noqa: E402

GEOMETRY_ONLY = dict(brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    recs = write_shards(out, {"train": 10, "val": 3}, size=(32, 24), invisible=(2,))
    return out, recs


def test_load_yields_images_and_masked_targets_in_order(shards):
    out, recs = shards
    batches = list(pipeline.load(out, "train", 4))
    assert [b[0].shape for b in batches] == [(4, 24, 32, 3), (4, 24, 32, 3), (2, 24, 32, 3)]
    images = np.concatenate([b[0].numpy() for b in batches])
    targets = np.concatenate([b[1].numpy() for b in batches])
    assert targets.shape == (10, len(NAMES), 3)
    for i, r in enumerate(recs["train"]):   # no shuffling without augmentation: records in order
        assert np.array_equal(images[i], r["_array"].astype(np.float32))
        assert np.allclose(targets[i, :, 0], r["keypoints/x"]) and np.allclose(targets[i, :, 1], r["keypoints/y"])
        assert targets[i, :, 2].tolist() == [1, 1, 0, 1, 1]


def test_meta_for_evaluation(shards):
    out, recs = shards
    _, _, meta = next(iter(pipeline.load(out, "val", 3, include_meta=True)))
    assert meta["stored_size"].numpy().tolist() == [[32, 24]] * 3
    assert np.allclose(meta["transform"].numpy()[0], recs["val"][0]["transform/stored_to_original"])


def test_same_seed_same_batches_other_seed_differs(shards):
    out, _ = shards

    def run(seed):
        return [t.numpy() for _, t in pipeline.load(out, "train", 4, augment=True, seed=seed)]

    a, b, c = run(7), run(7), run(8)
    assert [len(x) for x in a] == [4, 4, 2]    # the last batch is padded for the augmentation, then cut back
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_each_epoch_draws_new_augmentation_the_same_seed_the_same_epochs(shards):
    out, _ = shards

    def epochs(seed, n=2):
        ds = pipeline.load(out, "train", 4, augment=True, seed=seed, shuffle=False)
        return [np.concatenate([t.numpy() for _, t in ds]) for _ in range(n)]     # one iteration per epoch

    first, second = epochs(7)
    assert not np.allclose(first, second)        # a fresh draw in epoch 2 (not the same flips and warps)
    again = epochs(7)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])


def test_pad_multiple_pads_frames_and_renormalizes_keypoints(shards):
    out, recs = shards
    images, targets = next(iter(pipeline.load(out, "train", 10, pad_multiple=5)))
    assert images.shape == (10, 25, 35, 3)
    assert np.array_equal(images[0, :24, :32].numpy(), recs["train"][0]["_array"].astype(np.float32))
    assert not images[:, 24:].numpy().any() and not images[:, :, 32:].numpy().any()
    assert np.allclose(targets[0, :, 0] * 35, np.array(recs["train"][0]["keypoints/x"]) * 32, atol=1e-4)
    assert np.allclose(targets[0, :, 1] * 25, np.array(recs["train"][0]["keypoints/y"]) * 24, atol=1e-4)
    with pytest.raises(ValueError, match="pad_multiple"):
        pipeline.load(out, "train", 2, pad_multiple=5, include_meta=True)


def test_holdout_splits_the_images_in_two_by_a_salted_hash(shards):
    out, recs = shards

    def paths(held_out, salt=0):
        ds = pipeline.load(out, "train", 4, include_meta=True, holdout=(0.3, salt), held_out=held_out)
        return [p.decode() for _, _, m in ds for p in m["source_path"].numpy()]

    kept, held = paths(False), paths(True)
    assert sorted(kept + held) == sorted(r["image/source_path"].decode() for r in recs["train"]) and not set(kept) & set(held)
    assert 0 < len(held) < len(kept) and paths(True) == held      # deterministic
    assert any(paths(True, salt) != held for salt in (1, 2, 3))   # the seed salts the choice


def test_unknown_split_and_missing_info(shards, tmp_path):
    out, _ = shards
    with pytest.raises(DatasetInfoError, match="no split 'test'.*train, val"):
        pipeline.load(out, "test", 2)
    with pytest.raises(DatasetInfoError, match="dataset_info.json: not found"):
        pipeline.load(tmp_path, "train", 2)


def test_reads_dataset_info_of_kpconv_shard(shards):
    out, _ = shards
    info = read_dataset_info(out)
    assert info.keypoint_names == NAMES and info.flip_pairs == FLIP_PAIRS
    assert (info.image_width, info.image_height) == (32, 24)
    assert info.flip_permutation() == [0, 2, 1, 4, 3]
    raw = json.loads((out / "dataset_info.json").read_text())
    raw["image"]["size"] = None
    bad = out.parent / "nosize"
    bad.mkdir()
    (bad / "dataset_info.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetInfoError, match="needs one image size"):
        read_dataset_info(bad)


def _aug(images, kp, vis, seed, **cfg):
    a = pipeline.Augment(**{**GEOMETRY_ONLY, **cfg})
    out = pipeline.augment_batch(tf.constant(images, tf.float32), tf.constant(kp, tf.float32),
                                 tf.constant(vis), tf.constant(seed, tf.int64), a,
                                 [0, 2, 1, 4, 3] if np.shape(kp)[1] == 5 else None)
    return [t.numpy() for t in out]


def test_flip_twice_is_identity_and_flip_swaps_pairs():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (2, 16, 20, 3)).astype(np.float32)
    kp = rng.uniform(0.1, 0.9, (2, 5, 2)).astype(np.float32)
    vis = np.array([[2, 2, 1, 2, 0], [2, 2, 2, 2, 2]])
    flip = dict(flip=1.0, rotation=0.0, scale=(1.0, 1.0), translate=0.0)
    img1, kp1, vis1 = _aug(img, kp, vis, [1, 2], **flip)
    assert np.allclose(img1, img[:, :, ::-1], atol=1e-3)
    perm = [0, 2, 1, 4, 3]
    assert np.allclose(kp1[..., 0], 1 - kp[:, perm, 0], atol=1e-6)     # x mirrored, left <-> right
    assert np.allclose(kp1[..., 1], kp[:, perm, 1], atol=1e-6)
    assert vis1.tolist() == [[1, 1, 1, 0, 1], [1, 1, 1, 1, 1]]
    img2, kp2, vis2 = _aug(img1, kp1, vis1, [3, 4], **flip)
    assert np.allclose(img2, img, atol=1e-3) and np.allclose(kp2, kp, atol=1e-6)
    assert vis2.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize("crop", [None, (11, 9)])
def test_a_flipped_keypoint_lands_on_the_flipped_pixel(crop):
    """One bright pixel (column 7, row 5 of a 16x12 frame) labelled at its centre (7.5, 5.5): after a flip (about
    the frame's centre, or about the keypoint for a crop) the keypoint is the centre of the bright pixel."""
    w, h = 16, 12
    img = np.zeros((1, h, w, 3), np.float32)
    img[0, 5, 7] = 255.0
    kp = np.array([[[7.5 / w, 5.5 / h]]], np.float32)
    out, kp2, vis2 = _aug(img, kp, np.array([[2]]), [1, 2], flip=1.0, rotation=0.0, scale=(1.0, 1.0), translate=0.0,
                          crop=crop)
    ow, oh = crop or (w, h)
    assert out.shape[1:3] == (oh, ow) and vis2[0, 0] == 1
    row, col = np.unravel_index(np.argmax(out[0, ..., 0]), (oh, ow))
    assert np.isclose(out[0, row, col, 0], 255.0, atol=1e-3) and np.isclose(out[0, ..., 0].sum(), 255.0, atol=1e-2)
    assert (col, row) == ((w - 1 - 7, 5) if crop is None else (ow // 2, oh // 2))
    assert np.allclose(kp2[0, 0] * [ow, oh], [col + 0.5, row + 0.5], atol=1e-5)


def test_dot_stays_under_its_keypoint_after_random_affine():
    h = w = 64
    yy, xx = np.mgrid[0:h, 0:w] + 0.5   # pixel centres, continuous convention
    kp = np.array([[[0.4, 0.55]], [[0.6, 0.35]], [[0.5, 0.5]], [[0.3, 0.7]]], np.float32)
    img = np.zeros((len(kp), h, w, 3), np.float32)
    for i, (x, y) in enumerate(kp[:, 0]):
        img[i, ..., 0] = 255 * np.exp(-((xx - x * w) ** 2 + (yy - y * h) ** 2) / (2 * 1.5 ** 2))
    for seed in ([5, 6], [7, 8]):
        out, kp2, vis2 = _aug(img, kp, np.full((len(kp), 1), 2), seed, flip=0.5, rotation=30.0,
                              scale=(0.8, 1.2), translate=0.1)
        assert vis2.min() == 1
        for i in range(len(kp)):
            m = out[i, ..., 0]
            cx, cy = (m * xx).sum() / m.sum(), (m * yy).sum() / m.sum()
            assert abs(cx - kp2[i, 0, 0] * w) < 0.5 and abs(cy - kp2[i, 0, 1] * h) < 0.5


def test_keypoints_leaving_the_frame_become_invisible():
    img = np.zeros((1, 20, 20, 3), np.float32)
    kp = np.array([[[0.05, 0.5], [0.5, 0.5]]], np.float32)
    # translate by up to +-45%: for some seed the left point leaves the frame, the centre never does
    hidden = 0
    for s in range(12):
        _, kp2, vis2 = _aug(img, kp, np.array([[2, 2]]), [s, 0], flip=0.0, rotation=0.0,
                            scale=(1.0, 1.0), translate=0.45)
        inside = 0 <= kp2[0, 0, 0] < 1
        assert vis2[0, 0] == float(inside) and vis2[0, 1] == 1
        hidden += not inside
    assert hidden > 0


def test_reads_the_shards_of_kpconv_shard(tmp_path):
    """End to end with the real writer: synthetic COCO -> ingest -> shard -> load."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import synth
    from kpconv.data.images import ImageOptions
    from kpconv.data.ingest import ingest
    from kpconv.data.shard import ShardOptions, shard

    ann = synth.make_coco(tmp_path / "synth", 12, size=(80, 60), seed=2)
    ingest([str(ann)], output=str(tmp_path / "m.jsonl"), images=str(tmp_path / "synth" / "images"))
    res = shard(str(tmp_path / "m.jsonl"), tmp_path / "shards",
                ShardOptions(image=ImageOptions(size=(40, 32), resize="pad", crop="bbox"),
                             split={"train": 0.5, "test": 0.5}, num_shards=2))
    info = read_dataset_info(tmp_path / "shards")
    assert (info.image_width, info.image_height, info.num_keypoints) == (40, 32, 17)
    assert info.flip_permutation()[1:3] == [2, 1]       # left_eye <-> right_eye
    for split in ("train", "test"):
        n = res.info["splits"][split]["records"]
        targets = np.concatenate([t.numpy() for _, t in pipeline.load(tmp_path / "shards", split, 4)])
        assert targets.shape == (n, 17, 3)
        visible = sum(v[1] + v[2] for v in res.info["splits"][split]["visibility"])
        assert targets[..., 2].sum() == visible
        xy = targets[..., :2][targets[..., 2] > 0]
        assert (xy >= 0).all() and (xy <= 1).all()


def test_crop_follows_the_keypoints_and_has_the_crop_size():
    # a 96x64 frame, a dot per keypoint; 32x32 crops: the dots stay under their keypoints, the crop
    # is centred inside the keypoints' box, and keypoints outside the crop become unlabelled
    h, w = 64, 96
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    kp = np.array([[[0.30, 0.40], [0.45, 0.55], [0.95, 0.05]]] * 3, np.float32)
    img = np.zeros((3, h, w, 3), np.float32)
    for c, (x, y) in enumerate(kp[0]):
        img[..., c] = 255 * np.exp(-((xx - x * w) ** 2 + (yy - y * h) ** 2) / (2 * 1.5 ** 2))
    vis = np.array([[2, 2, 0]] * 3)    # the third keypoint is unlabelled: the crop ignores it
    out, kp2, vis2 = _aug(img, kp, vis, [3, 4], flip=0.0, rotation=90.0, scale=(0.9, 1.1), translate=0.0,
                          crop=(32, 32))
    assert out.shape == (3, 32, 32, 3)
    oy, ox = np.mgrid[0:32, 0:32] + 0.5
    for i in range(3):
        assert vis2[i, 2] == 0
        for c in range(2):
            if vis2[i, c]:
                m = out[i, ..., c]
                assert m.sum() > 0
                cx, cy = (m * ox).sum() / m.sum(), (m * oy).sum() / m.sum()
                assert abs(cx - kp2[i, c, 0] * 32) < 0.6 and abs(cy - kp2[i, c, 1] * 32) < 0.6
        assert vis2[i, :2].sum() >= 1     # the crop's centre lies between the two labelled points


def test_crop_margin_moves_an_extreme_keypoint_away_from_the_crop_edge():
    # one labelled keypoint: its box is a point, so without a margin it sits at the crop's centre in
    # every crop; with crop_margin 0.25 the centre is drawn from the point +- a quarter crop, so the
    # keypoint lands anywhere within +-8 px of the centre of a 32-px crop (never at the edge)
    n, h, w = 64, 64, 96
    kp = np.tile(np.array([[[0.5, 0.5]]], np.float32), (n, 1, 1))
    img = np.zeros((n, h, w, 3), np.float32)
    vis = np.full((n, 1), 2)
    common = dict(flip=0.0, rotation=0.0, scale=(1.0, 1.0), translate=0.0, crop=(32, 32))
    _, k0, _ = _aug(img, kp, vis, [5, 6], **common)
    _, k1, _ = _aug(img, kp, vis, [5, 6], crop_margin=0.25, **common)
    assert np.allclose(k0 * 32, 16.0, atol=1e-3)
    off = k1 * 32 - 16.0
    assert np.all(np.abs(off) <= 8.0 + 1e-3) and np.abs(off).max() > 5.0 and off.std() > 2.0
