"""NPAS phase 3: try each pruning algorithm briefly, run the best one to completion.

With the per-layer schemes and rates fixed by phase 2, the candidates (one-shot, gradual, ADMM,
group Lasso) each prune the same model for ``trial_epochs``; the one with the best accuracy on
the *validation* split after its trial wins (ties go to the earlier candidate) and is run again,
from the same starting model, for ``final_epochs``. Only that final run reads the test split.
Trials and the final run share one ``run_id`` in the ``pruning`` table (``stage`` "trial" /
"final"), followed by one ``kind="selection"`` record with the scores and the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from npas_lab import results
from npas_lab.data import DataSplits
from npas_lab.pruning.algorithms import list_algorithms, make_algorithm
from npas_lab.pruning.runner import TABLE, PruneResult, prune
from npas_lab.sparsity import PruningPlan

__all__ = ["Selection", "select_algorithm"]

# What select_algorithm passes on to every prune() run besides epochs, seed and stage.
_TRAIN_OPTIONS = ("lr", "batch_size", "optimizer", "weight_decay")


@dataclass(frozen=True)
class Selection:
    """The outcome of algorithm selection.

    Attributes
    ----------
    algorithm
        The chosen algorithm's name.
    scores
        Validation accuracy of every candidate at the end of its trial, in candidate order.
    trials
        Per-epoch history of every trial (see :attr:`PruneResult.history`).
    result
        The chosen algorithm run for ``final_epochs``, evaluated on the test split.
    run_id
        The id shared by all records of the selection.
    """

    algorithm: str
    scores: dict[str, float]
    trials: dict[str, list[dict[str, Any]]] = field(repr=False)
    result: PruneResult = field(repr=False)
    run_id: str


def select_algorithm(
    model: nn.Module,
    plan: PruningPlan,
    data: DataSplits,
    *,
    candidates: Sequence[str] = ("oneshot", "gradual", "admm", "group_lasso"),
    trial_epochs: int = 2,
    final_epochs: int = 8,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    progress: bool = True,
    run_id: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **train_options: Any,
) -> Selection:
    """Pick the pruning algorithm for ``plan`` by short trials, then run it to completion.

    Parameters
    ----------
    model
        The trained model; not modified.
    plan
        The plan every candidate prunes to.
    data
        Splits; the trials read train and val only.
    candidates
        Registered algorithm names, tried in this order (ties go to the earlier one).
    trial_epochs, final_epochs
        Length of each trial and of the final run (a fresh run from ``model``).
    options
        ``{algorithm: {option: value}}``, e.g. ``{"admm": {"rho": 1e-3}}``.
    seed
        Seed of every run (so trials differ by algorithm only).
    progress
        Show a bar over the candidates and one per run.
    run_id
        Shared id of all records; a new one by default.
    on_epoch
        Called after every epoch of every run (trials and the final run) with the history row,
        ``algorithm`` and ``stage`` (``"trial"`` or ``"final"``): feeds live curves.
    **train_options
        Passed to :func:`~npas_lab.pruning.runner.prune`: ``lr``, ``batch_size``,
        ``optimizer``, ``weight_decay``.

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        No candidates, an unknown candidate or option (before anything is trained).
    """
    unknown = sorted(set(train_options) - set(_TRAIN_OPTIONS))
    if unknown:
        raise ValueError(
            f"select_algorithm got unknown option(s) {unknown}; training options are "
            f"{', '.join(_TRAIN_OPTIONS)} (algorithm options go in options={{name: {{...}}}})"
        )
    candidates = list(candidates)
    options = {name: dict(opts) for name, opts in (options or {}).items()}
    if not candidates:
        raise ValueError(f"select_algorithm needs at least one candidate of {list_algorithms()}")
    if len(set(candidates)) != len(candidates):
        raise ValueError(f"candidates are repeated: {candidates}")
    stray = sorted(set(options) - set(candidates))
    if stray:
        raise ValueError(f"options given for {stray}, which are not candidates {candidates}")
    for name in candidates:
        make_algorithm(name, **options.get(name, {}))  # fail fast on a typo, not after trials
    run_id = run_id or results.new_run_id()
    trials: dict[str, list[dict[str, Any]]] = {}
    scores: dict[str, float] = {}
    bar = tqdm(candidates, desc="algorithm trials", disable=not progress, leave=False)
    try:
        for name in bar:
            trial = prune(
                model,
                plan,
                data,
                algorithm=name,
                epochs=trial_epochs,
                seed=seed,
                progress=progress,
                run_id=run_id,
                stage="trial",
                evaluate_test=False,
                on_epoch=on_epoch,
                **train_options,
                **options.get(name, {}),
            )
            trials[name], scores[name] = trial.history, trial.val_accuracy
            bar.set_postfix(best=max(scores, key=scores.__getitem__))
    finally:
        bar.close()
    chosen = max(scores, key=scores.__getitem__)  # first maximum: candidate order breaks ties
    final = prune(
        model,
        plan,
        data,
        algorithm=chosen,
        epochs=final_epochs,
        seed=seed,
        progress=progress,
        run_id=run_id,
        stage="final",
        on_epoch=on_epoch,
        **train_options,
        **options.get(chosen, {}),
    )
    results.append(
        TABLE,
        {
            "run_id": run_id,
            "kind": "selection",
            "plan_key": plan.key(),
            "candidates": candidates,
            "scores": scores,
            "algorithm": chosen,
            "trial_epochs": trial_epochs,
            "final_epochs": final_epochs,
            "test_accuracy": final.test_accuracy,
        },
    )
    return Selection(algorithm=chosen, scores=scores, trials=trials, result=final, run_id=run_id)
