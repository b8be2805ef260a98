"""Test-time flip (model.MirrorInput, model.FlipTestAverage, inference_model(flip_permutation=...)): the
mirror's heatmap cells fall exactly on the frame's cells for any frame width, and its keypoints are swapped
left/right before averaging."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from kpconv.model import network as kmodel  # noqa: E402


def _pooling_model(stride, k=2):
    """A 'model' whose heatmaps are the image's first k channels averaged over stride x stride cells: what a
    model that sees left and right alike (trained with flips) does, with no weights to learn."""
    inputs = keras.Input((None, None, 3), name="image")
    x = kmodel.PadToMultiple(stride)(inputs)
    x = keras.layers.AveragePooling2D(stride)(x)
    x = keras.layers.Lambda(lambda t: t[..., :k])(x)
    out = kmodel.CropToInput(stride, name="heatmaps_crop")([x, inputs])
    return keras.Model(inputs, out)


@pytest.mark.parametrize("width", [32, 30, 29])
def test_mirror_heatmaps_fall_on_the_frame_cells(width):
    stride, h = 4, 20
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (2, h, width, 3)).astype(np.float32)
    m = _pooling_model(stride)
    hm = m(image).numpy()
    mirrored = m(kmodel.MirrorInput(stride)(image)).numpy()
    assert mirrored.shape == hm.shape
    assert np.allclose(mirrored[:, :, ::-1], hm, atol=1e-3)        # cell j of the mirror is cell w - 1 - j
    # identity permutation: the average of two equal heatmaps is the heatmap; decoding gives the same points
    plain = kmodel.inference_model(m)(image).numpy()
    flipped = kmodel.inference_model(m, flip_permutation=[0, 1])(image).numpy()
    assert np.allclose(flipped, plain, atol=1e-4)


def test_flip_test_average_swaps_left_and_right():
    rng = np.random.default_rng(1)
    hm = rng.uniform(0, 1, (1, 3, 5, 3)).astype(np.float32)
    mirrored = rng.uniform(0, 1, (1, 3, 5, 3)).astype(np.float32)
    out = kmodel.FlipTestAverage([0, 2, 1])([hm, mirrored]).numpy()
    assert np.allclose(out, (hm + mirrored[:, :, ::-1][..., [0, 2, 1]]) / 2)
    again = kmodel.FlipTestAverage.from_config(kmodel.FlipTestAverage([0, 2, 1]).get_config())
    assert again.flip_permutation == [0, 2, 1]


def test_flip_test_needs_a_heatmap_model():
    inputs = keras.Input((8, 8, 3))
    m = keras.Model(inputs, keras.layers.Reshape((1, 2))(keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs))))
    with pytest.raises(Exception, match="heatmap"):
        kmodel.inference_model(m, flip_permutation=[0])


def test_flip_test_default_follows_the_training_flips():
    from kpconv.errors import TrainError
    from kpconv.model.inference import flip_permutation

    cfg = {"model": {"head": "heatmap"}, "options": {"augment_flip": 0.5},
           "dataset": {"keypoints": ["nose", "l", "r"], "flip_pairs": [[1, 2]]}}
    assert flip_permutation(cfg) == [0, 2, 1] and flip_permutation(cfg, False) is None
    no_flips = {**cfg, "options": {"augment_flip": 0.0}}
    assert flip_permutation(no_flips) is None and flip_permutation(no_flips, True) == [0, 2, 1]
    assert flip_permutation({**cfg, "options": {"augment": False, "augment_flip": 0.5}}) is None
    no_pairs = {**cfg, "dataset": {"keypoints": ["a", "b"], "flip_pairs": []}}
    assert flip_permutation(no_pairs) is None and flip_permutation(no_pairs, True) == [0, 1]
    dense = {**cfg, "model": {"head": "dense"}}
    assert flip_permutation(dense) is None
    with pytest.raises(TrainError, match="the dense head has no heatmaps"):
        flip_permutation(dense, True)
