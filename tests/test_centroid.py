"""Multi-instance geometry (kpconv.model.centroid) and OKS metrics (kpconv.model.metrics): peaks, centre targets, crop
planning, crop boxes, COCOeval-based AP, recall, precision and errors."""
from __future__ import annotations

import numpy as np
import pytest

from kpconv.model import centroid as cg
from kpconv.model.metrics import COCO_SIGMAS, DEFAULT_OKS_SIGMA, multi_instance_summary, oks_sigmas


# ------------------------------------------------------------------------------------------- peaks
def centre_targets(centres, mask, size, stride, sigma):
    """The centroid stage's target (kpconv.model.losses.CentroidLoss.targets) of one image of ``size`` (w, h) px:
    ``(h, w)`` cells."""
    from kpconv.model.losses import CentroidLoss

    w, h = size[0] // stride, size[1] // stride
    y = np.concatenate([np.asarray(centres, np.float32).reshape(-1, 2) / [w * stride, h * stride],
                        np.asarray(mask, np.float32).reshape(-1, 1)], -1)
    return np.asarray(CentroidLoss(stride, sigma).targets(y[None], h, w))[0]


def test_peaks_of_touching_centres_are_found_to_sub_cell_precision():
    centres = np.array([[40.3, 30.9], [53.1, 33.4], [100.0, 80.0]])     # the first two 3.3 cells apart
    hm = centre_targets(centres, [1, 1, 1], (128, 96), stride=4, sigma=1.0)
    xy, val = cg.find_peaks(hm, threshold=0.2)
    assert len(xy) == 3 and np.all(val > 0.5)
    got = sorted((xy * 4).tolist())
    for g, want in zip(got, sorted(centres.tolist())):
        assert np.hypot(g[0] - want[0], g[1] - want[1]) < 0.5     # px (a cell is 4 px)


def test_peaks_threshold_max_peaks_order_and_plateau():
    hm = np.zeros((20, 20))
    hm[5, 5], hm[12, 14], hm[2, 17] = 0.9, 0.5, 0.1
    hm[15, 3:5] = 0.7                                      # a plateau of two cells: one peak
    xy, val = cg.find_peaks(hm, threshold=0.2)
    assert val.tolist() == pytest.approx([0.9, 0.7, 0.5])                 # strongest first, 0.1 below the threshold
    assert xy[0].tolist() == [5.5, 5.5]                    # cell centre (continuous convention)
    assert cg.find_peaks(hm, threshold=0.2, max_peaks=2)[1].tolist() == pytest.approx([0.9, 0.7])
    assert len(cg.find_peaks(np.zeros((8, 8)), threshold=0.2)[0]) == 0
    with pytest.raises(ValueError, match="one heatmap"):
        cg.find_peaks(np.zeros((2, 8, 8)))


def test_centre_targets_are_the_maximum_of_gaussians():
    hm = centre_targets([[10, 10], [30, 10]], [1, 1], (40, 20), stride=2, sigma=1.0)
    assert hm.shape == (10, 20)
    assert hm.max() == pytest.approx(np.exp(-0.25), rel=1e-6)   # centre half a cell from the nearest cells in x and y
    assert hm[4, 4] == pytest.approx(hm[4, 14])                    # max, not sum: both equal
    assert centre_targets([[10, 10]], [0], (40, 20), 2, 1.0).max() == 0.0   # padding contributes nothing


# --------------------------------------------------------------------------------------- planning
def test_centroid_scale_keeps_small_instances_big_enough():
    assert cg.centroid_scale([100] * 5) == pytest.approx(21 / 64)          # 32 / 100 rounded up to 1/64
    assert cg.centroid_scale([25, 12, 30]) == 1.0                          # never upscaled
    assert cg.centroid_scale([]) == 1.0
    # the median instance keeps at least the target size
    for sides in ([60, 70, 80], [300, 500], [1000]):
        assert cg.centroid_scale(sides) * np.median(sides) >= cg.CENTROID_TARGET_PX


def test_centroid_scale_keeps_touching_neighbours_apart():
    """Big instances that often touch small ones: the downscale that suits the median size would put two
    neighbouring centres in one heatmap cell; the close neighbours keep CENTROID_MIN_SEPARATION_PX."""
    sides = [100] * 20
    near = [200.0] * 18 + [20.0, 24.0]                 # two instances of twenty touch a neighbour
    s = cg.centroid_scale(sides, neighbour_distances=near)
    assert s > cg.centroid_scale(sides)
    assert s * np.percentile(near, cg.CENTROID_SEPARATION_PERCENTILE) >= cg.CENTROID_MIN_SEPARATION_PX
    assert cg.centroid_scale(sides, neighbour_distances=[200.0] * 20) == cg.centroid_scale(sides)   # apart: as before
    assert cg.centroid_scale([25] * 4, neighbour_distances=[5.0] * 4) == 1.0                     # never upscaled
    # instances that overlap almost entirely: at most CENTROID_MAX_SEPARATION_GAIN x the size rule's scale
    s = cg.centroid_scale([320] * 10, neighbour_distances=[2.0] * 10)
    assert s == pytest.approx(cg.CENTROID_MAX_SEPARATION_GAIN * 32 / 320, abs=1 / 64)


def test_instance_crop_covers_the_90th_percentile_box():
    crop, scale = cg.instance_crop([80] * 10)
    assert (crop, scale) == (128, 1.0)                     # 80 * 1.2 + 16 = 112 -> 128
    crop, scale = cg.instance_crop([400] * 10)             # 496 px: downscaled to at most 192
    assert crop == 192 and scale == pytest.approx(192 / 496, rel=1e-5)
    assert crop / scale >= 400 * cg.CROP_MARGIN
    crop, scale = cg.instance_crop([40] * 19 + [1000])      # one outlier does not set the size
    assert scale == pytest.approx(64 / 40) and crop == 128  # (40 * 1.2 + 16) * 1.6 = 102.4 -> 128


def test_instance_crop_upscales_small_instances():
    """Animals of 25x12 px in full-HD frames: the 90th-percentile box keeps CROP_MIN_INSTANCE_PX pixels at the
    instance model's input (never more than CROP_MAX_UPSCALE times, never over CROP_MAX_INPUT)."""
    sides = [25, 27, 30, 24, 32] * 4
    crop, scale = cg.instance_crop(sides)
    side = float(np.percentile(sides, 90))
    assert scale * side == pytest.approx(cg.CROP_MIN_INSTANCE_PX, rel=1e-5)
    assert crop / scale >= side * cg.CROP_MARGIN + cg.CROP_PAD and crop <= cg.CROP_MAX_INPUT
    assert cg.instance_crop([4] * 10)[1] == cg.CROP_MAX_UPSCALE           # at most 4x
    assert cg.instance_crop([64] * 10)[1] == 1.0                          # big enough: not resized
    crop, scale = cg.instance_crop([60] * 10, pad=200)                  # the context would exceed the input
    assert crop == cg.CROP_MAX_INPUT and scale < 1.0


@pytest.mark.slow
def test_crop_boxes_sample_the_stated_pixels():
    """crop_and_resize with crop_boxes_tf samples input x at
    cx - rw/2 + (j + 0.5) * rw / ow (continuous convention)."""
    import tensorflow as tf

    from kpconv.model.multi import crop_boxes_tf

    w, h = 50, 40
    xs = np.tile(np.arange(w, dtype=np.float32) + 0.5, (h, 1))          # each pixel holds its x centre
    ys = np.tile((np.arange(h, dtype=np.float32) + 0.5)[:, None], (1, w))
    img = np.stack([xs, ys, np.zeros_like(xs)], -1)[None]
    centres = np.array([[20.0, 15.0], [31.5, 22.25]])
    for region, out in (((16.0, 8.0), (16, 8)), ((24.0, 24.0), (12, 12))):
        boxes = crop_boxes_tf(centres, region, out, np.tile([[w, h]], (2, 1))).numpy()
        crops = tf.image.crop_and_resize(np.repeat(img, 2, 0), boxes, [0, 1], (out[1], out[0])).numpy()
        for c, crop in zip(centres, crops):
            jx = c[0] - region[0] / 2 + (np.arange(out[0]) + 0.5) * region[0] / out[0]
            jy = c[1] - region[1] / 2 + (np.arange(out[1]) + 0.5) * region[1] / out[1]
            np.testing.assert_allclose(crop[0, :, 0], jx, atol=1e-3)
            np.testing.assert_allclose(crop[:, 0, 1], jy, atol=1e-3)


# ------------------------------------------------------------------------------------ OKS metrics
def _instances(rng, n_images=4, per=3, k=5):
    truth, preds = {}, {}
    for i in range(n_images):
        truth[i], preds[i] = [], []
        for _ in range(per):
            kp = np.c_[rng.uniform(0, 300, (k, 2)), np.full(k, 2)]
            box = [kp[:, 0].min(), kp[:, 1].min(), np.ptp(kp[:, 0]), np.ptp(kp[:, 1])]
            truth[i].append({"keypoints": kp, "bbox": box})
            preds[i].append({"keypoints": np.c_[kp[:, :2] + 1.0, np.ones(k)], "score": 0.9})
    return truth, preds


def test_oks_summary_perfect_missed_and_false_instances():
    truth, preds = _instances(np.random.default_rng(0))
    r = multi_instance_summary(truth, preds, oks_sigmas(["a"] * 5))
    assert r["mAP"] == 1.0 and r["AP@0.5"] == 1.0 and r["recall"] == 1.0 and r["precision"] == 1.0
    assert r["mean_error_px"] == pytest.approx(np.sqrt(2), abs=1e-3) and r["instances"] == 12
    assert set(r["per_keypoint"]) == {"0", "1", "2", "3", "4"}
    preds[0] = preds[0][:1]                                                  # two instances missed
    preds[1] = preds[1] + [{"keypoints": np.c_[np.full((5, 2), 1000.0), np.ones(5)], "score": 0.1}]   # one false
    r = multi_instance_summary(truth, preds, oks_sigmas(["a"] * 5))
    assert r["recall"] == pytest.approx(10 / 12, abs=1e-4) and r["precision"] == pytest.approx(10 / 11, abs=1e-4)
    assert r["AP@0.5"] < 1.0 and r["matched"] == 10
    # a confident false instance ranks above the true ones: AP falls further
    preds[1][-1]["score"] = 0.99
    assert multi_instance_summary(truth, preds, oks_sigmas(["a"] * 5))["mAP"] < r["mAP"]


def test_oks_matching_pairs_each_prediction_with_its_own_instance():
    truth, preds = _instances(np.random.default_rng(1), n_images=1, per=2)
    preds[0] = preds[0][::-1]                        # order does not matter
    r = multi_instance_summary(truth, preds, oks_sigmas(["a"] * 5))
    assert r["matched"] == 2 and r["mean_error_px"] == pytest.approx(np.sqrt(2), abs=1e-3)


def test_oks_sigmas():
    names = list(COCO_SIGMAS)
    assert oks_sigmas(names).tolist() == list(COCO_SIGMAS.values())
    assert oks_sigmas(["head", "thorax"]).tolist() == [DEFAULT_OKS_SIGMA] * 2
    assert oks_sigmas(names[:3], 0.1).tolist() == [0.1] * 3


@pytest.mark.slow
def test_window_at_is_crop_and_resize_at_the_same_size():
    """The centroid stage's training windows are sliced (kpconv.model.multi.window_at), not resampled: the same
    pixels as crop_and_resize with crop_boxes_tf, inside the frame, across its edges and larger than it."""
    import tensorflow as tf

    from kpconv.model.multi import crop_boxes_tf, window_at

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 70, 3)).astype(np.uint8)
    for centre, window in (((35, 25), 32), ((3, 47), 32), ((69, 0), 16), ((35, 25), 96), ((10, 10), 64)):
        got = window_at(tf.constant(img), tf.constant(centre, tf.float32), window).numpy()
        box = crop_boxes_tf(np.float32([centre]), [window, window], (window, window), np.float32([[70, 50]]))
        want = tf.image.crop_and_resize(img[None].astype(np.float32), box, [0], (window, window),
                                        extrapolation_value=0.0)[0].numpy()
        # (crop_and_resize may extrapolate a sample that falls on the frame's first or last pixel by float error:
        # those are compared as "inside the frame" only)
        xs = centre[0] - window // 2 + np.arange(window)
        ys = centre[1] - window // 2 + np.arange(window)
        inner = ((xs >= 1) & (xs <= 68))[None, :] & ((ys >= 1) & (ys <= 48))[:, None]
        outside = ~(((xs >= 0) & (xs <= 69))[None, :] & ((ys >= 0) & (ys <= 49))[:, None])
        np.testing.assert_allclose(got[inner], np.round(want[inner]), atol=1e-3)
        assert (got[outside] == 0).all() and (got[~outside] == img[ys.clip(0, 49)][:, xs.clip(0, 69)][~outside]).all()



def test_plan_stages_sizes_small_touching_animals_and_flies():
    """Small animals (25-30 px) in full-HD frames: the centroid stage at full resolution on 192 px windows, the
    instance stage upscaled; flies of 100 px far apart: a third of their size, crops not resized."""
    from kpconv.model.multi import plan_stages

    small = {"sides": [28.0] * 40, "neighbour_distances": [8.0] * 5 + [60.0] * 35, "max_instances": 7}
    plan = plan_stages(small, [(1920, 1080)])
    assert (plan.centroid_scale, plan.centroid_window, plan.max_instances) == (1.0, 192, 7)
    assert plan.crop_scale > 2 and plan.crop <= 192
    flies = {"sides": [100.0] * 40, "neighbour_distances": [90.0] * 40, "max_instances": 2}
    plan = plan_stages(flies, [(1024, 1024)])
    assert plan.centroid_scale == pytest.approx(21 / 64) and plan.crop_scale == 1.0
