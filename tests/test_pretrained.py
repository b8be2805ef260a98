"""Pretrained weights done right, offline: a backbone weights file saved from a randomly initialised
MobileNetV2 (the layer names of Keras's ImageNet file) is loaded, the head warms up with the backbone
frozen, then the whole network trains at the fine-tuning learning rate, with --epochs and with
--time-limit; the backbone's batch-norm statistics stay the file's."""
import csv

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402

from kpconv.model import network as kmodel  # noqa: E402
from kpconv.model.train import TrainOptions, fit, train  # noqa: E402

from _shards import write_shards  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained")
    write_shards(out / "shards", {"train": 16, "val": 4}, size=(48, 48))
    keras.utils.set_random_seed(3)
    base = keras.applications.MobileNetV2(input_shape=(48, 48, 3), alpha=0.35, include_top=False, weights=None)
    path = out / "mnv2_random.weights.h5"
    base.save_weights(str(path))
    return out, path, {l.name: [w.copy() for w in l.get_weights()] for l in base.layers if l.get_weights()}


def _rows(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("budget", [dict(epochs=3), dict(time_limit=0.25)], ids=["epochs", "time-limit"])
def test_weights_file_warms_up_the_head_then_trains_the_whole_network(setup, tmp_path, budget, monkeypatch):
    out, path, file_weights = setup
    if "time_limit" in budget:  # a clock that ticks one second per reading: 15 readings of the budget, whatever the load
        import itertools

        import kpconv.model.train as ktrain

        ticks = itertools.count()
        monkeypatch.setattr(ktrain.time, "monotonic", lambda: float(next(ticks)))
    run = tmp_path / "run"
    # (no validation split: what is checked here is the training, and each phase's validation graph is seconds)
    opts = TrainOptions(weights=str(path), backbone="mobilenet_v2", alpha=0.35, batch_size=4, crop_size=32,
                        steps_per_epoch=2, warmup_epochs=1, learning_rate=1e-3, fine_tune_learning_rate=3e-4,
                        val_split="none", verbose=0, **budget)
    # fit: the training itself (train adds the calibration and the SavedModel export, tested in test_train.py)
    fit(out / "shards", run, opts)
    rows = _rows(run)
    assert len(rows) >= 2
    lrs = [float(r["learning_rate"]) for r in rows]
    assert lrs[0] > 3e-4 and all(lr <= 3e-4 * 1.0001 for lr in lrs[1:])     # the fine-tune rate is honoured
    last = kmodel.backbone_of(kmodel.load_model(run / "checkpoints" / "last.keras"))
    # the whole backbone trained (the first convolution too), its batch-norm statistics stayed the file's
    assert not np.allclose(last.get_layer("Conv1").get_weights()[0], file_weights["Conv1"][0])
    assert not np.allclose(last.get_layer("block_16_project").get_weights()[0], file_weights["block_16_project"][0])
    for got, want in zip(last.get_layer("bn_Conv1").get_weights(), file_weights["bn_Conv1"]):
        assert np.array_equal(got, want)


def test_a_weights_file_of_another_backbone_is_a_clear_error(setup, tmp_path):
    from kpconv.errors import TrainError

    out, path, _ = setup
    with pytest.raises(TrainError, match="cannot load into mobilenet_v2"):
        train(out / "shards", tmp_path / "run", TrainOptions(weights=str(path), backbone="mobilenet_v2", alpha=1.0,
                                                             epochs=1, steps_per_epoch=1, verbose=0))
