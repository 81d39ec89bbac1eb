"""Tests for npas_lab.pruning.select_algorithm: trials ranked on val, never on test."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from npas_lab import results
from npas_lab.data import DataSplits, load_dataset
from npas_lab.models import create_model
from npas_lab.pruning import TABLE, select_algorithm
from npas_lab.sparsity import get_masks, uniform_plan
from npas_lab.training import fit


class SpySplits(DataSplits):
    """DataSplits that log every read of a split, in order."""

    def __getattribute__(self, name):
        if name in ("train", "val", "test"):
            object.__getattribute__(self, "__dict__").setdefault("reads", []).append(name)
        return super().__getattribute__(name)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    digits = load_dataset("digits", image_size=8)
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=10, in_channels=1, input_size=8)
    fit(model, digits, epochs=2, lr=3e-3, progress=False)
    return model, digits


def test_select_picks_the_best_trial_on_val_and_reads_test_once_at_the_end(setup):
    model, digits = setup
    spy = SpySplits(**{f.name: getattr(digits, f.name) for f in dataclasses.fields(digits)})
    plan = uniform_plan(model, "filter", 4.0)  # hard enough for the algorithms to differ
    selection = select_algorithm(
        model, plan, spy, trial_epochs=1, final_epochs=2, progress=False, run_id="sel"
    )
    candidates = ["oneshot", "gradual", "admm", "group_lasso"]
    assert list(selection.scores) == candidates
    # The scores are the recorded trial curves' last validation accuracies ...
    store = results.load(TABLE)
    assert set(store.run_id) == {"sel"}
    trials = store[(store.kind == "epoch") & (store.stage == "trial")]
    for name in candidates:
        curve = trials[trials.algorithm == name].val_accuracy.tolist()
        assert curve == [row["val_accuracy"] for row in selection.trials[name]]
        assert selection.scores[name] == curve[-1]
    # ... and the choice is their argmax, the earliest candidate on ties.
    best = max(selection.scores.values())
    assert selection.algorithm == next(n for n in candidates if selection.scores[n] == best)
    # The final run is the chosen algorithm for final_epochs, with a test accuracy.
    result = selection.result
    assert result.algorithm == selection.algorithm and len(result.history) == 2
    assert set(plan.pruned()) <= set(get_masks(result.model))
    final = store[(store.kind == "epoch") & (store.stage == "final")]
    assert final.algorithm.unique().tolist() == [selection.algorithm] and len(final) == 2
    (record,) = store[store.kind == "selection"].to_dict("records")
    assert record["algorithm"] == selection.algorithm and record["scores"] == selection.scores
    assert record["test_accuracy"] == result.test_accuracy > 0.5
    # The test split was read exactly once: the final evaluation, after everything else.
    assert spy.reads.count("test") == 1 and spy.reads[-1] == "test"
    summaries = store[store.kind == "summary"]
    assert summaries[summaries.stage == "trial"].test_accuracy.isna().all()


def test_select_refuses_bad_candidates_before_training(setup):
    model, digits = setup
    plan = uniform_plan(model, "filter", 2.0)
    with pytest.raises(ValueError, match="unknown pruning algorithm 'sgd'"):
        select_algorithm(model, plan, digits, candidates=("oneshot", "sgd"), progress=False)
    with pytest.raises(ValueError, match="no option"):
        select_algorithm(model, plan, digits, options={"admm": {"rhoo": 1.0}}, progress=False)
    with pytest.raises(ValueError, match="not candidates"):
        select_algorithm(
            model, plan, digits, candidates=("oneshot",), options={"admm": {}}, progress=False
        )
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epochs'\]"):
        select_algorithm(model, plan, digits, epochs=3, progress=False)
    with pytest.raises(ValueError, match="at least one"):
        select_algorithm(model, plan, digits, candidates=(), progress=False)
    assert results.load(TABLE).empty


def test_select_passes_options_to_the_candidates(setup):
    model, digits = setup
    plan = uniform_plan(model, "block_punched", 2.0)
    selection = select_algorithm(
        model,
        plan,
        digits,
        candidates=("group_lasso", "admm"),
        options={"group_lasso": {"lam": 0.0}, "admm": {"rho": 1e-3}},
        trial_epochs=1,
        final_epochs=1,
        progress=False,
    )
    assert selection.trials["group_lasso"][0]["lam"] == 0.0
    assert selection.trials["admm"][0]["rho"] == pytest.approx(1.0)  # 1e-3 x 10^3
    assert selection.result.options == (
        {"lam": 0.0, "lasso_fraction": 0.5}
        if selection.algorithm == "group_lasso"
        else {
            "rho": 1e-3,
            "rho_factor": 10.0,
            "stages": 4,
            "updates_per_stage": 3,
            "admm_fraction": 0.5,
        }
    )
