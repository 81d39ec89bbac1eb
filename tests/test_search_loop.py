"""The search loop on real evaluations: records, caching, resume, and the CLI.

small_cnn on digits at 8 px, pretrained one epoch in memory; each evaluation really prunes,
fine-tunes (2 steps), compiles with TVM and measures (2 short repeats).
"""

from __future__ import annotations

import argparse
import itertools
import json

import pandas as pd
import pytest

from npas_lab import results
from npas_lab.data import load_dataset
from npas_lab.devices import MeasureConfig
from npas_lab.models import create_model
from npas_lab.search import (
    CACHE_TABLE,
    EvalConfig,
    Evaluator,
    RewardConfig,
    SearchSpace,
    SpaceConfig,
    load_history,
    pareto_front,
    search,
)
from npas_lab.search.cli import add_search_parser
from npas_lab.sparsity import LayerChoice, PruningPlan
from npas_lab.training import fit

FAST = EvalConfig(finetune_steps=2, measure=MeasureConfig(warmup=1, repeat=2, min_repeat_ms=1.0))


@pytest.fixture(scope="module")
def pretrained():
    data = load_dataset("digits", image_size=8, in_channels=1)
    model = create_model("small_cnn", in_channels=1, input_size=8)
    fit(model, data, epochs=1, lr=3e-3, progress=False)
    return model, data


@pytest.fixture
def setup(pretrained):
    model, data = pretrained
    space = SearchSpace.from_model(model, SpaceConfig(rates=(1, 2, 4), blocks=((8, 4),)))
    return space, Evaluator(model, data, FAST, model_name="small_cnn")


def test_search_records_every_evaluation_and_resumes_without_reevaluating(setup):
    space, evaluator = setup
    reward = RewardConfig(target_ms=1.0)
    # Stop after 2 of 3 evaluations, as a killed search would.
    first = list(
        itertools.islice(
            search(
                space,
                evaluator,
                reward,
                algorithm="npas",
                budget=3,
                seed=1,
                run_id="r",
                options={"n_initial": 2},
            ),
            2,
        )
    )
    assert [e.status for e in first] == ["ok", "ok"] and evaluator.evaluated == 2
    for ev in first:
        assert 0 <= ev.accuracy <= 1 and ev.latency > 0
        assert ev.reward == pytest.approx(reward(ev.accuracy, ev.latency))
    cached = results.load(CACHE_TABLE)
    assert len(cached) == 2 and cached.artifact.notna().all()

    resumed = list(
        search(
            space,
            evaluator,
            reward,
            algorithm="npas",
            budget=3,
            seed=1,
            run_id="r",
            options={"n_initial": 2},
        )
    )
    assert [e.replayed for e in resumed] == [True, True, False]
    assert [e.plan for e in resumed[:2]] == [e.plan for e in first]
    assert evaluator.evaluated == 3  # only the third was evaluated
    assert resumed[2].predicted is not None  # chosen by the surrogate
    history = load_history("r")
    assert history.step.tolist() == [0, 1, 2]
    assert history.best_reward.is_monotonic_increasing
    assert len(pareto_front(history)) >= 1

    # Another run meeting the same plans reads them from the cache, in a fresh evaluator too.
    fresh = Evaluator(evaluator.model, evaluator.data, FAST, model_name="small_cnn")
    again = list(
        search(
            space,
            fresh,
            reward,
            algorithm="npas",
            budget=2,
            seed=1,
            run_id="r2",
            options={"n_initial": 2},
        )
    )
    assert [e.status for e in again] == ["cached", "cached"] and fresh.evaluated == 0

    with pytest.raises(ValueError, match="started with algorithm='npas'"):
        next(search(space, evaluator, reward, algorithm="random", budget=3, seed=1, run_id="r"))


def test_a_plan_that_fails_is_recorded_and_not_retried(setup):
    _space, evaluator = setup

    bad = PruningPlan({"features.1.0": LayerChoice(filter_type="5x5")})
    result = evaluator(bad)
    assert result.status == "failed" and "5x5" in result.error
    assert evaluator(bad).cached and evaluator.evaluated == 1


def _cli(argv):
    parser = argparse.ArgumentParser(prog="npas-lab")
    add_search_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_runs_a_search_and_reports_user_errors(capsys):
    common = [
        "search",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--finetune-steps",
        "2",
        "--rates",
        "1",
        "2",
        "--no-artifacts",
    ]
    status = _cli(
        [
            *common,
            "--algorithm",
            "random",
            "--budget",
            "2",
            "--target-fraction",
            "0.8",
            "--run-id",
            "cli",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "best (step" in out and "features.1.0" in out
    runs = [r for r in results.iter_records("search/runs") if r["run_id"] == "cli"]
    assert [r["kind"] for r in runs] == ["start", "evaluation", "evaluation"]
    assert json.loads(runs[1]["plan"])["version"] == 1

    assert _cli([*common, "--algorithm", "rl", "--budget", "2", "--run-id", "cli"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "started with algorithm='random'" in err
    assert _cli([*common, "--budget", "0"]) == 2
    assert "--budget 0" in capsys.readouterr().err


def test_phase_table_gives_seconds_per_phase_of_the_evaluations_that_ran():
    from npas_lab.search import PHASES, phase_table

    history = pd.DataFrame(
        [
            {"step": 0, "status": "ok", "phases": {"finetune": 2.0, "compile": 1.0}},
            {"step": 1, "status": "cached", "phases": None},
        ]
    )
    table = phase_table(history)
    assert table.columns.tolist() == ["step", "status", *PHASES, "total"]
    assert table.step.tolist() == [0] and table.total.tolist() == [3.0]
    assert table.measure.tolist() == [0.0]
    assert phase_table(pd.DataFrame()).empty
