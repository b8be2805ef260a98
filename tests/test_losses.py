"""Masked keypoint losses against hand-computed values."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from kpconv import losses  # noqa: E402

# two examples, three keypoints; y_true = x, y, mask
Y_TRUE = np.array([[[0.0, 0.0, 1], [0.5, 0.5, 1], [0.9, 0.9, 0]],
                   [[0.2, 0.2, 0], [0.2, 0.2, 0], [0.2, 0.2, 0]]], np.float32)
Y_PRED = np.array([[[0.1, 0.3, 0], [0.5, 0.3, 0], [0.0, 0.0, 0]],
                   [[0.9, 0.9, 0], [0.9, 0.9, 0], [0.9, 0.9, 0]]], np.float32)[..., :2]


def loss(kind, **kw):
    return float(losses.get(kind, **kw)(Y_TRUE, Y_PRED))


def test_mse_masks_unlabelled_keypoints():
    # example 1: kp0 (0.01 + 0.09) / 2 = 0.05; kp1 (0 + 0.04) / 2 = 0.02; kp2 masked -> (0.05 + 0.02) / 2
    # example 2: nothing labelled -> 0; batch mean -> 0.035 / 2
    assert loss("mse") == pytest.approx(0.035 / 2, rel=1e-5)


def test_weighted_mse():
    # weights 2, 1, 100 (the masked keypoint's weight changes nothing): (2 * 0.05 + 0.02) / 2 / 2
    assert loss("weighted-mse", keypoint_weights=[2, 1, 100]) == pytest.approx(0.06 / 2, rel=1e-5)


def test_mae_and_huber():
    # mae: kp0 (0.1 + 0.3) / 2 = 0.2; kp1 0.2 / 2 = 0.1 -> 0.15 per example 1, 0 for example 2
    assert loss("mae") == pytest.approx(0.15 / 2, rel=1e-5)
    # huber delta 0.1: |0.1| -> 0.5 * 0.01 = 0.005; |0.3| -> 0.5 * 0.01 + 0.1 * 0.2 = 0.025; kp0 0.015
    # |0.2| -> 0.005 + 0.01 = 0.015, kp1 = 0.0075 -> (0.015 + 0.0075) / 2 / 2
    assert loss("huber", delta=0.1) == pytest.approx(0.0225 / 4, rel=1e-5)


def test_bad_names_and_config_round_trip():
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("l3")
    with pytest.raises(ValueError, match="needs keypoint weights"):
        losses.get("weighted-mse")
    l = losses.get("huber", delta=0.2)
    again = losses.MaskedKeypointLoss.from_config(l.get_config())
    assert (again.kind, again.delta) == ("huber", 0.2)
