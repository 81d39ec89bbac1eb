"""Plotly figures in one house style, drawn from results-store tables.

Every figure uses the same template, fonts and a fixed colour per engine, scheme and method
(``COLORS``) so a reader can follow "TVM" or "block_punched" from notebook to notebook.
:func:`save_figure` writes interactive HTML always and a PNG when kaleido finds a Chromium
(Debian's ``chromium`` package); the PNG step is skipped with a one-line note otherwise.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from npas_lab import paths

__all__ = [
    "COLORS",
    "add_curve_point",
    "algorithm_curves_figure",
    "block_size_figure",
    "curve_updater",
    "engine_latency_figure",
    "mask_gallery_figure",
    "operator_deltas_figure",
    "save_figure",
    "scheme_speedup_figure",
    "style",
    "training_curve_figure",
]

#: Fixed colour per engine, scheme and pruning method, shared by every figure.
COLORS: dict[str, str] = {
    # inference engines
    "tvm": "#1f77b4",
    "tvm-rpc": "#6baed6",
    "pytorch": "#ee4c2c",
    "onnxruntime": "#7f7f7f",
    "mnn": "#2ca02c",
    # sparsity schemes
    "dense": "#4d4d4d",
    "unstructured": "#9467bd",
    "filter": "#8c564b",
    "channel": "#bcbd22",
    "column": "#17becf",
    "pattern": "#e377c2",
    "block": "#ff7f0e",
    "block_punched": "#d62728",
    # pruning algorithms
    "oneshot": "#aec7e8",
    "gradual": "#ffbb78",
    "admm": "#98df8a",
    "group_lasso": "#c5b0d5",
}

_FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)


def color(name: str) -> str:
    """Return the house colour for an engine, scheme or method (grey for unknown names)."""
    return COLORS.get(name, "#999999")


def style(
    fig: go.Figure, *, title: str | None = None, x: str | None = None, y: str | None = None
) -> go.Figure:
    """Apply the house style (template, font, grid, labels) to ``fig`` and return it."""
    fig.update_layout(
        template="plotly_white",
        font=_FONT,
        title=title,
        margin=dict(l=60, r=20, t=60 if title else 20, b=50),
        legend=dict(orientation="h", y=-0.2),
    )
    if x:
        fig.update_xaxes(title_text=x)
    if y:
        fig.update_yaxes(title_text=y)
    fig.update_xaxes(showgrid=True, gridcolor="#eeeeee")
    fig.update_yaxes(showgrid=True, gridcolor="#eeeeee")
    return fig


def engine_latency_figure(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Bar chart of median latency per engine, with the spread as error bars.

    Parameters
    ----------
    df
        Rows of measurements with columns ``engine``, ``latency_ms`` and ``spread_ms`` and
        optionally ``model`` (one bar group per model).
    """
    missing = {"engine", "latency_ms"} - set(df.columns)
    if missing:
        raise ValueError(f"engine_latency_figure needs columns {sorted(missing)} in df")
    fig = go.Figure()
    models = df["model"] if "model" in df else pd.Series(["model"] * len(df), index=df.index)
    for engine, rows in df.groupby("engine", sort=False):
        spread = rows["spread_ms"] if "spread_ms" in rows else None
        fig.add_bar(
            name=str(engine),
            x=models.loc[rows.index],
            y=rows["latency_ms"],
            error_y=dict(type="data", array=spread, visible=spread is not None),
            marker_color=color(str(engine)),
            hovertemplate="%{x}<br>%{y:.3f} ms<extra>" + str(engine) + "</extra>",
        )
    fig.update_layout(barmode="group")
    return style(
        fig, title=title or "Latency per engine (median, spread as error bar)", y="latency (ms)"
    )


def training_curve_figure(
    history: list[dict[str, float]] | pd.DataFrame, *, title: str | None = None
) -> go.Figure:
    """Line chart of train/validation accuracy per epoch from a ``fit`` history."""
    df = pd.DataFrame(history)
    fig = go.Figure()
    for column, dash in (("train_accuracy", "dot"), ("val_accuracy", "solid")):
        if column in df:
            fig.add_scatter(
                x=df["epoch"],
                y=df[column],
                name=column.replace("_", " "),
                mode="lines+markers",
                line=dict(dash=dash, color=color("dense")),
            )
    return style(fig, title=title or "Training curve", x="epoch", y="accuracy")


def _png_available() -> bool:
    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome"))


def save_figure(
    fig: go.Figure, name: str, *, folder: Path | None = None, png: bool = True
) -> dict[str, Path]:
    """Save ``fig`` as HTML (always) and PNG (when a Chromium is installed for kaleido).

    Parameters
    ----------
    fig
        The figure.
    name
        File stem, e.g. ``"quickstart_latency"``.
    folder
        Where to write; by default ``$NPAS_LAB_FIGURES_DIR`` (set by the main job to its report
        folder) or ``results/figures``.
    png
        Also try a static PNG.

    Returns
    -------
    dict
        ``{"html": path, "png": path}`` for what was written.
    """
    if folder is None:
        env = os.environ.get("NPAS_LAB_FIGURES_DIR")
        folder = Path(env) if env else paths.results_dir() / "figures"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"html": folder / f"{name}.html"}
    # "directory": one plotly.min.js beside the pages, so they open offline.
    fig.write_html(written["html"], include_plotlyjs="directory")
    if png:
        if not _png_available():
            warnings.warn(
                f"{name}.png not written: kaleido needs Chromium (apt-get install "
                "chromium); the HTML version was saved",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            try:
                fig.write_image(folder / f"{name}.png", width=900, height=520, scale=2)
                written["png"] = folder / f"{name}.png"
            except Exception as err:  # kaleido raises several types when the browser fails
                warnings.warn(
                    f"{name}.png not written ({type(err).__name__}: {err}); the HTML "
                    "version was saved",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return written


def mask_gallery_figure(
    weight: object,
    masks: dict[str, object],
    *,
    title: str | None = None,
    filters: int = 16,
    channels: int = 8,
    cols: int = 2,
) -> go.Figure:
    """Draw one layer's keep-mask under several schemes side by side, in GEMM form.

    Each subplot is a mask cropped to the first ``filters`` rows (filters) and the first
    ``channels * kh * kw`` columns (kernel positions, channel-major), so blocks, punches,
    patterns and pruned filters are visible as in figures 1 and 3 of the NPAS paper. Kept
    weights are drawn in the scheme's colour (:data:`COLORS`), shaded by magnitude; pruned ones
    are white.

    Parameters
    ----------
    weight
        The layer weight (a tensor or array: ``F x C x kh x kw`` or ``F x C``).
    masks
        ``{scheme: boolean mask of weight's shape}``, one subplot each, in this order.
    title
        Figure title.
    filters, channels
        How much of the layer to show.
    cols
        Subplots per row.
    """
    import numpy as np
    from plotly.subplots import make_subplots

    def as_array(x: object) -> np.ndarray:
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else x
        return np.asarray(x, dtype=float)

    w = as_array(weight)
    kernel = int(np.prod(w.shape[2:])) if w.ndim == 4 else 1
    rows_shown, cols_shown = min(filters, w.shape[0]), min(channels, w.shape[1]) * kernel
    magnitude = np.abs(w.reshape(w.shape[0], -1))[:rows_shown, :cols_shown]
    # Kept weights span 0.35..1 of the colour so that even the smallest kept one is visible.
    shade = 0.35 + 0.65 * magnitude / max(float(magnitude.max()), 1e-12)
    names = list(masks)
    n_rows = -(-len(names) // cols)
    fig = make_subplots(
        rows=n_rows,
        cols=cols,
        subplot_titles=names,
        horizontal_spacing=0.04,
        vertical_spacing=0.3 / max(n_rows, 1),
    )
    for i, name in enumerate(names):
        keep = as_array(masks[name]).reshape(w.shape[0], -1)[:rows_shown, :cols_shown] > 0
        fig.add_heatmap(
            z=np.where(keep, shade, 0.0),
            zmin=0.0,
            zmax=1.0,
            colorscale=[[0.0, "#ffffff"], [1.0, color(name)]],
            showscale=False,
            xgap=1,
            ygap=1,
            name=name,
            hovertemplate="filter %{y}<br>column %{x}<extra>" + name + "</extra>",
            row=i // cols + 1,
            col=i % cols + 1,
        )
    style(fig, title=title or "Keep-masks in GEMM form (filters x kernel positions)")
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig.update_layout(height=max(260, 190 * n_rows), showlegend=False)
    return fig


def operator_deltas_figure(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Bar charts of what operator replacement changes: accuracy (left) and TVM latency (right).

    One bar group per replaced variant (each rule, all rules), as the change against the original:
    accuracy in percentage points right after replacement (solid) and after the short fine-tune
    (hatched; the original is fine-tuned too), latency in ms with the variant's interquartile
    range as error bar. Hover shows the absolute figures.

    Parameters
    ----------
    df
        Rows of :func:`npas_lab.operators.measure_replacement` (or of the ``operators`` table of
        the results store for one ``run_id``): columns ``variant``, ``accuracy``,
        ``accuracy_delta``, ``accuracy_finetuned``, ``accuracy_finetuned_delta``,
        ``latency_ms``, ``latency_delta_ms``, ``spread_ms`` and ``speedup``, the original first
        or marked by ``variant_kind == "original"``.
    title
        Figure title; default names the model and the original's figures.
    """
    from plotly.subplots import make_subplots

    needed = {"variant", "accuracy", "accuracy_delta", "accuracy_finetuned"}
    needed |= {"accuracy_finetuned_delta", "latency_ms", "latency_delta_ms", "spread_ms", "speedup"}
    missing = needed - set(df.columns)
    if missing:
        raise ValueError(f"operator_deltas_figure needs columns {sorted(missing)} in df")
    if "variant_kind" in df:
        is_original = df["variant_kind"] == "original"
    else:
        is_original = pd.Series(df.index == df.index[0], index=df.index)
    original, rows = df[is_original], df[~is_original]
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("accuracy change (percentage points)", "TVM latency change (ms)"),
        horizontal_spacing=0.12,
    )
    for column, absolute, name, pattern in (
        ("accuracy_delta", "accuracy", "accuracy, no fine-tune", ""),
        ("accuracy_finetuned_delta", "accuracy_finetuned", "accuracy after fine-tune", "/"),
    ):
        fig.add_bar(
            x=rows["variant"],
            y=rows[column] * 100,
            customdata=rows[absolute] * 100,
            name=name,
            marker=dict(color=color("dense"), pattern_shape=pattern),
            hovertemplate="%{x}: %{y:+.2f} pp (%{customdata:.2f}%)<extra>" + name + "</extra>",
            row=1,
            col=1,
        )
    fig.add_bar(
        x=rows["variant"],
        y=rows["latency_delta_ms"],
        error_y=dict(type="data", array=rows["spread_ms"], visible=True),
        customdata=rows[["latency_ms", "speedup"]].to_numpy(),
        name="TVM latency",
        marker_color=color("tvm"),
        hovertemplate="%{x}: %{y:+.3f} ms (%{customdata[0]:.3f} ms, %{customdata[1]:.2f}x)"
        "<extra>TVM latency</extra>",
        row=1,
        col=2,
    )
    fig.add_hline(y=0, line_color="#999999", line_width=1)
    if title is None:
        model = str(df["model"].iloc[0]) if "model" in df else "model"
        title = f"Operator replacement on {model}: change against the original"
        if len(original):
            first = original.iloc[0]
            title += f" ({first['accuracy']:.1%}, {first['latency_ms']:.2f} ms)"
    fig.update_layout(barmode="group")
    style(fig, title=title)
    fig.update_yaxes(title_text="percentage points", row=1, col=1)
    fig.update_yaxes(title_text="ms", row=1, col=2)
    return fig


def algorithm_curves_figure(
    histories: dict[str, list[dict]] | None = None,
    *,
    dense_accuracy: float | None = None,
    title: str | None = None,
    widget: bool = False,
) -> go.Figure:
    """Validation accuracy per epoch, one line per pruning algorithm (and its final run).

    Parameters
    ----------
    histories
        ``{label: [history rows with epoch and val_accuracy]}``; labels are algorithm names,
        optionally suffixed (``"admm (final)"``): the colour follows the algorithm.
    dense_accuracy
        Drawn as a dashed reference line.
    widget
        Return a ``plotly.graph_objects.FigureWidget`` (live updates in a notebook: append to
        a trace with :func:`add_curve_point`).
    """
    fig = go.FigureWidget() if widget else go.Figure()
    for label, rows in (histories or {}).items():
        df = pd.DataFrame(rows)
        _curve(fig, label, list(df.get("epoch", [])), list(df.get("val_accuracy", [])))
    if dense_accuracy is not None:
        fig.add_hline(
            y=dense_accuracy,
            line=dict(dash="dash", color=color("dense")),
            annotation_text=f"dense {dense_accuracy:.3f}",
        )
    return style(
        fig, title=title or "Pruning algorithms: validation accuracy", x="epoch", y="accuracy"
    )


def _curve(fig: go.Figure, label: str, x: list, y: list) -> None:
    algorithm = label.split(" ")[0]
    final = "final" in label
    fig.add_scatter(
        x=x,
        y=y,
        name=label,
        mode="lines+markers",
        line=dict(color=color(algorithm), width=3 if final else 2, dash=None if final else "dot"),
    )


def add_curve_point(fig: go.Figure, label: str, epoch: float, accuracy: float) -> None:
    """Append one point to the curve ``label`` of an :func:`algorithm_curves_figure`."""
    for trace in fig.data:
        if trace.name == label:
            trace.x = (*(trace.x or ()), epoch)
            trace.y = (*(trace.y or ()), accuracy)
            return
    _curve(fig, label, [epoch], [accuracy])


def curve_updater(fig: go.Figure) -> Callable[[dict], None]:
    """Return an ``on_epoch`` callback that adds each pruning epoch to ``fig``'s curves.

    For :func:`npas_lab.pruning.select_algorithm` / :func:`~npas_lab.pruning.prune` rows:
    the curve is the row's ``algorithm``, suffixed ``(final)`` for the final run.
    """

    def on_epoch(row: dict) -> None:
        label = row["algorithm"] + (" (final)" if row.get("stage") == "final" else "")
        add_curve_point(fig, label, row["epoch"], row["val_accuracy"])

    return on_epoch


def block_size_figure(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """NPAS Fig. 4: accuracy against measured latency, one point per block size.

    Parameters
    ----------
    df
        One row per block size: ``block`` (label), ``accuracy``, ``latency_ms`` and optionally
        ``spread_ms``; a row with ``block == "dense"`` is drawn as the reference.
    """
    missing = {"block", "accuracy", "latency_ms"} - set(df.columns)
    if missing:
        raise ValueError(f"block_size_figure needs columns {sorted(missing)} in df")
    fig = go.Figure()
    # Block sizes are categories, not a sequence: points only (no connecting line), in latency
    # order with labels alternating above and below so that neighbours' labels do not collide.
    pruned = df[df["block"] != "dense"].sort_values("latency_ms")
    spread = pruned["spread_ms"] / 2 if "spread_ms" in pruned else None  # IQR, half each side
    fig.add_scatter(
        x=pruned["latency_ms"],
        y=pruned["accuracy"],
        mode="markers+text",
        text=pruned["block"],
        textposition=(["top center", "bottom center"] * len(pruned))[: len(pruned)],
        name="block_punched",
        marker=dict(size=10, color=color("block_punched")),
        error_x=dict(type="data", array=spread, visible=spread is not None),
        hovertemplate="block %{text}<br>%{x:.3f} ms<br>accuracy %{y:.4f}<extra></extra>",
    )
    dense = df[df["block"] == "dense"]
    if len(dense):
        fig.add_scatter(
            x=dense["latency_ms"],
            y=dense["accuracy"],
            mode="markers+text",
            text=["dense"] * len(dense),
            textposition="bottom center",
            name="dense",
            marker=dict(size=12, symbol="diamond", color=color("dense")),
        )
    return style(
        fig,
        title=title or "Block size: accuracy vs latency (NPAS Fig. 4)",
        x="latency (ms, compiled with TVM)",
        y="test accuracy",
    )


def scheme_speedup_figure(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """NPAS Fig. 2b: speedup over the dense kernel against pruning rate, one line per scheme.

    Parameters
    ----------
    df
        Rows with ``label`` (scheme, e.g. ``"bp 8x4"``), ``scheme``, ``rate`` and ``speedup``;
        optionally ``shape`` (one subplot column per shape).
    """
    missing = {"label", "scheme", "rate", "speedup"} - set(df.columns)
    if missing:
        raise ValueError(f"scheme_speedup_figure needs columns {sorted(missing)} in df")
    from plotly.subplots import make_subplots

    shapes = list(dict.fromkeys(df["shape"])) if "shape" in df else [""]
    fig = make_subplots(rows=1, cols=len(shapes), subplot_titles=shapes, shared_yaxes=True)
    dashes = ("solid", "dash", "dot", "dashdot")
    for col, shape in enumerate(shapes, start=1):
        part = df[df["shape"] == shape] if "shape" in df else df
        for n, (label, rows) in enumerate(part.groupby("label", sort=False)):
            rows = rows.sort_values("rate")
            scheme = str(rows["scheme"].iloc[0])
            fig.add_scatter(
                x=rows["rate"],
                y=rows["speedup"],
                name=str(label),
                legendgroup=str(label),
                showlegend=col == 1,
                mode="lines+markers",
                line=dict(color=color(scheme), dash=dashes[n % len(dashes)]),
                row=1,
                col=col,
            )
        fig.add_scatter(
            x=sorted(part["rate"].unique()),
            y=sorted(part["rate"].unique()),
            name="ideal (= rate)",
            legendgroup="ideal",
            showlegend=col == 1,
            mode="lines",
            line=dict(color="#cccccc", dash="dash"),
            row=1,
            col=col,
        )
    fig.update_xaxes(title_text="pruning rate (x)")
    fig.update_yaxes(title_text="speedup over dense", col=1)
    return style(fig, title=title or "Speedup vs pruning rate per scheme (NPAS Fig. 2b)")


# ------------------------------------------------------------------------ phase 2: search
#: Fixed colour per search algorithm (appended to the house palette).
COLORS.update(
    {"npas": "#d62728", "random": "#7f7f7f", "rl": "#1f77b4", "bo": "#2ca02c", "zoo": "#4d4d4d"}
)


def search_efficiency_figure(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Best reward vs number of evaluations per algorithm: mean over seeds, min-max band.

    Parameters
    ----------
    df
        Long table with columns ``algorithm``, ``seed``, ``evaluations``, ``best_reward``.
    """
    missing = {"algorithm", "seed", "evaluations", "best_reward"} - set(df.columns)
    if missing:
        raise ValueError(f"search_efficiency_figure needs columns {sorted(missing)} in df")
    fig = go.Figure()
    for algorithm, rows in df.groupby("algorithm", sort=False):
        stats = rows.groupby("evaluations")["best_reward"].agg(["mean", "min", "max"])
        hue = color(str(algorithm))
        fig.add_scatter(
            x=[*stats.index, *stats.index[::-1]],
            y=[*stats["max"], *stats["min"][::-1]],
            fill="toself",
            fillcolor=hue,
            opacity=0.15,
            line=dict(width=0),
            hoverinfo="skip",
            showlegend=False,
        )
        fig.add_scatter(
            x=stats.index,
            y=stats["mean"],
            name=str(algorithm),
            mode="lines",
            line=dict(color=hue, width=2.5),
        )
    return style(
        fig,
        title=title or "Best reward vs evaluations (mean over seeds, band: min-max)",
        x="evaluations",
        y="best reward so far",
    )


def search_pareto_figure(
    target_ms: float | None = None, *, title: str | None = None, widget: bool = False
) -> go.Figure:
    """Return an empty accuracy-vs-latency figure for a search, ready for live updates.

    Traces, in order (update them with :func:`update_search_pareto`): ``candidates`` (every
    evaluation, coloured by reward), ``pareto`` (the front), ``best`` (best reward),
    ``zoo`` (dense reference models), and a vertical line at the latency target.

    Parameters
    ----------
    target_ms
        The latency constraint T, drawn as a dashed vertical line.
    widget
        Return a ``plotly.graph_objects.FigureWidget`` (redrawn live in a notebook).
    """
    fig = go.FigureWidget() if widget else go.Figure()
    fig.add_scatter(
        name="candidates",
        x=[],
        y=[],
        mode="markers",
        marker=dict(
            size=9,
            color=[],
            colorscale="Viridis",
            showscale=True,
            colorbar=dict(title="reward"),
            line=dict(width=0.5, color="white"),
        ),
        text=[],
        hovertemplate="%{text}<br>%{x:.4f} ms, acc %{y:.3f}<extra></extra>",
    )
    fig.add_scatter(
        name="Pareto front",
        x=[],
        y=[],
        mode="lines",
        line=dict(color=color("npas"), shape="hv", width=2),
    )
    fig.add_scatter(
        name="best reward",
        x=[],
        y=[],
        mode="markers",
        marker=dict(symbol="star", size=16, color=color("npas")),
    )
    fig.add_scatter(
        name="dense zoo",
        x=[],
        y=[],
        mode="markers+text",
        text=[],
        textposition="top center",
        marker=dict(symbol="diamond", size=11, color=color("zoo")),
    )
    if target_ms is not None:
        fig.add_vline(
            x=target_ms,
            line_dash="dash",
            line_color="#444444",
            annotation_text=f"T = {target_ms:.3g} ms",
        )
    return style(
        fig,
        title=title or "Search: accuracy vs measured latency",
        x="latency (ms, measured)",
        y="validation accuracy",
    )


def update_search_pareto(
    fig: go.Figure, history: pd.DataFrame, zoo: pd.DataFrame | None = None
) -> go.Figure:
    """Redraw the traces of :func:`search_pareto_figure` from a search history.

    Parameters
    ----------
    fig
        From :func:`search_pareto_figure`.
    history
        Rows with ``latency_ms``, ``accuracy``, ``reward``, ``step`` (e.g.
        :func:`npas_lab.search.load_history`); failed rows (no latency) are skipped.
    zoo
        Rows with ``model``, ``latency_ms``, ``accuracy`` (dense reference models).
    """
    # Deferred: search/ imports plotting's house style through its users, not the reverse.
    from npas_lab.search.history import pareto_front

    ok = history.dropna(subset=["latency_ms", "accuracy"]) if len(history) else history
    front = pareto_front(ok) if len(ok) else ok
    best = ok.loc[[ok["reward"].idxmax()]] if len(ok) else ok
    batch = fig.batch_update() if isinstance(fig, go.FigureWidget) else _nullcontext()
    with batch:
        candidates, pareto, star, dense = fig.data[:4]
        candidates.x, candidates.y = list(ok.get("latency_ms", [])), list(ok.get("accuracy", []))
        candidates.marker.color = list(ok.get("reward", []))
        candidates.text = [
            f"step {s}, reward {r:.4f}"
            for s, r in zip(ok.get("step", []), ok.get("reward", []), strict=False)
        ]
        pareto.x, pareto.y = list(front.get("latency_ms", [])), list(front.get("accuracy", []))
        star.x, star.y = list(best.get("latency_ms", [])), list(best.get("accuracy", []))
        if zoo is not None and len(zoo):
            dense.x, dense.y = list(zoo["latency_ms"]), list(zoo["accuracy"])
            dense.text = list(zoo["model"])
    return fig


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def plan_layers_figure(plan_table: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Bar chart of a plan per layer: the pruning rate, coloured by scheme, filter type as text.

    Parameters
    ----------
    plan_table
        Rows with ``layer``, ``scheme``, ``rate`` and ``filter_type`` (e.g.
        :func:`npas_lab.search.plan_table`).
    """
    fig = go.Figure()
    for scheme, rows in plan_table.groupby("scheme", sort=False):
        fig.add_bar(
            name=str(scheme),
            x=rows["layer"],
            y=rows["rate"],
            marker_color=color(str(scheme)),
            text=[
                f"{f}" + (f" {b[0]}x{b[1]}" if isinstance(b, tuple | list) else "")
                for f, b in zip(
                    rows["filter_type"], rows.get("block", [None] * len(rows)), strict=True
                )
            ],
            textposition="outside",
            hovertemplate="%{x}: %{y:g}x<extra>" + str(scheme) + "</extra>",
        )
    fig.update_xaxes(categoryorder="array", categoryarray=list(plan_table["layer"]))
    return style(
        fig,
        title=title or "Best plan per layer (rate; filter type and block above)",
        x="layer",
        y="pruning rate (x)",
    )


__all__ += [
    "plan_layers_figure",
    "search_efficiency_figure",
    "search_pareto_figure",
    "update_search_pareto",
]
