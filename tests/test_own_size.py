"""Frames at their own size (``kpconv shard --image-size none``) with the single-instance heatmap model:
the pipeline batches by size, train crops, eval and predict at each frame's size; the input scale."""
import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from _shards import NAMES, make_example, to_example  # noqa: E402

SIZES = [(48, 40), (64, 48)]


def write_mixed(out, splits, sizes=SIZES, bbox=None, seed=0):
    """Shards of records of several sizes (``image.size`` null, as ``--image-size none`` writes them)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    info_splits = {}
    for split, n in splits.items():
        name = f"{split}.tfrecord-00000-of-00001"
        with tf.io.TFRecordWriter(str(out / name)) as wr:
            for i in range(n):
                wr.write(to_example(make_example(rng, sizes[i % len(sizes)], bbox=bbox)))
        info_splits[split] = {"shards": [{"file": name, "records": n}], "records": n}
    from kpconv.data.records import SPEC_VERSION

    info = {"spec_version": SPEC_VERSION, "keypoints": NAMES, "skeleton": [], "flip_pairs": [],
            "image": {"size": None, "resize": None, "crop": "none", "crop_pad": None},
            "compression": "none", "splits": info_splits}
    (out / "dataset_info.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return write_mixed(tmp_path_factory.mktemp("mixed"), {"train": 12, "test": 5})


def test_frame_sizes_and_batches_of_one_size(mixed):
    from kpconv.model.pipeline import frame_sizes, load

    assert frame_sizes(mixed, "train") == {(48, 40): 6, (64, 48): 6}
    seen = 0
    for images, target, meta in load(mixed, "train", 4, include_meta=True):
        h, w = images.shape[1:3]
        assert (w, h) in SIZES and target.shape[1:] == (len(NAMES), 3)
        assert np.all(meta["stored_size"].numpy() == [w, h])      # every frame of a batch at its own size
        seen += len(images)
    assert seen == 12
    # training: crops of one size from frames of several
    from kpconv.model.pipeline import Augment

    for images, _ in load(mixed, "train", 4, augment=Augment(crop=(32, 32)), seed=0).take(3):
        assert images.shape[1:] == (32, 32, 3)


def test_prescale_resizes_frames_as_the_model_does_at_inference(mixed):
    from kpconv.model.network import ScaleInput
    from kpconv.model.pipeline import load, scale_images

    full = {tuple(im.shape[1:3]) for im, _ in load(mixed, "train", 4)}
    half = [(im, t) for im, t in load(mixed, "train", 4, prescale=0.5)]
    assert {tuple(im.shape[1:3]) for im, _ in half} == {(round(h / 2), round(w / 2)) for h, w in full}
    # keypoints stay normalized to the frame; the pixels are ScaleInput's (anti-aliased; inference runs them in a
    # TensorFlow graph, and the ops also compile under XLA, which the last line checks)
    x = next(iter(load(mixed, "train", 4)))[0]
    ours = np.round(np.clip(scale_images(x, 0.5).numpy(), 0, 255))
    np.testing.assert_allclose(ours, np.round(ScaleInput(0.5)(x, training=False).numpy()), atol=1)
    assert tf.function(lambda v: scale_images(v, 0.5), jit_compile=True)(x).shape == ours.shape


def test_one_size_is_still_required_where_it_is_needed(mixed):
    from kpconv.data.dataset_info import read_dataset_info
    from kpconv.errors import DatasetInfoError

    with pytest.raises(DatasetInfoError, match="needs one image size"):
        read_dataset_info(mixed)
    assert read_dataset_info(mixed, any_size=True).image_size is None


@pytest.mark.slow
def test_train_eval_predict_at_each_frames_size(mixed, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from kpconv.cli import cli
    from kpconv.model.evaluate import evaluate

    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["-q", "train", str(mixed), "-o", str(run), "--weights", "none", "--epochs", "2",
                                 "--steps-per-epoch", "3", "--crop-size", "32", "--alpha", "0.35"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dataset"]["image_size"] is None and cfg["dataset"]["frame_sizes"] == [[48, 40, 6], [64, 48, 6]]
    assert "stages" not in cfg          # one instance per image: the single-instance model, not the pair
    res = evaluate(run, mixed, split="test")
    assert res["instances"] == 5 and res["keypoints"] == 5 * len(NAMES)
    # predict: each image at its own size, points in its own pixels
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (20, 20, 20)).save(tmp_path / f"im{i}.png")
    out = tmp_path / "p.jsonl"
    r = CliRunner().invoke(cli, ["-q", "predict", str(run), str(tmp_path / "im0.png"), str(tmp_path / "im1.png"),
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(p["width"], p["height"]) for p in rows] == SIZES
    for p, (w, h) in zip(rows, SIZES):
        assert all(0 <= v[0] <= w and 0 <= v[1] <= h for v in p["keypoints"].values())
    # the regression heads need one size, and say so
    r = CliRunner().invoke(cli, ["train", str(mixed), "-o", str(tmp_path / "r2"), "--weights", "none",
                                 "--head", "dense", "--epochs", "1"])
    assert r.exit_code == 1 and "needs one image size" in r.output


def test_auto_input_scale_follows_the_instance_size(tmp_path):
    from kpconv.model.train import INSTANCE_TARGET_PX, auto_input_scale

    # instances 0.8 x 400 = 320 px across: scaled to at most 200 px (a multiple of 1/64)
    big = write_mixed(tmp_path / "big", {"train": 3}, sizes=[(400, 400)], bbox=[0.1, 0.1, 0.8, 0.8])
    s = auto_input_scale(big, "train")
    assert s == 40 / 64 and s * 320 <= INSTANCE_TARGET_PX
    # instances up to 1.25 x the target keep the stored pixels
    small = write_mixed(tmp_path / "small", {"train": 3}, sizes=[(300, 300)], bbox=[0.1, 0.1, 0.8, 0.8])
    assert auto_input_scale(small, "train") == 1.0


def test_scale_input_resizes_at_inference_only_and_decoding_follows():
    import keras

    from kpconv.model.network import ModelConfig, ScaleInput, build_model, inference_model

    x = np.random.default_rng(0).uniform(0, 255, (2, 40, 60, 3)).astype(np.float32)
    layer = ScaleInput(0.5)
    assert layer(x, training=True).shape == x.shape
    assert tuple(layer(x, training=False).shape) == (2, 20, 30, 3)
    cfg = ModelConfig(num_keypoints=3, image_size=(40, 60), backbone="unet", alpha=0.35, head="heatmap",
                      input_scale=0.5)
    model = build_model(cfg)
    assert model(x, training=True).shape[1:3] == (10, 15)     # the crops come scaled: stride 4 of the input
    assert model(x, training=False).shape[1:3] == (5, 8)      # whole frames: resized first
    out = inference_model(model)(x, training=False).numpy()
    assert out.shape == (2, 3, 3) and np.all((out[..., :2] >= 0) & (out[..., :2] <= 1))
    # saved and loaded with its scale
    again = keras.Model.from_config(model.get_config())
    assert again.get_layer("input_scale").scale == 0.5


def test_border_pads_whole_frames_at_inference_and_its_cells_are_dropped():
    from kpconv.model.network import BorderPad, ModelConfig, build_model

    x = np.full((1, 40, 60, 3), 200.0, np.float32)
    assert BorderPad(8)(x, training=True).shape == x.shape
    padded = BorderPad(8)(x, training=False).numpy()
    assert padded.shape == (1, 56, 76, 3) and padded[0, :8].max() == 0 and padded[0, 8:48, 8:68].min() == 200
    cfg = ModelConfig(num_keypoints=3, image_size=(40, 60), backbone="unet", alpha=0.35, head="heatmap", border=16)
    model = build_model(cfg)
    assert model(x, training=True).shape[1:3] == (10, 15) and model(x, training=False).shape[1:3] == (10, 15)
    # the kept cells are the frame's: the same as the model without a border on the frame padded by hand
    plain = build_model(ModelConfig(num_keypoints=3, image_size=(40, 60), backbone="unet", alpha=0.35, head="heatmap"))
    plain.set_weights(model.get_weights())
    by_hand = plain(np.pad(x, [[0, 0], [16, 16], [16, 16], [0, 0]]), training=False).numpy()[:, 4:14, 4:19]
    np.testing.assert_allclose(model(x, training=False).numpy(), by_hand, rtol=1e-4, atol=1e-5)
