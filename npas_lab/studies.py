"""Studies that cross the pipeline: the block-size study (NPAS Fig. 4), scheme speedups (Fig. 2b).

Each study prunes, compiles and measures through the package's own stages and writes one record
per point to the results store as soon as it is measured, so a crash keeps every finished point
and a rerun with the same ``run_id`` measures only what is missing.

``block_size_study``
    Uniform block-punched pruning of one model at one rate for a list of block sizes, from 1x1
    (unstructured) to the whole layer (structured, i.e. column pruning): each pruned with one
    algorithm, fine-tuned, compiled with the block-punched kernels, measured on a device.
``measure_scheme_speedups``
    A small Fig. 2b grid on one layer shape: every scheme's kernel against the dense kernel of
    the same shape, timed side by side. ``benchmarks/schemes.py`` is the full version (tuned
    kernels, three shapes, 1x1 convs); :func:`scheme_speedups` reads its records.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from npas_lab import results
from npas_lab.data import DataSplits

__all__ = [
    "BLOCK_SIZES",
    "BLOCK_TABLE",
    "SPEEDUP_TABLE",
    "WHOLE_LAYER",
    "block_label",
    "block_size_study",
    "measure_scheme_speedups",
    "remeasure_block_sizes",
    "scheme_speedups",
]

#: Stands for "one block spanning the whole layer" (clipped to each layer's shape by the plan).
WHOLE_LAYER = (1 << 20, 1 << 20)
#: The paper's sweep, from unstructured (1x1) to structured (whole layer).
BLOCK_SIZES: tuple[tuple[int, int], ...] = (
    (1, 1),
    (4, 4),
    (8, 4),
    (16, 4),
    (8, 8),
    (16, 16),
    WHOLE_LAYER,
)
BLOCK_TABLE = "studies/block_size"
SPEEDUP_TABLE = "benchmarks/schemes"


def block_label(block: Sequence[int] | str) -> str:
    """Return ``"8x4"``, ``"whole layer"`` (for :data:`WHOLE_LAYER`) or the string given."""
    if isinstance(block, str):
        return block
    block = tuple(int(b) for b in block)
    return "whole layer" if block == WHOLE_LAYER else f"{block[0]}x{block[1]}"


def _check_blocks(blocks: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    checked = []
    for block in blocks:
        pair = tuple(block) if not isinstance(block, str) else ()
        if len(pair) != 2 or not all(isinstance(b, int) and b >= 1 for b in pair):
            raise ValueError(
                f"blocks: {block!r} is not a pair of positive ints (filters, channels); "
                "e.g. (8, 4), or WHOLE_LAYER for one block per layer"
            )
        checked.append(pair)
    return checked


def _measure_compiled(
    model: nn.Module, plan, x: torch.Tensor, device: str, kernel_tune: int, config
) -> tuple[dict[str, Any], float]:
    from npas_lab.compiler import compile_model, load_artifact, save_artifact
    from npas_lab.devices import get_device, get_engine, measure

    start = time.perf_counter()
    compiled = compile_model(model, x, device, plan=plan, kernel_tune=kernel_tune, progress=False)
    compile_s = time.perf_counter() - start
    profile = get_device(device)
    # Saved so the points can be measured again side by side later (remeasure_block_sizes);
    # on a local device the saved library is what is measured, so the module is not built twice
    # (once for the file, once more for an in-memory VM).
    artifact = save_artifact(compiled)
    runnable = load_artifact(artifact) if profile.reach == "local" else compiled
    with get_engine("tvm").prepare(runnable, x, device=profile) as runner:
        m = measure(runner, x, config=config)
    return {**m.to_dict(), "artifact": artifact.name}, compile_s


def block_size_study(
    model: nn.Module,
    data: DataSplits,
    *,
    rate: float = 6.0,
    blocks: Sequence[Sequence[int]] = BLOCK_SIZES,
    algorithm: str = "oneshot",
    epochs: int = 2,
    lr: float = 1e-3,
    device: str = "host-cpu",
    kernel_tune: int = 0,
    measure_config: Any = None,
    run_id: str | None = None,
    model_name: str | None = None,
    progress: bool = True,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Prune ``model`` uniformly with block-punched pruning at each block size; measure each.

    Parameters
    ----------
    model
        A trained model (not modified). Every conv but the first is pruned (``uniform_plan``).
    data
        Splits for fine-tuning (train), model selection (val) and the reported accuracy (test).
    rate
        Pruning rate of every pruned layer (6.0 = keep 1/6 of the weights).
    blocks
        ``(filters, channels)`` block sizes; :data:`WHOLE_LAYER` for one block per layer.
    algorithm, epochs, lr
        How each point is pruned and fine-tuned (:func:`npas_lab.pruning.prune`).
    device, kernel_tune, measure_config
        Where and how latency is measured (:func:`npas_lab.compiler.compile_model`,
        :func:`npas_lab.devices.measure`).
    run_id
        Records go to ``results/studies/block_size.jsonl`` under this id; points already
        recorded under it are reused, not recomputed (resume after a crash).
    model_name
        Written into the records; default the class name.
    progress
        A bar over the points (and the pruning bars).
    on_point
        Called with each row as soon as it is measured (e.g. to update a live figure).

    Returns
    -------
    pandas.DataFrame
        One row per block size plus a ``dense`` row: ``block``, ``bf``, ``bc``, ``rate``,
        ``accuracy`` (test), ``val_accuracy``, ``latency_ms``, ``spread_ms``, ``prune_s``,
        ``compile_s``.

    Raises
    ------
    ValueError
        A block that is not a pair of positive ints, or a rate below 1.
    """
    from npas_lab.pruning import prune
    from npas_lab.sparsity import uniform_plan
    from npas_lab.training import evaluate

    checked = _check_blocks(blocks)
    if not rate >= 1.0:
        raise ValueError(f"rate={rate!r}: a pruning rate is >= 1 (6.0 keeps 1/6 of the weights)")
    run_id = run_id or results.new_run_id()
    model_name = model_name or type(model).__name__
    done = {
        r["block"]: r
        for r in results.iter_records(BLOCK_TABLE)
        if r.get("run_id") == run_id and r.get("rate") == rate
    }
    x = data.example_input()
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        if row["block"] not in done:
            results.append(BLOCK_TABLE, {"run_id": run_id, "model": model_name, **row})
        rows.append(row)
        if on_point is not None:
            on_point(row)

    labels = ["dense", *(block_label(b) for b in checked)]
    bar = tqdm(labels, desc=f"block sizes @{rate:g}x", disable=not progress)
    for label, block in zip(bar, [None, *checked], strict=True):
        bar.set_postfix(block=label)
        if label in done:
            emit(done[label])
            continue
        if block is None:
            measured, compile_s = _measure_compiled(
                model, None, x, device, kernel_tune, measure_config
            )
            accuracy = evaluate(model.eval(), data, split="test")["accuracy"]
            val = evaluate(model, data, split="val")["accuracy"]
            row = {"block": "dense", "bf": None, "bc": None, "rate": rate, "prune_s": 0.0}
        else:
            plan = uniform_plan(model, "block_punched", rate, block=block)
            start = time.perf_counter()
            result = prune(
                model,
                plan,
                data,
                algorithm=algorithm,
                epochs=epochs,
                lr=lr,
                progress=progress,
                run_id=f"{run_id}-{label.replace(' ', '_')}",
                stage="block_size_study",
            )
            prune_s = time.perf_counter() - start
            measured, compile_s = _measure_compiled(
                result.model, plan, x, device, kernel_tune, measure_config
            )
            accuracy, val = result.test_accuracy, result.val_accuracy
            row = {"block": label, "bf": block[0], "bc": block[1], "rate": rate}
            row["prune_s"] = prune_s
            row["achieved_rate"] = result.history[-1]["rate"] if result.history else None
        row.update(
            {
                "accuracy": accuracy,
                "val_accuracy": val,
                "latency_ms": measured["latency_ms"],
                "spread_ms": measured["spread_ms"],
                "artifact": measured["artifact"],
                "compile_s": compile_s,
                "algorithm": algorithm,
                "epochs": epochs,
                "kernel_tune": kernel_tune,
                "device": device,
            }
        )
        emit(row)
    bar.close()
    return pd.DataFrame(rows)


def remeasure_block_sizes(
    run_id: str,
    *,
    rounds: int = 5,
    measure_config: Any = None,
    device: str = "host-cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Measure the compiled points of a block-size run again, side by side, without recompiling.

    Latency in :func:`block_size_study` is measured right after each point is trained, minutes
    apart: on a shared machine the points see different loads. This loads every point's saved
    artifact and measures them in ``rounds`` interleaved rounds (each round measures every point
    once, in turn), so all points share the machine's conditions; the median over rounds is the
    figure. Rows go to ``results/studies/block_size_latency.jsonl``.

    Returns
    -------
    pandas.DataFrame
        ``block, accuracy, latency_ms (median over rounds), spread_ms (IQR over rounds),
        speedup`` (dense latency / this one), one row per point of the run.
    """
    from npas_lab.compiler import load_artifact
    from npas_lab.devices import get_device, get_engine, measure

    points = {r["block"]: r for r in results.iter_records(BLOCK_TABLE) if r.get("run_id") == run_id}
    if not points:
        raise ValueError(f"no block-size points recorded under run_id={run_id!r}")
    missing = [b for b, r in points.items() if not r.get("artifact")]
    if missing:
        raise ValueError(f"run {run_id!r}: points {missing} have no saved artifact to measure")
    profile = get_device(device)
    loaded = {b: load_artifact(r["artifact"]) for b, r in points.items()}
    samples: dict[str, list[float]] = {b: [] for b in points}
    x = {b: torch.randn(m.input_shape) for b, m in loaded.items()}
    engine = get_engine("tvm")
    with contextlib.ExitStack() as stack:
        runners = {
            b: stack.enter_context(engine.prepare(m, x[b], device=profile))
            for b, m in loaded.items()
        }
        for _ in tqdm(range(rounds), desc="interleaved rounds", disable=not progress):
            for block, runner in runners.items():
                samples[block].append(measure(runner, x[block], config=measure_config).latency_ms)
    dense_ms = float(np.median(samples["dense"])) if "dense" in samples else float("nan")
    rows = []
    remeasure_id = results.new_run_id()
    for block, point in points.items():
        values = np.asarray(samples[block])
        row = {
            "block": block,
            "accuracy": point["accuracy"],
            "latency_ms": float(np.median(values)),
            "spread_ms": float(np.subtract(*np.percentile(values, [75, 25]))),
            "speedup": dense_ms / float(np.median(values)),
        }
        results.append(
            "studies/block_size_latency",
            {"run_id": run_id, "remeasure_id": remeasure_id, "rounds": rounds, **row},
        )
        rows.append(row)
    return pd.DataFrame(rows)


#: (label, scheme, block, mask options) of :func:`measure_scheme_speedups`.
SPEEDUP_SCHEMES = (
    ("unstructured", "unstructured", None, {}),
    ("pattern", "pattern", None, {}),
    ("bp 4x4", "block_punched", (4, 4), {}),
    ("bp 8x4", "block_punched", (8, 4), {}),
    ("bp 16x4", "block_punched", (16, 4), {}),
    ("filter", "filter", None, {}),
    ("channel", "channel", None, {}),
)


def measure_scheme_speedups(
    *,
    channels: int = 64,
    size: int = 16,
    kernel: int = 3,
    rates: Sequence[float] = (2.0, 4.0, 6.0, 10.0),
    schemes: Sequence[tuple] = SPEEDUP_SCHEMES,
    rounds: int = 5,
    record: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Time every scheme's kernel (default configuration) against the dense kernel, one shape.

    A quick, untuned Fig. 2b for notebooks; ``filter``/``channel`` are the dense kernel of the
    layer with ``F / rate`` filters or ``C / rate`` input channels (what compilation makes of
    them). Kernels are timed side by side in interleaved rounds (ratios survive a noisy
    machine). Rows go to ``results/benchmarks/schemes.jsonl`` with ``source="notebook"``.

    Returns
    -------
    pandas.DataFrame
        Columns ``shape, label, scheme, rate, latency_ms, dense_ms, speedup``.
    """
    from npas_lab.compiler.kernels import ConvSpec, build_kernel, conv_kernel
    from npas_lab.compiler.kernels.runtime import kernel_args, time_interleaved
    from npas_lab.sparsity import compute_mask

    pad = kernel // 2
    spec = ConvSpec(channels, channels, kernel, 1, pad, input_hw=size)
    weight = torch.randn(spec.weight_shape, generator=torch.Generator().manual_seed(channels))

    def runnable(k):
        data = np.random.default_rng(0).standard_normal(k.spec.in_shape).astype(np.float32)
        return build_kernel(k), kernel_args(k, data)

    runs = {"dense": runnable(conv_kernel(spec, weight.numpy(), "dense"))}
    meta = {}
    points = [(s, r) for s in schemes for r in rates if not (s[1] == "pattern" and r < 2.25)]
    for (label, scheme, block, opts), rate in tqdm(
        points, desc="building kernels", disable=not progress, leave=False
    ):
        if scheme in ("filter", "channel"):
            change = "out_channels" if scheme == "filter" else "in_channels"
            small = spec.with_(**{change: max(1, round(channels / rate))})
            w = weight[: small.out_channels, : small.in_channels].numpy().copy()
            k = conv_kernel(small, w, "dense")
        else:
            mask = compute_mask(weight, scheme, rate, block=block, **opts)
            k = conv_kernel(spec, (weight * mask).numpy(), scheme, block=block)
        name = f"{label} @{rate:g}"
        runs[name] = runnable(k)
        meta[name] = {"label": label, "scheme": scheme, "rate": rate}
    timings = time_interleaved(runs, rounds=rounds, min_repeat_ms=2.0)
    dense_ms = timings["dense"].min_ms
    shape = f"{channels}@{size}x{size} {kernel}x{kernel}"
    rows = [
        {
            "shape": shape,
            **info,
            "latency_ms": timings[name].min_ms,
            "dense_ms": dense_ms,
            "speedup": dense_ms / timings[name].min_ms,
        }
        for name, info in meta.items()
    ]
    if record:
        run_id = results.new_run_id()
        for row in rows:
            results.append(
                SPEEDUP_TABLE, {"figure": "2b", "source": "notebook", "run_id": run_id, **row}
            )
    return pd.DataFrame(rows)


def scheme_speedups(*, source: str | None = "benchmark") -> pd.DataFrame:
    """Return the Fig. 2b records of the latest run in the results store (empty if none).

    Parameters
    ----------
    source
        ``"benchmark"``: rows of ``benchmarks/schemes.py``; ``"notebook"``: rows of
        :func:`measure_scheme_speedups`; None: both, latest run of each shape.
    """
    rows = [r for r in results.iter_records(SPEEDUP_TABLE) if r.get("figure") == "2b"]
    if source is not None:
        rows = [r for r in rows if r.get("source", "benchmark") == source]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if "run_id" in df:
        latest = df.groupby("shape")["run_id"].transform("max")
        df = df[df["run_id"].isna() | (df["run_id"] == latest)]
    return df[df["scheme"] != "dense"].reset_index(drop=True)
