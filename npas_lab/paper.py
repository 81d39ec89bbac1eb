"""The paper's figures and tables, built from the results store (NPAS Fig. 2a, 2b, 4, 7, Table 1).

Every builder reads records other stages wrote and returns a plotly figure (house style of
:mod:`npas_lab.plotting`) or a pandas DataFrame; none measures anything. A builder whose records
are missing returns an empty figure that says which notebook or benchmark writes them, so a
report on a fresh store still renders.

=========  ==========================================================  ============================
builder    draws                                                       records from
=========  ==========================================================  ============================
fig2a      latency vs MACs per filter type (one conv layer)            ``benchmarks/schemes.py``
fig2b      speedup vs pruning rate per scheme                          ``benchmarks/schemes.py``,
                                                                       notebook 01
fig4       accuracy vs latency per block size                          notebook 01
fig7       accuracy vs latency: NPAS search vs the dense zoo, per      notebook 03 (search),
           engine                                                      :func:`measure_zoo`
table1     top-1, MACs, params, latency per engine                     the same
=========  ==========================================================  ============================

:func:`measure_zoo` is the one function here that measures: the dense zoo (MobileNet-V3,
EfficientNet-B0 and its 70 %/50 % versions, ResNet-18), trained on the same data, timed on every
engine side by side in one run (``benchmarks/paper_engines.py`` and notebook 06 call it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from npas_lab import results
from npas_lab.plotting import (
    COLORS,
    block_size_figure,
    color,
    scheme_speedup_figure,
    style,
)

__all__ = [
    "DENSE_ZOO",
    "ZOO_ENGINES",
    "ZOO_TABLE",
    "dominance",
    "fig2a",
    "fig2b",
    "fig4",
    "fig7",
    "load_zoo",
    "measure_zoo",
    "npas_points",
    "recalibrate_batchnorm",
    "table1",
]

#: Results-store table of :func:`measure_zoo`: one record per (run, model, engine).
ZOO_TABLE = "paper/zoo"
#: The dense models of NPAS Fig. 7 / Table 1 (ResNet-18 as the hand-made reference).
DENSE_ZOO = (
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b0_70",
    "efficientnet_b0_50",
    "resnet18",
)
#: Engines of Fig. 7, ours first (the paper: MNN, PyTorch Mobile, TFLite).
ZOO_ENGINES = ("tvm", "onnxruntime", "mnn", "pytorch")
_ENGINE_TITLES = {"tvm": "TVM (ours)", "onnxruntime": "ONNX Runtime", "mnn": "MNN"}
_ENGINE_TITLES["pytorch"] = "PyTorch"
# Fig. 2a has no house colour per filter type: borrow fixed ones from the palette.
_FILTER_COLORS = {
    "1x1": COLORS["tvm"],
    "3x3": COLORS["block_punched"],
    "5x5": COLORS["block"],
    "3x3 depthwise": COLORS["mnn"],
    "5x5 depthwise": COLORS["unstructured"],
}


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font_size=15
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return style(fig, title=title)


def _latest_run(df: pd.DataFrame) -> pd.DataFrame:
    # Run ids are time-ordered (results.new_run_id); the latest complete run is the figure.
    if df.empty or "run_id" not in df:
        return df
    return df[df["run_id"] == df["run_id"].dropna().max()]


# ------------------------------------------------------------------------ Fig. 2a / 2b / 4
def fig2a(*, run_id: str | None = None) -> go.Figure:
    """NPAS Fig. 2a: latency against MACs for each filter type (1x1, 3x3, 5x5, depthwise).

    Reads the ``figure="2a"`` rows of ``benchmarks/schemes`` (``python benchmarks/schemes.py
    --figures 2a``): TVM with the project's kernels (solid) and PyTorch (dotted).

    Parameters
    ----------
    run_id
        The benchmark run; default the latest.
    """
    title = "Latency vs MACs per filter type (NPAS Fig. 2a)"
    df = pd.DataFrame(
        [r for r in results.iter_records("benchmarks/schemes") if r.get("figure") == "2a"]
    )
    if not df.empty and run_id is not None:
        df = df[df["run_id"] == run_id]
    df = _latest_run(df)
    if df.empty:
        return _empty(
            title, "no Fig. 2a records yet: run python benchmarks/schemes.py --figures 2a"
        )
    fig = go.Figure()
    for filter_type, rows in df.groupby("filter_type", sort=False):
        rows = rows.sort_values("macs")
        hue = _FILTER_COLORS.get(str(filter_type), color(str(filter_type)))
        fig.add_scatter(
            x=rows["macs"] / 1e6,
            y=rows["latency_ms"],
            name=f"{filter_type} (TVM)",
            mode="lines+markers",
            line=dict(color=hue),
            legendgroup=str(filter_type),
        )
        if "torch_ms" in rows:
            fig.add_scatter(
                x=rows["macs"] / 1e6,
                y=rows["torch_ms"],
                name=f"{filter_type} (PyTorch)",
                mode="lines+markers",
                line=dict(color=hue, dash="dot"),
                marker=dict(symbol="circle-open"),
                legendgroup=str(filter_type),
            )
    return style(fig, title=title, x="MACs (millions)", y="latency (ms)")


def fig2b(*, source: str | None = None) -> go.Figure:
    """NPAS Fig. 2b: speedup over the dense kernel against pruning rate, per scheme.

    Parameters
    ----------
    source
        ``"benchmark"`` (``benchmarks/schemes.py``), ``"notebook"`` (notebook 01's small grid) or
        None (latest of either, per layer shape).
    """
    from npas_lab.studies import scheme_speedups

    df = scheme_speedups(source=source)
    if df.empty:
        return _empty(
            "Speedup vs pruning rate per scheme (NPAS Fig. 2b)",
            "no Fig. 2b records yet: run notebook 01 or python benchmarks/schemes.py",
        )
    return scheme_speedup_figure(df)


def fig4(*, run_id: str | None = None) -> go.Figure:
    """NPAS Fig. 4: accuracy against latency per block size, from notebook 01's study.

    Parameters
    ----------
    run_id
        The study run (``studies/block_size``); default the latest.
    """
    from npas_lab.studies import BLOCK_TABLE

    df = results.load(BLOCK_TABLE)
    if not df.empty and run_id is not None:
        df = df[df["run_id"] == run_id]
    df = _latest_run(df)
    if df.empty:
        return _empty(
            "Block size: accuracy vs latency (NPAS Fig. 4)",
            "no block-size records yet: run notebook 01",
        )
    model = df["model"].iloc[0] if "model" in df else "model"
    rate = df["rate"].iloc[0] if "rate" in df else float("nan")
    return block_size_figure(
        df, title=f"{model} at {rate:g}x: accuracy vs latency per block size (NPAS Fig. 4)"
    )


# ----------------------------------------------------------------------- the dense zoo
def recalibrate_batchnorm(model: Any, data: Any, *, batches: int = 8, batch_size: int = 128) -> Any:
    """Return a copy of ``model`` whose batch-norm statistics are recomputed on training data.

    torchvision's MobileNet-V3 and EfficientNet use batch-norm momentum 0.01: after the ~100
    optimizer steps of a few epochs on digits their running statistics are still mostly the
    initial ones, and in eval mode the models score chance (10 %) while training accuracy is
    80-95 % (measured). Recomputing the statistics as a cumulative average over training batches
    -- what Once-for-All does for every sub-network it evaluates -- gives the accuracy the weights
    have. The weights are not changed; nor is the latency.

    Parameters
    ----------
    model : nn.Module
        Not modified.
    data : DataSplits
        Its ``train`` split is used (no labels, no gradients).
    batches, batch_size
        How much training data passes through the copy.
    """
    import copy

    import torch
    from torch import nn

    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for n, (images, _) in enumerate(data.loader("train", batch_size=batch_size)):
            if n == batches:
                break
            model(images)
    return model.eval()


def measure_zoo(
    models: Sequence[str] = DENSE_ZOO,
    *,
    base: Any = None,
    engines: Sequence[str] = ZOO_ENGINES,
    device: Any = "host-cpu",
    measure_config: Any = None,
    tvm_options: dict[str, Any] | None = None,
    run_id: str | None = None,
    tag: str = "paper",
    recalibrate: bool = True,
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Train (or load) each dense model and time it on every engine, side by side; record it.

    Each model is trained like ``base`` (the checkpoint cache makes a rerun load it), its test
    and validation accuracy, MACs and parameters are computed, and every engine times it with
    the same input, protocol and threads (:func:`~npas_lab.devices.compare_engines`). An engine
    that cannot run a model gives a ``status="failed"`` row with the reason. One record per
    (model, engine) goes to :data:`ZOO_TABLE` as soon as it is measured, with the load average;
    rerunning with the same ``run_id`` measures only what is missing.

    Parameters
    ----------
    models
        Registry names.
    base : TrainConfig, optional
        Dataset, image size, channels, epochs; only ``model`` changes. Default digits at 16x16,
        3 channels, 4 epochs.
    engines
        Engine names; ``"tvm"`` is :func:`~npas_lab.compiler.compile_model` with
        ``tvm_options``.
    device : str or DeviceProfile
        A local device (the peer engines run only in process), e.g. a ``host-cpu`` copy with
        fewer threads.
    measure_config : MeasureConfig, optional
        Default ``MeasureConfig(repeat=10, min_repeat_ms=50)``.
    tvm_options
        Keyword options of the TVM engine (e.g. ``{"kernel_tune": 8}``).
    run_id
        Records are grouped (and resumed) under it; default a fresh id.
    recalibrate
        Recompute batch-norm statistics on the training split before evaluating and timing
        (:func:`recalibrate_batchnorm`); the accuracy as trained stays in ``trained_accuracy``.
    tag
        Recorded with each row; :func:`load_zoo` reads ``"paper"`` runs by default, so a smoke
        run (``tag="smoke"``) never becomes the paper's table.
    progress
        Called with one line per step (e.g. ``print``).

    Returns
    -------
    pandas.DataFrame
        The run's records: ``model, engine, status, error, latency_ms, spread_ms, accuracy,
        val_accuracy, macs, params, ...``.
    """
    from npas_lab.devices import MeasureConfig, compare_engines, get_engine
    from npas_lab.models import layer_table
    from npas_lab.training import TrainConfig, evaluate, train

    base = base or TrainConfig(image_size=16, in_channels=3, epochs=4)
    measure_config = measure_config or MeasureConfig(repeat=10, min_repeat_ms=50.0)
    run_id = run_id or results.new_run_id()
    say = progress or (lambda message: None)
    done = {
        (r["model"], r["engine"])
        for r in results.iter_records(ZOO_TABLE)
        if r.get("run_id") == run_id
    }
    for name in models:
        missing = [e for e in engines if (name, e) not in done]
        if not missing:
            say(f"[zoo] {name}: recorded in run {run_id}, skipped")
            continue
        config = TrainConfig(**{**base.to_dict(), "model": name})
        start = time.perf_counter()
        trained = train(config, progress=False)
        how = "cached" if trained.from_cache else f"trained in {time.perf_counter() - start:.0f} s"
        x = trained.data.example_input()
        model = recalibrate_batchnorm(trained.model, trained.data) if recalibrate else trained.model
        test = evaluate(model, trained.data, split="test")["accuracy"]
        val = evaluate(model, trained.data, split="val")["accuracy"]
        layers = layer_table(model, trained.data.input_shape)
        say(
            f"[zoo] {name}: test accuracy {test:.4f} (as trained {trained.test_accuracy:.4f}; "
            f"{how})"
        )
        chosen = [get_engine(e, **(tvm_options or {})) if e == "tvm" else e for e in missing]
        table = compare_engines(
            model,
            x,
            model_name=name,
            engines=chosen,
            device=device,
            config=measure_config,
            progress=say,
            record=False,
        )
        for row in table.to_dict("records"):
            results.append(
                ZOO_TABLE,
                {
                    "run_id": run_id,
                    "tag": tag,
                    **row,
                    "accuracy": test,
                    "val_accuracy": val,
                    "trained_accuracy": trained.test_accuracy,
                    "bn_recalibrated": recalibrate,
                    "macs": int(layers["macs"].sum()),
                    "params": int(sum(p.numel() for p in model.parameters())),
                    "dataset": config.dataset,
                    "image_size": config.image_size,
                    "in_channels": config.in_channels,
                    "config_key": config.key(),
                    "train_config": config.to_dict(),
                    "tvm_options": dict(tvm_options or {}),
                    "loadavg_1m": os.getloadavg()[0],
                },
            )
    return load_zoo(run_id=run_id)


def load_zoo(
    *, run_id: str | None = None, dataset: str | None = None, tag: str = "paper"
) -> pd.DataFrame:
    """Return the dense-zoo records of one run (default: the latest), one row per model/engine.

    Parameters
    ----------
    run_id
        A :func:`measure_zoo` run (then ``dataset`` and ``tag`` are ignored).
    dataset
        Only runs on this dataset.
    tag
        Only runs recorded with this tag (``"paper"``; ``"smoke"`` for test runs).
    """
    df = results.load(ZOO_TABLE)
    if df.empty:
        return df
    if run_id is not None:
        return df[df["run_id"] == run_id].reset_index(drop=True)
    df = df[df.get("tag", pd.Series("paper", index=df.index)).fillna("paper") == tag]
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    return _latest_run(df).reset_index(drop=True)


# ------------------------------------------------------------------ NPAS search results
def npas_points(*, dataset: str | None = None) -> pd.DataFrame:
    """Return every successful search evaluation with its run's model, dataset and input.

    Columns: ``run_id, algorithm, step, accuracy`` (validation, after the fast fine-tune),
    ``latency_ms`` (TVM, measured), ``reward, plan, model, dataset, input_shape``. Empty when
    no search has been recorded (notebook 03 writes them) or the search package is absent.

    Parameters
    ----------
    dataset
        Only searches on this dataset.
    """
    try:
        from npas_lab.search import RUNS_TABLE
    except ImportError:  # the search package is optional for the figures
        return pd.DataFrame()
    starts, rows = {}, []
    for record in results.iter_records(RUNS_TABLE):
        if record.get("kind") == "start":
            starts.setdefault(record.get("run_id"), record.get("evaluator", {}))
        elif record.get("kind") == "evaluation" and record.get("status") in ("ok", "cached"):
            rows.append(record)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame.from_records(rows).drop(columns=["env"], errors="ignore")
    info = df["run_id"].map(lambda r: starts.get(r, {}))
    df["model"] = info.map(lambda e: e.get("model"))
    df["dataset"] = info.map(lambda e: e.get("dataset"))
    df["input_shape"] = info.map(lambda e: "x".join(map(str, e.get("input_shape", []))))
    df = df.dropna(subset=["latency_ms", "accuracy"])
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    return df.reset_index(drop=True)


def _front(df: pd.DataFrame) -> pd.DataFrame:
    from npas_lab.search import pareto_front

    return pareto_front(df)


def dominance(
    npas: pd.DataFrame | None = None, zoo: pd.DataFrame | None = None, *, engine: str = "tvm"
) -> pd.DataFrame:
    """Say, for each dense model, whether an NPAS result Pareto-dominates it.

    A point dominates another when its latency is not higher and its accuracy not lower, and
    one of the two strictly. Both sides use validation accuracy and ``engine`` latency.

    Parameters
    ----------
    npas
        From :func:`npas_points` (default: all of them).
    zoo
        From :func:`load_zoo` (default: the latest run).
    engine
        Which engine's latency of the dense models to compare with (the search measures TVM).

    Returns
    -------
    pandas.DataFrame
        ``model, accuracy, latency_ms, dominated, by_run, by_step, by_accuracy,
        by_latency_ms, by_model, by_input`` (the dominating search's base model and input).
    """
    npas = npas_points() if npas is None else npas
    zoo = load_zoo() if zoo is None else zoo
    columns = ["model", "accuracy", "latency_ms", "dominated", "by_run", "by_step"]
    columns += ["by_accuracy", "by_latency_ms", "by_model", "by_input"]
    if zoo.empty:
        return pd.DataFrame(columns=columns)
    dense = zoo[(zoo["engine"] == engine) & (zoo["status"] == "ok")]
    rows = []
    for _, d in dense.iterrows():
        acc = d.get("val_accuracy", d["accuracy"])
        best = pd.DataFrame()
        if len(npas):
            better = npas[
                (npas["latency_ms"] <= d["latency_ms"])
                & (npas["accuracy"] >= acc)
                & ((npas["latency_ms"] < d["latency_ms"]) | (npas["accuracy"] > acc))
            ]
            best = better.sort_values("accuracy", ascending=False).head(1)
        rows.append(
            {
                "model": d["model"],
                "accuracy": acc,
                "latency_ms": d["latency_ms"],
                "dominated": bool(len(best)),
                "by_run": best["run_id"].iloc[0] if len(best) else None,
                "by_step": int(best["step"].iloc[0]) if len(best) else None,
                "by_accuracy": best["accuracy"].iloc[0] if len(best) else None,
                "by_latency_ms": best["latency_ms"].iloc[0] if len(best) else None,
                # the searched base model and input: a comparison is like for like only when
                # they are the dense model's own
                "by_model": best["model"].iloc[0] if len(best) and "model" in best else None,
                "by_input": (
                    best["input_shape"].iloc[0] if len(best) and "input_shape" in best else None
                ),
            }
        )
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------ Fig. 7 / Table 1
def fig7(*, run_id: str | None = None, dataset: str | None = None) -> go.Figure:
    """NPAS Fig. 7: accuracy vs latency of NPAS search results against the dense zoo per engine.

    The dense models are drawn once per engine (colour: engine; hover: model); NPAS candidates
    are grey dots with their Pareto front in the NPAS colour (TVM latency: the search measures
    what it compiles). Accuracy is validation accuracy on both sides (the search's fast
    evaluation reports no test accuracy).

    Parameters
    ----------
    run_id
        The :func:`measure_zoo` run; default the latest (on ``dataset`` if given).
    dataset
        Restrict both sides to one dataset; default the zoo run's dataset.
    """
    title = "Accuracy vs latency: NPAS vs dense models per engine (NPAS Fig. 7)"
    zoo = load_zoo(run_id=run_id, dataset=dataset)
    if dataset is None and not zoo.empty:
        dataset = str(zoo["dataset"].iloc[0])
    npas = npas_points(dataset=dataset)
    if zoo.empty and npas.empty:
        return _empty(
            title,
            "no records yet: run python benchmarks/paper_engines.py (dense zoo) "
            "and notebook 03 (search)",
        )
    fig = go.Figure()
    ok = zoo[zoo["status"] == "ok"] if not zoo.empty else zoo
    for engine in ZOO_ENGINES:
        rows = ok[ok["engine"] == engine].sort_values("latency_ms") if len(ok) else ok
        if rows.empty:
            continue
        fig.add_scatter(
            x=rows["latency_ms"],
            y=rows["val_accuracy"],
            name=_ENGINE_TITLES.get(engine, engine),
            mode="markers",
            marker=dict(size=10, symbol="diamond", color=color(engine)),
            text=rows["model"],
            hovertemplate="%{text}<br>%{x:.3f} ms<br>accuracy %{y:.4f}<extra>"
            + engine
            + "</extra>",
        )
    if not npas.empty:
        fig.add_scatter(
            x=npas["latency_ms"],
            y=npas["accuracy"],
            name="NPAS candidates (TVM)",
            mode="markers",
            marker=dict(size=6, color="#bbbbbb"),
            text=npas["model"] + " " + npas["input_shape"],
            hovertemplate="%{text}<br>%{x:.3f} ms<br>accuracy %{y:.4f}<extra>npas</extra>",
        )
        front = _front(npas)
        fig.add_scatter(
            x=front["latency_ms"],
            y=front["accuracy"],
            name="NPAS Pareto front (TVM)",
            mode="lines+markers",
            line=dict(color=color("npas"), shape="hv", width=2.5),
            marker=dict(size=9, symbol="star", color=color("npas")),
        )
    else:
        fig.add_annotation(
            text="no search records yet: run notebook 03",
            x=0.98,
            y=0.02,
            xref="paper",
            yref="paper",
            xanchor="right",
            showarrow=False,
        )
    fig.update_xaxes(type="log")
    subtitle = f" — {dataset}" if dataset else ""
    return style(
        fig,
        title=title + subtitle,
        x="latency (ms, batch 1, log scale)",
        y="validation accuracy",
    )


def table1(
    *, run_id: str | None = None, dataset: str | None = None, npas_top: int = 3
) -> pd.DataFrame:
    """NPAS Table 1: top-1, MACs, params and latency per engine of the dense zoo and NPAS.

    Parameters
    ----------
    run_id, dataset
        The :func:`measure_zoo` run (default the latest, on ``dataset`` if given).
    npas_top
        NPAS rows to add: the highest-reward evaluations of the search (TVM latency only).

    Returns
    -------
    pandas.DataFrame
        One row per model: ``model, source, top1, top1_split, macs_m, params_m`` and one
        ``<engine>_ms`` column per engine (a failed engine: NaN, its reason in ``notes``), then
        ``tvm_speedup_vs_<engine>`` ratios (peer latency / TVM latency; > 1: TVM is faster).
    """
    zoo = load_zoo(run_id=run_id, dataset=dataset)
    rows: list[dict[str, Any]] = []
    for model, group in zoo.groupby("model", sort=False) if len(zoo) else []:
        first = group.iloc[0]
        row = {
            "model": model,
            "source": "dense zoo",
            "top1": first["accuracy"],
            "top1_split": "test",
            "macs_m": first["macs"] / 1e6,
            "params_m": first["params"] / 1e6,
        }
        notes = []
        for _, r in group.iterrows():
            ok = r["status"] == "ok"
            row[f"{r['engine']}_ms"] = r["latency_ms"] if ok else float("nan")
            if not ok:
                notes.append(f"{r['engine']}: {r['error']}")
        row["notes"] = "; ".join(notes)
        rows.append(row)
    if dataset is None and len(zoo):
        dataset = str(zoo["dataset"].iloc[0])
    npas = npas_points(dataset=dataset)
    if len(npas) and npas_top > 0:
        best = npas.dropna(subset=["reward"]).sort_values("reward", ascending=False)
        for _, r in best.drop_duplicates("plan_key").head(npas_top).iterrows():
            rows.append(
                {
                    "model": f"NPAS {r['model']} step {r['step']}",
                    "source": f"search {r['run_id']}",
                    "top1": r["accuracy"],
                    "top1_split": "val",
                    "macs_m": _plan_macs(r) / 1e6,
                    "params_m": float("nan"),
                    "tvm_ms": r["latency_ms"],
                    "notes": f"{r['algorithm']}, input {r['input_shape']}",
                }
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for engine in ZOO_ENGINES:
        if f"{engine}_ms" not in table:
            table[f"{engine}_ms"] = float("nan")
    for engine in ZOO_ENGINES[1:]:
        table[f"tvm_speedup_vs_{engine}"] = table[f"{engine}_ms"] / table["tvm_ms"]
    lead = ["model", "source", "top1", "top1_split", "macs_m", "params_m"]
    lead += [f"{e}_ms" for e in ZOO_ENGINES]
    return table[lead + [c for c in table.columns if c not in lead]]


def _plan_macs(record: pd.Series) -> float:
    """Effective MACs of a searched plan: each layer's dense MACs divided by its rate.

    Filter-type changes (kernel-size swaps) are not counted; NaN if the model cannot be built.
    """
    try:
        from npas_lab.models import create_model, layer_table
        from npas_lab.sparsity import PruningPlan

        shape = [int(s) for s in str(record["input_shape"]).split("x")]
        model = create_model(
            str(record["model"]), num_classes=10, in_channels=shape[1], input_size=shape[2]
        )
        layers = layer_table(model, tuple(shape)).set_index("name")["macs"]
        plan = PruningPlan.from_json(record["plan"])
        rates = {name: choice.rate for name, choice in plan.items()}
        return float(sum(m / rates.get(name, 1.0) for name, m in layers.items()))
    except Exception:  # a figure, not a check: unknown models leave the cell empty
        return float("nan")
