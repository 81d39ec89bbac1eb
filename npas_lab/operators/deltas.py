"""Measured deltas of operator replacement: accuracy (with and without fine-tune) and latency.

NPAS claims the hard variants cost little accuracy after a short fine-tune and save latency on
phones (NPAS.md, phase 1). :func:`measure_replacement` checks both claims on a trained model, for
every **variant**: the original, each rule alone, and all rules together. Per variant it

1. replaces the operators (:func:`~npas_lab.operators.replace_operators`, on a copy);
2. evaluates test accuracy right away (``accuracy``);
3. compiles it once with TVM for the device and times it with the shared protocol
   (:func:`npas_lab.devices.measure`, engine ``tvm``): fine-tuning changes weights, not the
   graph, so one compiled model serves both accuracies;
4. fine-tunes a copy briefly (:func:`npas_lab.training.finetune`) and evaluates again
   (``accuracy_finetuned``). The original is fine-tuned the same way, so the fine-tuned delta
   isolates the replacement from the extra training.

Accuracy deltas are ``variant - original``. Latency is **paired**: each variant is timed in
``rounds`` alternations with the compiled original (ABBA order), each side's repeats pooled into
one median, so ``latency_delta_ms = latency_ms - reference_latency_ms`` compares two figures taken
under the same machine load. On a shared machine the load drifts by more than the few percent
the activations are worth, so deltas between figures taken minutes apart are mostly noise.
``speedup`` is ``reference_latency_ms / latency_ms``. Each row is appended to the ``operators``
table of the results store as soon as it is measured, so a crash keeps the variants already done.

Untuned TVM (the default build) leaves convolutions unscheduled and slow; they are the same in
every variant, so the latency deltas come from the replaced activations. ``spread_ms`` is the
interquartile range of the pooled repeats: a delta well inside it is not a finding.

Examples
--------
>>> trained = train(TrainConfig(model="efficientnet_b0", in_channels=3))  # doctest: +SKIP
>>> deltas = measure_replacement(trained.model, trained.data)  # doctest: +SKIP
>>> deltas[["variant", "accuracy_delta", "accuracy_finetuned_delta", "latency_delta_ms"]]
... # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from npas_lab import results
from npas_lab.data import DataSplits
from npas_lab.operators.replace import replace_operators, replacement_report
from npas_lab.operators.rules import DEFAULT_RULES, get_rule
from npas_lab.training import evaluate, finetune

if TYPE_CHECKING:  # TVM is imported only when a latency is measured (see _compile)
    from npas_lab.devices import DeviceProfile, MeasureConfig

__all__ = ["DELTA_COLUMNS", "RESULTS_TABLE", "measure_replacement", "replacement_variants"]

#: Results-store table the rows of :func:`measure_replacement` are appended to.
RESULTS_TABLE = "operators"

#: Leading columns of :func:`measure_replacement`, in order.
DELTA_COLUMNS = (
    *("model", "variant", "variant_kind", "rules", "replaced", "replaced_elements"),
    *("accuracy", "accuracy_delta", "accuracy_finetuned", "accuracy_finetuned_delta"),
    *("latency_ms", "spread_ms", "reference_latency_ms", "latency_delta_ms", "speedup"),
    *("device", "engine", "run_id"),
)

ORIGINAL = "original"


def replacement_variants(
    rules: Iterable[str] | str = DEFAULT_RULES, *, per_rule: bool = True
) -> list[tuple[str, str, tuple[str, ...]]]:
    """Return the variants :func:`measure_replacement` measures, as ``(name, kind, rules)``.

    The original first (kind ``"original"``, no rules); then, with ``per_rule``, each rule alone
    (kind ``"rule"``, named after it); then all rules together (kind ``"all"``, named by joining
    the rule names with ``+``), unless that is a single rule already measured alone.

    Raises
    ------
    ValueError
        For an unknown rule name (the message lists the valid ones) or a repeated one.
    """
    names = (rules,) if isinstance(rules, str) else tuple(rules)
    for name in names:
        get_rule(name)
    if len(set(names)) != len(names):
        raise ValueError(f"rules {names} name a rule twice")
    variants = [(ORIGINAL, "original", ())]
    if per_rule:
        variants += [(name, "rule", (name,)) for name in names]
    if names and not (per_rule and len(names) == 1):
        variants.append(("+".join(names), "all", names))
    return variants


def _train_subset(data: DataSplits, samples: int | None, seed: int) -> DataSplits:
    """Return ``data`` with a seeded random subset of ``samples`` training images (all if None)."""
    if samples is None or samples >= len(data.train):
        return data
    if samples < 1:
        raise ValueError(f"finetune_samples={samples} must be >= 1 (or None for all)")
    keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:samples]
    images, labels = data.train.tensors
    return dataclasses.replace(data, train=TensorDataset(images[keep], labels[keep]))


def _compile(
    model: nn.Module, example: torch.Tensor, *, device: str | DeviceProfile, name: str
) -> tuple[Any, float]:
    """Return ``model`` compiled with TVM for ``device`` and the seconds it took."""
    # Imported here: TVM is heavy and only this step needs it (finding and replacing do not).
    from npas_lab.compiler import compile_model

    start = time.perf_counter()
    compiled = compile_model(model, example, device, name=name)
    return compiled, time.perf_counter() - start


def _time(
    compiled: Any,
    example: torch.Tensor,
    *,
    device: str | DeviceProfile,
    config: MeasureConfig | None,
    name: str,
) -> dict[str, Any]:
    """Return one measurement of ``compiled`` (``Measurement.to_dict()``)."""
    from npas_lab.devices import measure

    return measure(
        compiled, example, engine="tvm", device=device, config=config, model_name=name
    ).to_dict()


def _pool(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge measurements of one model: median and interquartile range over all repeats."""
    times = [t for m in measurements for t in m["times_ms"]]
    q25, q50, q75 = np.percentile(times, [25, 50, 75])
    pooled = {"latency_ms": float(q50), "spread_ms": float(q75 - q25), "repeats": len(times)}
    return {**measurements[0], **pooled, "times_ms": times}


def _time_paired(
    compiled: Any, reference: Any | None, example: torch.Tensor, *, rounds: int, **options: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Time ``compiled`` and ``reference`` alternately; return both pooled measurements.

    ABBA order (reference first in even rounds, second in odd ones), so a load that drifts
    steadily weighs on both sides alike. Without a reference, ``compiled`` is its own.
    """
    order = [("variant", compiled)]
    if reference is not None:
        order.insert(0, ("reference", reference))
    runs: dict[str, list[dict[str, Any]]] = {"reference": [], "variant": []}
    for r in range(rounds):
        for side, model in order if r % 2 == 0 else order[::-1]:
            runs[side].append(_time(model, example, **options))
    variant = _pool(runs["variant"])
    return variant, _pool(runs["reference"]) if reference is not None else variant


def _measure_variant(
    model: nn.Module,
    data: DataSplits,
    chosen: tuple[str, ...],
    *,
    tune_data: DataSplits,
    tune: dict[str, Any],
    device: str | DeviceProfile,
    measure_config: MeasureConfig | None,
    model_name: str,
    reference: Any | None,
    rounds: int,
    progress: bool,
) -> tuple[dict[str, Any], Any]:
    """Return the figures of ``model`` with rules ``chosen`` (none: the original), compiled.

    ``reference`` is the compiled original the latency is paired with (None: for the original).
    """
    # The original is copied too: evaluate() and fit() switch modes and train in place.
    if chosen:
        variant = replace_operators(model, rules=chosen, input_shape=data.input_shape)
        report = replacement_report(model, rules=chosen, input_shape=data.input_shape)
        replaced, elements = int(report["count"].sum()), int(report["elements"].sum())
    else:
        variant, replaced, elements = copy.deepcopy(model), 0, 0
    before = evaluate(variant, data)
    example = data.example_input()
    compiled, compile_s = _compile(variant, example, device=device, name=model_name)
    latency, paired = _time_paired(
        compiled,
        reference,
        example,
        rounds=rounds,
        device=device,
        config=measure_config,
        name=model_name,
    )
    after, finetune_s = {"accuracy": math.nan, "loss": math.nan}, 0.0
    if tune["epochs"]:
        start = time.perf_counter()
        finetune(
            variant,
            tune_data,
            epochs=tune["epochs"],
            lr=tune["lr"],
            batch_size=tune["batch_size"],
            seed=tune["seed"],
            progress=progress,
            desc=f"finetune {'+'.join(chosen) or 'original'}",
        )
        finetune_s = time.perf_counter() - start
        after = evaluate(variant, data)
    figures = {
        "rules": list(chosen),
        "replaced": replaced,
        "replaced_elements": elements,
        "accuracy": before["accuracy"],
        "accuracy_finetuned": after["accuracy"],
        "latency_ms": latency["latency_ms"],
        "spread_ms": latency["spread_ms"],
        "reference_latency_ms": paired["latency_ms"],
        "reference_spread_ms": paired["spread_ms"],
        "rounds": rounds,
        "device": latency["device"],
        "engine": latency["engine"],
        "loss": before["loss"],
        "loss_finetuned": after["loss"],
        "compile_s": compile_s,
        "finetune_s": finetune_s,
        "target": latency["target"],
        "dataset": data.name,
        "input_shape": list(data.input_shape),
        "finetune": tune,
        "measurement": latency,
    }
    return figures, compiled


def measure_replacement(
    model: nn.Module,
    data: DataSplits,
    *,
    rules: Iterable[str] | str = DEFAULT_RULES,
    per_rule: bool = True,
    finetune_epochs: int = 1,
    finetune_lr: float = 5e-4,
    finetune_samples: int | None = None,
    batch_size: int = 64,
    device: str | DeviceProfile = "host-cpu",
    measure_config: MeasureConfig | None = None,
    rounds: int = 3,
    model_name: str | None = None,
    run_id: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Measure accuracy and TVM latency of ``model`` before and after replacing its operators.

    Parameters
    ----------
    model : nn.Module
        A trained classifier for ``data``; left untouched (every variant works on a copy).
    data : DataSplits
        Accuracy is on the test split, fine-tuning on the training split; ``data.input_shape``
        (batch 1) is the traced, compiled and timed input.
    rules : iterable of str
        Rule names (see :func:`~npas_lab.operators.list_rules`), default the NPAS ones.
    per_rule : bool
        Also measure each rule alone (see :func:`replacement_variants`); off: only the original
        and all rules together (half the compiles, for quick runs).
    finetune_epochs : int
        Epochs of the short fine-tune of every variant (the original included); 0 skips it
        (``accuracy_finetuned`` is then NaN).
    finetune_lr : float
        Peak learning rate of the fine-tune (one-cycle, AdamW).
    finetune_samples : int, optional
        Fine-tune on a seeded random subset of this many training images (default all).
    batch_size : int
        Batch size of the fine-tune.
    device : str or DeviceProfile
        Device profile or its name (see :func:`npas_lab.devices.list_devices`): what TVM
        compiles for and where it is timed.
    measure_config : npas_lab.devices.MeasureConfig, optional
        The timing protocol of one measurement; default ``MeasureConfig()``.
    rounds : int
        Measurements of each side in the paired timing (variant and original alternately); the
        latency is the median over ``rounds * measure_config.repeat`` repeats.
    model_name : str, optional
        Recorded in the rows; default the class name.
    run_id : str, optional
        Groups the rows in the store; default a new one (in ``df.attrs["run_id"]``).
    seed : int
        Seeds the fine-tune and the choice of its subset.
    progress : bool
        Show progress bars (variants, fine-tune batches).

    Returns
    -------
    pandas.DataFrame
        One row per variant, original first. Columns :data:`DELTA_COLUMNS`, then the details:
        ``reference_spread_ms``, ``rounds``, ``loss``, ``loss_finetuned``, ``compile_s``,
        ``finetune_s``, ``target``, ``dataset``,
        ``input_shape``, ``finetune`` (its settings) and ``measurement`` (the full
        :class:`~npas_lab.devices.Measurement` as a dict). ``replaced`` counts the operator calls
        replaced, ``replaced_elements`` their output elements (the elementwise work moved).

    Raises
    ------
    ValueError
        For an unknown or repeated rule name, a negative ``finetune_epochs`` or ``rounds < 1``;
        raised before anything is measured.
    """
    variants = replacement_variants(rules, per_rule=per_rule)
    if finetune_epochs < 0:
        raise ValueError(f"finetune_epochs={finetune_epochs} must be >= 0")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    tune_data = _train_subset(data, finetune_samples, seed)
    model_name = model_name or type(model).__name__
    run_id = run_id or results.new_run_id()
    tune = {"epochs": finetune_epochs, "lr": finetune_lr, "samples": len(tune_data.train)}
    tune |= {"batch_size": batch_size, "seed": seed}
    rows: list[dict[str, Any]] = []
    reference = None  # the compiled original, once measured
    bar = tqdm(variants, desc="operator variants", disable=not progress, leave=False)
    try:
        for name, kind, chosen in bar:
            bar.set_postfix_str(name)
            row = {"model": model_name, "variant": name, "variant_kind": kind, "run_id": run_id}
            figures, compiled = _measure_variant(
                model,
                data,
                chosen,
                tune_data=tune_data,
                tune=tune,
                device=device,
                measure_config=measure_config,
                model_name=model_name,
                reference=reference,
                rounds=rounds,
                progress=progress,
            )
            row |= figures
            if reference is None:
                reference = compiled
            original = rows[0] if rows else row
            row["accuracy_delta"] = row["accuracy"] - original["accuracy"]
            row["accuracy_finetuned_delta"] = (
                row["accuracy_finetuned"] - original["accuracy_finetuned"]
            )
            row["latency_delta_ms"] = row["latency_ms"] - row["reference_latency_ms"]
            row["speedup"] = row["reference_latency_ms"] / row["latency_ms"]
            results.append(RESULTS_TABLE, row)
            rows.append(row)
    finally:
        bar.close()
    table = pd.DataFrame(rows)
    table = table[list(DELTA_COLUMNS) + [c for c in table.columns if c not in DELTA_COLUMNS]]
    table.attrs["run_id"] = run_id
    return table
