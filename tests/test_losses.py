"""Masked keypoint losses against hand-computed values."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from kpconv.model import losses  # noqa: E402

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


def test_heatmap_loss_targets_gaussians_and_zero_for_absent_keypoints():
    # 16x16 input, stride 4: 4x4 cells. Keypoint 0 at the centre of cell (1, 2); keypoint 1 unlabelled.
    loss = losses.HeatmapLoss(stride=4, sigma=1.0, pos_weight=9.0)
    y_true = np.array([[[10 / 16, 6 / 16, 1.0], [0.5, 0.5, 0.0]]], np.float32)
    yy, xx = np.mgrid[0:4, 0:4]
    target0 = np.exp(-((xx - 2) ** 2 + (yy - 1) ** 2) / 2.0)
    perfect = np.zeros((1, 4, 4, 2), np.float32)
    perfect[0, ..., 0] = target0
    assert float(loss(y_true, perfect)) == pytest.approx(0.0, abs=1e-6)
    # the unlabelled keypoint's target is all zero: a peak there costs
    wrong = perfect.copy()
    wrong[0, 1, 1, 1] = 1.0
    assert float(loss(y_true, wrong)) == pytest.approx(1.0 / 16 / 2, rel=1e-4)
    # an error near the peak costs (1 + 9 x target) times more than one in the background
    near = perfect.copy()
    near[0, 1, 2, 0] += 0.1
    far = perfect.copy()
    far[0, 3, 0, 0] += 0.1
    ratio = float(loss(y_true, near)) / float(loss(y_true, far))
    assert ratio == pytest.approx((1 + 9 * 1.0) / (1 + 9 * target0[3, 0]), rel=1e-3)
    again = losses.HeatmapLoss.from_config(loss.get_config())
    assert again.sigma == 1.0 and again.stride == 4


@pytest.mark.parametrize("size", [(30, 22), (33, 17), (32, 24)])
def test_heatmap_target_decodes_back_to_the_labelled_point_for_any_frame_size(size):
    """Targets and decoding on the same grid: a frame whose size is not a multiple of the stride is padded
    (pipeline.pad_to_multiple) for the loss; the loss's target heatmap, decoded on the unpadded frame as
    inference does (model.HeatmapDecode), gives back the labelled point within 0.1 px."""
    import tensorflow as tf

    from kpconv.model.network import HeatmapDecode
    from kpconv.model.pipeline import pad_to_multiple

    w, h = size
    stride = 4
    points = np.array([[13.3, 9.7], [6.1, 11.6], [w - 6.2, 5.4]], np.float32)   # pixels, off the border cells
    image = tf.zeros((h, w, 3))
    padded, kp = pad_to_multiple(image, points / [w, h], stride)
    assert padded.shape == (-(-h // stride) * stride, -(-w // stride) * stride, 3)
    loss = losses.HeatmapLoss(stride=stride, sigma=2.0)
    cells = (-(-h // stride), -(-w // stride))
    y_true = np.concatenate([kp.numpy(), np.ones((3, 1), np.float32)], -1)[None]
    target = loss.targets(y_true, *cells)                                      # (1, K, h, w)
    heatmaps = tf.transpose(target, (0, 2, 3, 1))
    assert float(loss(y_true, heatmaps)) == pytest.approx(0.0, abs=1e-7)       # the target is a perfect prediction
    decoded = HeatmapDecode(stride)([heatmaps, image[None]]).numpy()[0]
    assert np.abs(decoded[:, :2] * [w, h] - points).max() < 0.1
    if w % stride:      # without the padding (what the loss did before) the target lies off the labelled point
        unpadded = tf.transpose(loss.targets(np.concatenate([points / [w, h], np.ones((3, 1))], -1)[None], *cells),
                                (0, 2, 3, 1))
        off = HeatmapDecode(stride)([unpadded, image[None]]).numpy()[0]
        assert np.abs(off[:, 0] * w - points[:, 0]).max() > 0.1
