"""Run one pruning algorithm on a copy of a model: :func:`prune` and its :class:`PruneResult`.

Every epoch is evaluated on the validation split and appended to the ``pruning`` table of the
results store as it happens (``kind="epoch"``), and a ``kind="summary"`` record with the plan,
the options, the environment and the final accuracies closes the run. The test split is read
once, after training, and not at all with ``evaluate_test=False`` (what algorithm selection
uses for its trials).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import pandas as pd
from torch import nn

from npas_lab import results
from npas_lab.data import DataSplits
from npas_lab.pruning.algorithms import PruningAlgorithm, make_algorithm
from npas_lab.pruning.loop import Trainer, TrainSettings
from npas_lab.sparsity import PruningPlan, achieved_rates, get_masks, validate_plan
from npas_lab.training import evaluate

__all__ = ["TABLE", "PruneResult", "plan_rates", "prune"]

#: Results-store table of pruning runs.
TABLE = "pruning"


@dataclass(frozen=True)
class PruneResult:
    """A pruned model and how it got there.

    Attributes
    ----------
    model
        The pruned copy, masks installed (``get_masks``), satisfying the plan.
    plan
        The plan it satisfies.
    algorithm
        Registry name of the algorithm; ``options`` its options.
    history
        One dict per epoch: ``epoch``, ``phase``, ``train_loss``, ``train_accuracy``,
        ``val_loss``, ``val_accuracy``, ``rate`` (dense / kept over the plan's pruned layers),
        ``rates`` (per pruned layer), ``seconds``, and the algorithm's own fields.
    test_accuracy
        On the test split after training; None when the run was asked not to read it.
    val_accuracy
        On the validation split after training (the last epoch's).
    seconds
        Wall time of the whole run.
    run_id
        Id of the run's records in the ``pruning`` table.
    """

    model: nn.Module = field(repr=False)
    plan: PruningPlan = field(repr=False)
    algorithm: str
    options: dict[str, Any]
    history: list[dict[str, Any]] = field(repr=False)
    test_accuracy: float | None
    val_accuracy: float
    seconds: float
    run_id: str

    def history_frame(self) -> pd.DataFrame:
        """Return the history as a DataFrame, one row per epoch (per-layer rates as a column)."""
        return pd.DataFrame.from_records(self.history)


def plan_rates(model: nn.Module, plan: PruningPlan) -> tuple[float, dict[str, float]]:
    """Return the overall and per-layer achieved rates of the plan's pruned layers.

    The overall rate is the layers' weights over their kept weights (a model with masks counts
    the masks, a plain one its nonzero weights; see :func:`~npas_lab.sparsity.achieved_rates`).
    """
    names = list(plan.pruned())
    rates = {name: rate for name, rate in achieved_rates(model).items() if name in set(names)}
    sizes = {name: model.get_submodule(name).weight.numel() for name in names}
    kept = sum(sizes[name] / rates[name] for name in names)
    overall = sum(sizes.values()) / kept if kept else 1.0
    return overall, rates


def _options(algo: PruningAlgorithm) -> dict[str, Any]:
    return asdict(algo) if is_dataclass(algo) else {}


def _check_satisfied(model: nn.Module, plan: PruningPlan, name: str) -> None:
    missing = sorted(set(plan.pruned()) - set(get_masks(model)))
    if missing:
        raise RuntimeError(
            f"pruning algorithm {name!r} finished without masks on layer(s) {missing}; "
            "an algorithm must end with apply_plan / update_masks of the plan"
        )


def prune(
    model: nn.Module,
    plan: PruningPlan,
    data: DataSplits,
    *,
    algorithm: str | PruningAlgorithm = "oneshot",
    epochs: int = 4,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adamw",
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: bool = True,
    run_id: str | None = None,
    stage: str = "prune",
    evaluate_test: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> PruneResult:
    """Prune a copy of ``model`` to ``plan`` with one algorithm; log every epoch.

    Parameters
    ----------
    model
        A trained model; not modified (the run works on a deep copy).
    plan
        Per-layer scheme and rate; validated against the model first.
    data
        Splits: train for training, val every epoch, test once at the end.
    algorithm
        A name of :func:`~npas_lab.pruning.algorithms.list_algorithms` or an instance.
    epochs
        Length of the whole run (regularised or ramp phase plus masked retraining).
    lr, batch_size, optimizer, weight_decay, seed
        Training settings (:class:`~npas_lab.pruning.loop.TrainSettings`): one one-cycle
        schedule with peak ``lr`` over the whole run.
    progress
        Show a tqdm bar over the run's steps.
    run_id
        Id of the records in the results store; a new one by default. Several runs may share
        one (algorithm selection does).
    stage
        Written into every record, to tell runs apart under one id (``"trial"``, ``"final"``).
    evaluate_test
        Evaluate on the test split at the end; False leaves ``test_accuracy`` None.
    on_epoch
        Called after every epoch with the history row plus ``algorithm`` and ``stage`` (e.g.
        to update a live figure); the row is already in the results store.
    **options
        The algorithm's options, e.g. ``rho=1e-4`` for ``admm``, ``lam=1e-4`` for
        ``group_lasso``; unknown ones raise.

    Returns
    -------
    PruneResult

    Raises
    ------
    ValueError
        Unknown algorithm or option, bad settings.
    SparsityError
        A plan that does not fit the model.

    Examples
    --------
    >>> plan = uniform_plan(model, "block_punched", 2.0)  # doctest: +SKIP
    >>> result = prune(model, plan, data, algorithm="admm", epochs=8)  # doctest: +SKIP
    >>> result.history_frame()[["epoch", "phase", "val_accuracy", "rate"]]  # doctest: +SKIP
    """
    algo = make_algorithm(algorithm, **options)
    name = algorithm if isinstance(algorithm, str) else algo.name
    settings = TrainSettings(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer=optimizer,
        weight_decay=weight_decay,
        seed=seed,
    )
    validate_plan(plan, model)
    run_id = run_id or results.new_run_id()
    common = {"run_id": run_id, "stage": stage, "algorithm": name, "plan_key": plan.key()}
    start = time.perf_counter()
    model = copy.deepcopy(model)
    trainer = Trainer(model, data, settings, progress=progress, desc=f"{stage} {name}")
    history: list[dict[str, Any]] = []
    try:
        for record in algo.run(model, plan, trainer):
            val = evaluate(model, data, split="val")
            rate, rates = plan_rates(model, plan)
            row = {
                "epoch": trainer.epoch,
                **record,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "rate": rate,
                "rates": rates,
                "seconds": time.perf_counter() - start,
            }
            history.append(row)
            trainer.bar.set_postfix(
                phase=row["phase"], val_acc=f"{val['accuracy']:.3f}", rate=f"{rate:.2f}"
            )
            results.append(TABLE, {**common, "kind": "epoch", **row}, env=False)
            if on_epoch is not None:
                on_epoch({"algorithm": name, "stage": stage, **row})
    finally:
        trainer.close()
    if trainer.epoch != settings.epochs:
        raise RuntimeError(
            f"pruning algorithm {name!r} stopped after {trainer.epoch} of {settings.epochs} epochs"
        )
    _check_satisfied(model, plan, name)
    model.eval()
    val_accuracy = history[-1]["val_accuracy"]
    test_accuracy = evaluate(model, data, split="test")["accuracy"] if evaluate_test else None
    seconds = time.perf_counter() - start
    rate, rates = plan_rates(model, plan)
    summary: Mapping[str, Any] = {
        **common,
        "kind": "summary",
        "options": _options(algo),
        "settings": asdict(settings),
        "plan": plan.to_json(),
        "val_accuracy": val_accuracy,
        "test_accuracy": test_accuracy,
        "rate": rate,
        "rates": rates,
        "seconds": seconds,
        "dataset": data.name,
    }
    results.append(TABLE, summary)
    return PruneResult(
        model=model,
        plan=plan,
        algorithm=name,
        options=_options(algo),
        history=history,
        test_accuracy=test_accuracy,
        val_accuracy=val_accuracy,
        seconds=seconds,
        run_id=run_id,
    )
