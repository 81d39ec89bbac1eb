"""Training: accuracy on real data, reproducibility, the checkpoint cache, clear errors."""

from __future__ import annotations

import pytest
import torch

from npas_lab import results
from npas_lab.data import load_dataset
from npas_lab.models import create_model
from npas_lab.training import TrainConfig, evaluate, finetune, fit, train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=16)


def test_small_cnn_reaches_95_percent_on_digits_and_is_cached():
    first = train(TrainConfig(), progress=False)
    assert not first.from_cache
    assert first.test_accuracy >= 0.95, first.test_accuracy
    assert first.checkpoint.exists()
    # The run and its curve are in the results store.
    runs = results.load("runs")
    assert runs.config_key.tolist() == [TrainConfig().key()]
    assert len(results.load("training")) == TrainConfig().epochs
    # Second identical call loads the checkpoint: same weights, no training.
    second = train(TrainConfig(), progress=False)
    assert second.from_cache
    assert second.test_accuracy == first.test_accuracy
    for a, b in zip(
        first.model.state_dict().values(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert evaluate(second.model, second.data)["accuracy"] == first.test_accuracy
    assert len(results.load("runs")) == 1  # nothing retrained


def test_same_seed_gives_identical_weights(digits):
    def run():
        torch.manual_seed(123)  # unrelated global state must not matter
        model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=16)
        fit(model, digits, epochs=1, lr=1e-3, seed=7, progress=False)
        return model.state_dict()

    a, b = run(), run()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_finetune_improves_a_briefly_trained_model(digits):
    model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=16)
    fit(model, digits, epochs=1, lr=1e-3, progress=False)
    before = evaluate(model, digits, split="val")["accuracy"]
    history = finetune(model, digits, epochs=2, lr=2e-3, progress=False)
    assert len(history) == 2 and {"train_loss", "val_accuracy"} <= set(history[0])
    assert evaluate(model, digits, split="val")["accuracy"] >= before


def test_config_key_is_stable_and_sensitive():
    assert TrainConfig().key() == TrainConfig().key()
    assert TrainConfig(seed=1).key() != TrainConfig().key()
    assert len(TrainConfig().key()) == 16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"optimizer": "lion"}, "optimizer='lion'"),
        ({"lr": 0.0}, "lr=0.0"),
    ],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)
