"""Tests for npas_lab.pruning prune(): every algorithm meets its plan exactly, and stays there."""

from __future__ import annotations

import copy
import dataclasses
from typing import ClassVar

import pytest
import torch
from torch.nn.utils import parametrize

from npas_lab import results
from npas_lab.data import load_dataset
from npas_lab.models import create_model
from npas_lab.pruning import (
    ALGORITHMS,
    TABLE,
    PruningAlgorithm,
    list_algorithms,
    make_algorithm,
    prune,
)
from npas_lab.sparsity import (
    LayerChoice,
    PruningPlan,
    SparsityError,
    achieved_rates,
    apply_plan,
    get_masks,
    make_permanent,
    uniform_plan,
)
from npas_lab.training import evaluate, fit

ALGOS = ("oneshot", "gradual", "admm", "group_lasso")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only add contention
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=8)


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    fit(model, digits, epochs=3, lr=3e-3, progress=False)
    return model


def mixed_plan() -> PruningPlan:
    """The schemes uniform plans of a small CNN do not cover: channel, column, block on FC."""
    return PruningPlan(
        {
            "features.1.0": LayerChoice(scheme="channel", rate=2.0),
            "features.2.0": LayerChoice(scheme="column", rate=3.0),
            "classifier": LayerChoice(scheme="block", rate=2.0, block=(2, 4), prune="cols"),
        }
    )


def assert_meets_plan(result, source, plan):
    """The masks are what apply_plan gives on the result's weights; masked weights are 0."""
    masks = get_masks(result.model)
    assert set(plan.pruned()) <= set(masks)
    for name, mask in masks.items():
        weight = result.model.get_submodule(name).weight
        assert torch.all(weight[~mask] == 0), name
    # Not make_permanent(deepcopy(...)): a deep copy shares torch's injected parametrized
    # class, and removing the masks from the copy would break result.model.
    reference = copy.deepcopy(source)
    with torch.no_grad():
        for name, module in reference.named_modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                module.weight.copy_(result.model.get_submodule(name).weight)
    apply_plan(reference, plan)
    assert achieved_rates(result.model) == achieved_rates(reference)
    for name, choice in plan.pruned().items():
        if choice.scheme != "pattern":  # a library re-extracted from pruned weights may differ
            assert torch.equal(masks[name], get_masks(reference)[name]), name
    assert result.history[-1]["rates"] == {n: achieved_rates(reference)[n] for n in plan.pruned()}


def assert_masks_survive_sgd(model, digits, steps=3):
    masks = {name: mask.clone() for name, mask in get_masks(model).items()}
    rates = achieved_rates(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    images, labels = digits.train.tensors
    model.train()
    for step in range(steps):
        opt.zero_grad()
        sl = slice(32 * step, 32 * step + 32)
        torch.nn.functional.cross_entropy(model(images[sl]), labels[sl]).backward()
        opt.step()
    assert achieved_rates(model) == rates
    for name, mask in masks.items():
        assert torch.equal(get_masks(model)[name], mask)
        assert torch.all(model.get_submodule(name).weight[~mask] == 0)


@pytest.mark.parametrize("algorithm", ALGOS)
@pytest.mark.parametrize(
    ("scheme", "rate"),
    [("unstructured", 4.0), ("filter", 2.0), ("block_punched", 3.0), ("pattern", 3.0)],
)
def test_every_algorithm_meets_its_plan_exactly(trained, digits, algorithm, scheme, rate):
    plan = uniform_plan(trained, scheme, rate)
    result = prune(trained, plan, digits, algorithm=algorithm, epochs=1, progress=False)
    assert_meets_plan(result, trained, plan)
    assert result.algorithm == algorithm and result.test_accuracy is not None
    assert_masks_survive_sgd(result.model, digits)


@pytest.mark.parametrize("algorithm", ALGOS)
def test_channel_column_and_block_schemes(trained, digits, algorithm):
    plan = mixed_plan()
    result = prune(trained, plan, digits, algorithm=algorithm, epochs=1, progress=False)
    assert_meets_plan(result, trained, plan)
    assert result.history[-1]["rates"] == {
        "features.1.0": 2.0,
        "features.2.0": 3.0,
        "classifier": 2.0,
    }


def test_oneshot_fine_tuned_at_2x_block_punched_is_accurate(trained, digits):
    plan = uniform_plan(trained, "block_punched", 2.0)
    result = prune(trained, plan, digits, algorithm="oneshot", epochs=2, progress=False)
    assert result.test_accuracy > 0.9  # chance is 0.1; the dense model has ~0.97
    assert result.test_accuracy == evaluate(result.model, digits)["accuracy"]
    assert result.history[-1]["rate"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("algorithm", "phases", "extra"),
    [
        ("oneshot", ["retrain", "retrain"], set()),
        ("gradual", ["ramp", "retrain"], set()),
        ("admm", ["admm", "retrain"], {"rho", "admm_residual", "penalty"}),
        ("group_lasso", ["group_lasso", "retrain"], {"lam", "penalty"}),
    ],
)
def test_history_is_logged_per_epoch_with_phases(trained, digits, algorithm, phases, extra):
    plan = uniform_plan(trained, "block_punched", 2.0)
    result = prune(
        trained, plan, digits, algorithm=algorithm, epochs=2, progress=False, run_id="r1"
    )
    assert [row["phase"] for row in result.history] == phases
    first = result.history[0]
    assert {"epoch", "train_loss", "val_accuracy", "val_loss", "rate", "rates"} <= set(first)
    assert extra <= set(first)
    if algorithm == "admm":
        assert first["rho"] == pytest.approx(1e-1)  # 1e-4 raised x10 three times
    store = results.load(TABLE)
    epochs = store[store.kind == "epoch"]
    assert epochs.epoch.tolist() == [1, 2] and set(epochs.run_id) == {"r1"}
    assert epochs.val_accuracy.tolist() == [row["val_accuracy"] for row in result.history]
    (summary,) = store[store.kind == "summary"].to_dict("records")
    assert summary["test_accuracy"] == result.test_accuracy
    assert summary["algorithm"] == algorithm and PruningPlan.from_json(summary["plan"]) == plan
    assert summary["options"] == result.options and isinstance(summary["env"], dict)
    assert len(result.history_frame()) == 2


def test_input_model_is_untouched(trained, digits):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    plan = uniform_plan(trained, "unstructured", 4.0)
    prune(trained, plan, digits, algorithm="admm", epochs=1, progress=False)
    after = trained.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(parametrize.is_parametrized(m) for m in trained.modules())


def test_input_model_with_masks_is_untouched_even_after_make_permanent(trained, digits):
    masked = apply_plan(copy.deepcopy(trained), uniform_plan(trained, "filter", 2.0))
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    plan = uniform_plan(trained, "filter", 4.0)
    result = prune(masked, plan, digits, algorithm="gradual", epochs=1, progress=False)
    assert_meets_plan(result, trained, plan)
    make_permanent(result.model)
    assert achieved_rates(masked)["features.1.0"] == 2.0  # still masked, still works
    after = masked.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unknown_algorithm_and_options_are_refused_listing_valid_ones(trained, digits):
    plan = uniform_plan(trained, "filter", 2.0)
    with pytest.raises(ValueError, match="unknown pruning algorithm 'nope'") as err:
        prune(trained, plan, digits, algorithm="nope", progress=False)
    assert all(name in str(err.value) for name in ALGOS)
    with pytest.raises(ValueError, match=r"no option\(s\) \['lambda'\].*lam"):
        prune(trained, plan, digits, algorithm="group_lasso", progress=False, **{"lambda": 1})
    with pytest.raises(ValueError, match="admm_fraction"):
        make_algorithm("admm", admm_fraction=2.0)
    with pytest.raises(SparsityError, match="nonexistent"):
        bad = PruningPlan({"nonexistent": LayerChoice(scheme="filter", rate=2.0)})
        prune(trained, bad, digits, progress=False)
    assert list_algorithms() == list(ALGOS)
    assert results.load(TABLE).empty  # nothing ran


@dataclasses.dataclass(frozen=True, kw_only=True)
class Forgetful(PruningAlgorithm):
    """Trains but never installs the plan's masks."""

    name: ClassVar[str] = "forgetful"

    def run(self, model, plan, trainer):
        for _ in range(trainer.settings.epochs):
            yield {"phase": "train", **trainer.train_epoch()}


def test_registry_accepts_new_algorithms_and_checks_they_meet_the_plan(
    trained, digits, monkeypatch
):
    monkeypatch.setitem(ALGORITHMS, "forgetful", Forgetful)
    plan = uniform_plan(trained, "filter", 2.0)
    with pytest.raises(RuntimeError, match="without masks"):
        prune(trained, plan, digits, algorithm="forgetful", epochs=1, progress=False)
