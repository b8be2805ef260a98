"""kpconv.model.metrics: plain numpy metrics against hand-computed values."""
import json

import numpy as np
import pytest

from kpconv.model import metrics


def test_to_original_applies_the_stored_transform():
    # stored 100x50 image; original = 2*x + 10, 3*y + 5
    p = metrics.to_original([[[0.5, 0.5], [0.0, 1.0]]], [[100, 50]], [[2, 0, 10, 0, 3, 5]])
    assert p.tolist() == [[[110.0, 80.0], [10.0, 155.0]]]


def test_bbox_to_original_and_instance_size():
    b = metrics.bbox_to_original([[0.1, 0.2, 0.5, 0.4], [0, 0, 0, 0]], [[100, 100], [100, 100]],
                                 [[2, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 0]])
    assert np.allclose(b, [[20, 20, 100, 40], [0, 0, 0, 0]])
    # longer side of the box; the image's longer side when there is no box
    assert metrics.instance_size(b, [[640, 480], [640, 480]]).tolist() == [100.0, 640.0]


def test_errors_pck_nme_hand_computed():
    true = np.zeros((2, 3, 2))
    pred = np.array([[[3, 4], [0, 1], [6, 8]],       # errors 5, 1, 10
                     [[0, 2], [30, 40], [0, 0]]])    # errors 2, 50 (unlabelled), 0
    mask = np.array([[1, 1, 1], [1, 0, 1]])
    norm = np.array([100.0, 20.0])
    err = metrics.errors(pred, true)
    assert err.tolist() == [[5, 1, 10], [2, 50, 0]]
    assert metrics.mean_error(err, mask) == pytest.approx((5 + 1 + 10 + 2 + 0) / 5)
    assert metrics.median_error(err, mask) == 2
    # thresholds: 0.05 -> 5 px and 1 px; 0.1 -> 10 px and 2 px
    assert metrics.pck(err, mask, norm, 0.05) == pytest.approx(3 / 5)   # 5, 1 ok; 10 no; 2 no; 0 ok
    assert metrics.pck(err, mask, norm, 0.1) == pytest.approx(5 / 5)
    assert metrics.nme(err, mask, norm) == pytest.approx((0.05 + 0.01 + 0.1 + 0.1 + 0) / 5)
    assert metrics.masked_mse(pred, true, mask) == pytest.approx(
        ((9 + 16) / 2 + 1 / 2 + (36 + 64) / 2 + 4 / 2 + 0) / 5)


def test_no_labelled_keypoint_gives_nan_not_zero():
    err = np.ones((1, 2))
    assert np.isnan(metrics.mean_error(err, np.zeros((1, 2))))
    assert np.isnan(metrics.pck(err, np.zeros((1, 2)), np.ones(1), 0.1))


def test_summary_perfect_predictor_and_table():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 100, (4, 3, 2))
    mask = np.ones((4, 3))
    mask[0, 1] = 0
    s = metrics.summary(true, true, mask, np.full(4, 50.0), pred_norm=true / 100, true_norm=true / 100,
                        names=["a", "b", "c"])
    o = s["overall"]
    assert (o["mean_error_px"], o["median_error_px"], o["nme"], o["masked_mse"]) == (0, 0, 0, 0)
    assert o["pck@0.05"] == o["pck@0.1"] == o["pck@0.2"] == 1.0
    assert o["count"] == 11 and s["per_keypoint"][1]["count"] == 3
    assert s["pck_reference"] == metrics.PCK_REFERENCE and "longer side of the instance's box" in s["pck_reference"]
    json.dumps(s)
    table = metrics.format_table(s).splitlines()
    assert table[0].split() == ["keypoint", "n", "mean", "px", "median", "px", "PCK@0.05", "PCK@0.1",
                                "PCK@0.2", "NME"]
    assert table[-1].split() == ["all", "11", "0.00", "0.00", "1.000", "1.000", "1.000", "0.000"]


def test_fit_calibration_estimates_the_hit_rate():
    rng = np.random.default_rng(0)
    peak = rng.uniform(0, 1, 4000)
    correct = rng.uniform(0, 1, 4000) < peak ** 2        # P(correct | peak) = peak^2
    a, b = metrics.fit_calibration(peak, correct)
    p = 1 / (1 + np.exp(-(a * peak + b)))
    for lo in (0.1, 0.5, 0.8):
        sel = (peak > lo) & (peak < lo + 0.1)
        assert abs(p[sel].mean() - correct[sel].mean()) < 0.06
    assert metrics.fit_calibration(peak, np.ones_like(peak, bool)) is None      # nothing to calibrate
    a, b = metrics.fit_calibration(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    assert np.isfinite([a, b]).all() and a > 0      # separable: finite thanks to Platt's targets


def test_confidence_summary_splits_at_the_threshold():
    err = np.array([[1.0, 10.0, 3.0]])
    mask = np.array([[1, 1, 0]])
    out = metrics.confidence_summary(err, mask, np.array([100.0]), np.array([[0.9, 0.2, 0.7]]), 0.5)
    assert out["above"]["count"] == 1 and out["above"]["mean_error_px"] == 1.0
    assert out["below"]["count"] == 1 and out["below"]["mean_error_px"] == 10.0
    assert out["unlabelled"] == 1 and out["unlabelled_above"] == 1.0
