"""kpconv.model.network: shapes, config round trip, soft-argmax, freezing, weights resolution."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
import keras  # noqa: E402

from kpconv.model import network as kmodel  # noqa: E402
from kpconv.errors import TrainError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("head", ["spatial", "dense"])
def test_shapes_and_config_round_trip(head, tmp_path):
    cfg = kmodel.ModelConfig(num_keypoints=5, image_size=(32, 48), alpha=0.35, head=head, bn_momentum=0.9)
    assert kmodel.ModelConfig.from_dict(cfg.to_dict()) == cfg
    m = kmodel.build_model(cfg)
    assert m.input_shape == (None, 32, 48, 3) and m.output_shape == (None, 5, 2)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    y = m(x, training=False).numpy()
    assert y.shape == (2, 5, 2) and np.isfinite(y).all()
    again = keras.Model.from_config(m.get_config())
    assert again.output_shape == m.output_shape and again.count_params() == m.count_params()
    bn = [l for l in kmodel.backbone_of(m).layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bn and all(l.momentum == 0.9 for l in bn)
    m.save(tmp_path / "m.keras")
    loaded = kmodel.load_model(tmp_path / "m.keras")
    assert np.allclose(loaded(x, training=False).numpy(), y, atol=1e-6)


def test_soft_argmax_hand_computed():
    logits = np.full((1, 2, 4, 2), -1e9, np.float32)
    logits[0, 1, 3, 0] = 0.0                      # keypoint 0: all mass in row 1, column 3
    logits[0, 0, 0, 1] = logits[0, 1, 1, 1] = 0.0  # keypoint 1: half (0, 0), half (1, 1)
    out = kmodel.SoftArgmax()(logits).numpy()
    assert np.allclose(out[0, 0], [3.5 / 4, 1.5 / 2])
    assert np.allclose(out[0, 1], [(0.5 / 4 + 1.5 / 4) / 2, (0.5 / 2 + 1.5 / 2) / 2])


def test_freeze_and_fine_tune_from():
    m = kmodel.build_model(kmodel.ModelConfig(3, (32, 32), alpha=0.35, head="dense"))
    head_vars = len(m.trainable_weights) - len(kmodel.backbone_of(m).trainable_weights)
    kmodel.set_backbone_trainable(m, False)
    assert len(m.trainable_weights) == head_vars
    kmodel.set_backbone_trainable(m, True, "block_16_expand")
    tail = len(m.trainable_weights) - head_vars
    assert 0 < tail < len(kmodel.backbone_of(m).weights)
    with pytest.raises(TrainError, match="--fine-tune-from nope: no such layer"):
        kmodel.set_backbone_trainable(m, True, "nope")


def test_imagenet_weights_fail_fast_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cfg = kmodel.ModelConfig(3, (96, 96), alpha=0.35, weights="imagenet")
    with pytest.raises(TrainError) as e:
        kmodel.resolve_weights(cfg, check_network=lambda: False)
    msg = str(e.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5" in msg
    assert str(tmp_path / "models") in msg and "--weights none" in msg
    # the file in Keras's cache: no network needed
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5").write_bytes(b"")
    assert kmodel.resolve_weights(cfg, check_network=lambda: False) == "imagenet"


def test_unreachable_network_is_detected_quickly(monkeypatch):
    import socket

    def refuse(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert kmodel._network_reachable() is False


def test_weights_path(tmp_path):
    m = kmodel.build_model(kmodel.ModelConfig(3, (32, 32), alpha=0.35, head="dense"))
    path = tmp_path / "backbone.weights.h5"
    kmodel.backbone_of(m).save_weights(path)
    cfg = kmodel.ModelConfig(3, (32, 32), alpha=0.35, head="dense", weights=str(path))
    assert kmodel.resolve_weights(cfg) == str(path)
    m2 = kmodel.build_model(cfg, kmodel.resolve_weights(cfg))
    a = kmodel.backbone_of(m).get_weights()
    b = kmodel.backbone_of(m2).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(TrainError, match="no such file"):
        kmodel.resolve_weights(kmodel.ModelConfig(3, (32, 32), weights=str(tmp_path / "missing.h5")))


@pytest.mark.parametrize("backbone", ["unet", "mobilenet_v2"])
def test_heatmap_model_is_fully_convolutional(backbone, tmp_path):
    cfg = kmodel.ModelConfig(num_keypoints=3, image_size=(32, 48), backbone=backbone, alpha=0.35, head="heatmap",
                             bn_momentum=0.9)
    m = kmodel.build_model(cfg)
    rng = np.random.default_rng(0)
    for h, w in ((32, 48), (36, 50), (64, 64)):     # any size: padded inside, cut back to ceil(size / 4)
        y = m(rng.uniform(0, 255, (2, h, w, 3)).astype("float32"), training=False).numpy()
        assert y.shape == (2, -(-h // 4), -(-w // 4), 3) and np.isfinite(y).all()
    inf = kmodel.inference_model(m)
    out = inf(rng.uniform(0, 255, (1, 36, 50, 3)).astype("float32"), training=False).numpy()
    assert out.shape == (1, 3, 3) and ((out[..., 2] >= 0) & (out[..., 2] <= 1)).all()
    m.save(tmp_path / "m.keras")
    x = rng.uniform(0, 255, (1, 40, 40, 3)).astype("float32")
    assert np.allclose(kmodel.load_model(tmp_path / "m.keras")(x, training=False).numpy(),
                       m(x, training=False).numpy(), atol=1e-5)
    if backbone == "unet":
        assert m.count_params() < 600_000
        with pytest.raises(TrainError, match="unet backbone has no pretrained weights"):
            kmodel.build_model(cfg, "imagenet")


def _gaussian_heatmap(h, w, points, sigma=2.0):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    hm = np.zeros((1, h, w, len(points)), np.float32)
    for k, (cx, cy, peak) in enumerate(points):     # centre in cell units (cell (i, j) centred at j, i)
        hm[0, ..., k] = peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
    return hm


def test_heatmap_decode_is_sub_pixel_and_reports_the_peak():
    # cell (i, j) is centred on input pixel ((j + 0.5) * 4, (i + 0.5) * 4): a Gaussian centred at
    # cell (7.3, 5.8) is the point (7.8 * 4, 6.3 * 4) of a 64x48 input
    hm = _gaussian_heatmap(12, 16, [(7.3, 5.8, 0.9), (0.0, 0.0, 0.2), (15.0, 11.0, 1.0)])
    image = np.zeros((1, 48, 64, 3), np.float32)
    out = kmodel.HeatmapDecode(4)([hm, image]).numpy()[0]
    assert np.allclose(out[0, :2] * [64, 48], [7.8 * 4, 6.3 * 4], atol=0.05)   # exact for a Gaussian
    peaks = hm[0].reshape(-1, 3).max(0)
    assert np.allclose(out[:, 2], peaks, atol=1e-6) and peaks[0] > 0.85       # uncalibrated: the peak cell
    assert np.allclose(out[1, :2] * [64, 48], [2, 2]) and np.allclose(out[2, :2] * [64, 48], [62, 46])
    cal = kmodel.HeatmapDecode(4, calibration=[10.0, -5.0])([hm, image]).numpy()[0]
    assert np.allclose(cal[:, 2], 1 / (1 + np.exp(-(10 * peaks - 5))), atol=1e-5)


def test_fine_tune_transfers_matching_layers_to_another_keypoint_set():
    from kpconv.model.train import transfer_weights

    a = kmodel.build_model(kmodel.ModelConfig(num_keypoints=3, image_size=(32, 32), backbone="unet", head="heatmap"))
    b = kmodel.build_model(kmodel.ModelConfig(num_keypoints=5, image_size=(32, 32), backbone="unet", head="heatmap"))
    copied, kept = transfer_weights(a, b)
    assert kept == ["heatmaps"] and copied > 10
    conv = "unet_l3_conv0"
    assert np.array_equal(kmodel.backbone_of(a).get_layer(conv).get_weights()[0],
                          kmodel.backbone_of(b).get_layer(conv).get_weights()[0])
